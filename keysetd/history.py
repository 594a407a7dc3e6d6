"""Key history transitions: pure functions from (records, what happened, now) to new records.

Each returns the new records and the audit events the change amounts to, so the
pipeline writes history and the audit log from one source of truth. Records
change only on transitions, so an unchanged source never rewrites history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from keysetd.errors import InvalidKeyset
from keysetd.model import Keyset
from keysetd.plan import Plan, current_signer_kid, held_kids
from keysetd.state import KeyRecord

__all__ = [
    "FORGOTTEN",
    "Records",
    "apply_revocations",
    "confirm_material",
    "forget",
    "mark_activating",
    "mark_active",
    "mark_published",
    "note_reused",
    "observe",
    "reuse_allowed",
    "reused_kids",
]

Records = dict[str, KeyRecord]
#: ``reused_since`` of a forgotten kid: a wait that is over, whatever the retention.
FORGOTTEN = 0.0
Event = dict[str, Any]


def observe(records: Records, keyset: Keyset, now: float) -> Records:
    """A validated source keyset: new kids recorded, departures and returns stamped.

    A kid whose material changed passed validation only because its old material is
    past use (``reuse_allowed``, or ``keysetd forget``): it starts a new record.
    """
    updated = dict(records)
    for key in keyset:
        record = updated.get(key.kid)
        material = key.material_digest()
        if record is None or record.material != material:
            public = None if key.kty == "oct" else key.public_jwk()
            updated[key.kid] = KeyRecord(
                kid=key.kid, material=material, first_seen=now, public_jwk=public
            )
        elif record.left_source_at is not None:
            updated[key.kid] = replace(record, left_source_at=None)
    present = set(keyset.kids)
    for kid, record in records.items():
        if kid not in present and record.left_source_at is None:
            updated[kid] = replace(record, left_source_at=now)
    return updated


def mark_published(records: Records, planned: Plan, now: float) -> tuple[Records, list[Event]]:
    """After verifier outputs were committed: first publications and retirements.

    ``first_published`` is when the kid's current, unbroken publication began: a
    retired kid published again starts it anew, so its activation delay starts anew.
    """
    updated = dict(records)
    events: list[Event] = []
    published = set(planned.verifier.kids)
    for kid, record in records.items():
        if kid in published:
            if record.first_published is None:
                updated[kid] = replace(record, first_published=now, retired_at=None)
                events.append({"event": "key_published", "kid": kid})
            elif record.retired_at is not None:
                updated[kid] = replace(record, first_published=now, retired_at=None)
                events.append({"event": "key_published", "kid": kid, "again": True})
        elif record.first_published is not None and record.retired_at is None:
            updated[kid] = replace(record, retired_at=now)
            reason = "revoked" if record.revoked is not None else "retention over"
            events.append({"event": "key_retired", "kid": kid, "reason": reason})
    return updated, events


def mark_activating(records: Records, planned: Plan, now: float) -> tuple[Records, list[Event]]:
    """Before signer outputs are committed: write ahead that signers may now get the new kid.

    The kid it replaces stays live too until ``mark_active``, so a crash between the
    two leaves both published to verifiers, whichever one the signer files hold.
    Returns the audit events to record once the signer commit is done.
    """
    new = planned.active_kid
    live = held_kids(records)
    if new is None or new not in records or new in live:
        return records, []
    updated = dict(records)
    updated[new] = replace(records[new], active_from=now, active_until=None)
    previous = current_signer_kid(records)
    return updated, [{"event": "key_activated", "kid": new, "previous_kid": previous}]


def mark_active(records: Records, planned: Plan, now: float) -> tuple[Records, list[Event]]:
    """After signer outputs were committed: every other live kid is taken back now."""
    new = planned.active_kid
    closing = [kid for kid in held_kids(records) if kid != new]
    if not closing:
        return records, []
    updated = dict(records)
    for kid in closing:
        updated[kid] = replace(records[kid], active_until=now)
    if new is None:
        return updated, [{"event": "signing_withdrawn", "previous_kids": sorted(closing)}]
    return updated, []


def apply_revocations(
    records: Records, revoked: Mapping[str, float], now: float
) -> tuple[Records, list[Event]]:
    """Bring the revoked flag of each record in line with the revocation list."""
    updated = dict(records)
    events: list[Event] = []
    for kid, record in records.items():
        if kid in revoked and record.revoked is None:
            updated[kid] = replace(record, revoked=revoked[kid])
            events.append({"event": "revocation_applied", "kid": kid})
        elif kid not in revoked and record.revoked is not None:
            updated[kid] = replace(record, revoked=None)
            events.append({"event": "revocation_lifted", "kid": kid})
    return updated, events


def reuse_allowed(record: KeyRecord, retention: float, now: float) -> bool:
    """May the source's other material for this kid replace the old one now?

    Only once no token the old material signed can still be valid: signers no longer
    hold it, and ``retention`` has passed since the source last carried it (the first
    cycle that brought the other material) and since signers last used it.
    """
    if record.reused_since is None or record.revoked is not None:
        return False
    if record.active_from is not None and record.active_until is None:
        return False  # signers still sign with the old material
    if record.reused_since == FORGOTTEN:
        return True
    last = max(record.reused_since, record.active_until or 0.0)
    return now >= last + retention


def confirm_material(records: Records, keyset: Keyset) -> Records:
    """A snapshot just fetched carries these kids with the material on record: any wait
    for other material (``note_reused``, ``forget``) ends. Not for a re-plan of the
    last-known-good, which says nothing of what the source serves now."""
    waiting = [
        key.kid
        for key in keyset
        if (record := records.get(key.kid)) is not None
        and record.reused_since is not None
        and record.material == key.material_digest()
    ]
    if not waiting:
        return records
    updated = dict(records)
    for kid in waiting:
        updated[kid] = replace(records[kid], reused_since=None)
    return updated


def forget(records: Records, kid: str) -> tuple[Records, list[Event]]:
    """``keysetd forget``: the next other material the source brings for ``kid`` is taken
    at once (as if its wait were over); refused while signers hold the kid."""
    record = records.get(kid)
    if record is None:
        return records, []
    if record.active_from is not None and record.active_until is None:
        reason = "signers hold it: rotate to another kid first"
        return records, [{"event": "forget_refused", "kid": kid, "reason": reason}]
    updated = dict(records)
    updated[kid] = replace(record, reused_since=FORGOTTEN)
    return updated, [{"event": "kid_forgotten", "kid": kid}]


def reused_kids(refused: InvalidKeyset) -> list[str]:
    """The kids a refused snapshot brought with other material than on record."""
    return [p.kid for p in refused.problems if p.rule == "kid-reused"]


def note_reused(
    records: Records, kids: Iterable[str], retention: float, now: float
) -> tuple[Records, list[Event]]:
    """The source brought these known kids with other material: start their wait."""
    updated = dict(records)
    events: list[Event] = []
    for kid in kids:
        record = records.get(kid)
        if record is None or record.reused_since is not None:
            continue
        updated[kid] = replace(record, reused_since=now)
        held = record.active_from is not None and record.active_until is None
        after = None if held else max(now, record.active_until or 0.0) + retention
        events.append({"event": "kid_reuse_refused", "kid": kid, "accepted_after": after})
    return updated, events
