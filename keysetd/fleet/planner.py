"""What one fleet replica publishes: the single-replica plan, restricted by the fleet's acks.

Pure: time comes in as ``now``, the shared documents as values; nothing here reads etcd.

How it relates to ``keysetd.plan.plan``: the replica first takes the shared history as its
own (``observe`` of its source and ``apply_revocations`` of the shared revocations, in memory
only), and runs the single-replica ``plan`` on it. That plan already gives the verifier set
(source keys, kids signers hold, retention from the shared ``left_source_at`` and
``active_until``, so it is the same on every replica) and the kid single-replica rules would
hand to signers (a new kid only ``activation_delay`` after the shared ``first_published``).
The fleet then adds three rules on top:

- **signers use only what every live replica verifies**: this replica signs with a kid only
  if every live acknowledgement lists it, its own included; a replica with no ack yet (it just
  started, or came back after its lease expired) may keep only the kid it already signed with.
  Failing the preferred kid it falls back to the kid it signed with, then to the kids the fleet
  holds; failing all, it withholds signing: no key is better than one a verifier lacks. It
  signs only with a private key it holds, never a public half history kept (unless its source
  is public-only: there is nothing to sign with, and it is planned as ``plan`` plans it);
- **a kid new to signing waits for every replica's consumers**: when some kid is in use, a kid
  no live replica signs (and this one did not) is used only ``activation_delay`` after the
  latest time a live replica began publishing it (the acks carry those times), on top of
  ``plan``'s delay from the shared ``first_published``. A brand-new fleet's first kid waits
  for no delay, as in ``plan``;
- **nobody stops publishing what a live replica signs with**: every kid a live ack names as
  its signing kid, and this replica's own previous signing kid, stay in the verifier set.

The shared history moves by two transitions here, the fleet's counterparts of
``keysetd.history.mark_*``: ``open_signing`` (write-ahead, by the replica about to sign a kid
the history does not hold open) and ``follow_acks`` (by the leader, each refresh: first
publication and retirement from the acks, a kid closed only once no live replica signs it, so
retention counts from the last signer's move).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keysetd.fleet.state import Ack, Revocation
from keysetd.history import Records, apply_revocations, observe
from keysetd.model import Key, Keyset
from keysetd.plan import (
    Decision,
    Plan,
    Policy,
    current_signer_kid,
    held_kids,
    plan,
    public_key_from_record,
)
from keysetd.state import KeyRecord

__all__ = [
    "FleetPlan",
    "ack_before_commit",
    "ack_changed",
    "acknowledge",
    "follow_acks",
    "open_signing",
    "plan_replica",
]

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """This replica's plan and what the fleet must know before its signer commit."""

    plan: Plan
    #: The history as this replica planned from it (its source observed, revocations applied).
    view: Records = field(repr=False)
    #: The signing kid the shared history does not hold open: ``open_signing`` it (a fenced
    #: compare-and-swap) before the signer commit, or do not commit the signer outputs.
    opens: str | None = None
    #: Live replicas whose ack lacks the kid the single-replica plan wants signers to use.
    waiting_for: tuple[str, ...] = ()
    #: True while this replica has no ack of its own: it keeps its previous kid at most.
    catching_up: bool = False

    @property
    def signing_kid(self) -> str | None:
        return self.plan.active_kid


def _revoked(records: Records) -> frozenset[str]:
    return frozenset(kid for kid, r in records.items() if r.revoked is not None)


@dataclass(frozen=True, slots=True)
class _Gate:
    """Why a kid may not be used now (``reason``), and when that may end by itself."""

    reason: str
    waiting_for: tuple[str, ...] = ()
    until: float | None = None


@dataclass(frozen=True, slots=True)
class _Fleet:
    """What this replica knows of the fleet while it plans."""

    acks: Mapping[str, Ack]
    replica_id: str
    records: Records
    source: Keyset
    previous: Keyset | None
    previous_kid: str | None
    #: Kids some live replica signs with (their acks say so).
    signed: frozenset[str]
    #: Kids in use fleet-wide: signed, held open in history, or this replica's previous kid
    #: (none: a new fleet, or every kid revoked; the first kid then waits for no delay).
    in_use: frozenset[str]
    policy: Policy
    now: float
    #: The source (or the last signer keyset) holds private keys: signers get only those. A
    #: public-only source has nothing to sign with; it is planned as ``plan`` plans it.
    signs: bool

    def key(self, kid: str) -> Key | None:
        """A kid's key: from the source, else the last signer keyset, else history's public."""
        key = self.source.get(kid)
        if key is None and self.previous is not None:
            key = self.previous.get(kid)
        if key is None and kid in self.records:
            key = public_key_from_record(self.records[kid])
        return key

    def gate(self, kid: str) -> _Gate | None:
        """None when this replica may sign with ``kid`` now, else why not."""
        if self.replica_id not in self.acks:
            if kid != self.previous_kid:
                return _Gate("this replica has not acknowledged it yet (catching up)")
            # Away past its lease: the fleet may have closed its kid meanwhile, and then any
            # replica may drop it at the end of retention, concurrently with this plan. Keep
            # it only while the shared history holds it open (someone live signs it).
            record = self.records.get(kid)
            if record is not None and record.active_until is not None:
                return _Gate("the fleet closed it while this replica was away (catching up)")
        missing = tuple(sorted(rid for rid, ack in self.acks.items() if not ack.holds(kid)))
        if missing:
            return _Gate(f"not acknowledged yet by {', '.join(missing)}", missing)
        # A kid new to signing waits; one a live replica signs (or this one did) does not. A
        # kid history holds open but nobody signs may have been unpublished (revoked, then
        # lifted): it waits too.
        if self.in_use and kid not in self.signed and kid != self.previous_kid:
            since = max((ack.kids[kid] for ack in self.acks.values()), default=self.now)
            eligible = since + self.policy.activation_delay
            if self.now < eligible:
                reason = f"activation delay: every live replica publishes it since {since:.0f}"
                return _Gate(reason, (), eligible)
        return None


def _fleet(
    keyset: Keyset,
    history: Mapping[str, KeyRecord],
    acks: Mapping[str, Ack],
    *,
    replica_id: str,
    policy: Policy,
    now: float,
    previous_signer: Keyset | None,
    revocations: Mapping[str, Revocation] | None,
) -> _Fleet:
    records: Records = observe(dict(history), keyset, now)
    if revocations:
        revoked_at = {kid: r.at for kid, r in revocations.items()}
        records = apply_revocations(records, revoked_at, now)[0]
    revoked = _revoked(records)
    previous_kid = previous_signer.active_kid if previous_signer is not None else None
    if previous_kid in revoked:
        previous_kid = None
    signed = frozenset(a.signing for a in acks.values() if a.signing is not None) - revoked
    in_use = signed | (frozenset(held_kids(records)) - revoked)
    if previous_kid is not None:
        in_use |= {previous_kid}
    private = (*keyset, *(previous_signer or ()))
    return _Fleet(
        acks=acks,
        replica_id=replica_id,
        records=records,
        source=Keyset(tuple(k for k in keyset if k.kid not in revoked), keyset.active_kid),
        previous=previous_signer,
        previous_kid=previous_kid,
        signed=signed,
        in_use=in_use,
        policy=policy,
        now=now,
        signs=any(key.has_private for key in private),
    )


def _choose(fleet: _Fleet, wanted: str | None) -> tuple[Key | None, dict[str, _Gate]]:
    """The first usable of: what the single-replica plan wants, this replica's previous kid,
    the kids history holds open (newest first), the kids other replicas sign with.

    Usable: not revoked, not gated, and with its private half here (an HMAC key's secret is
    its private half). A kid this replica knows only from history's public JWK (a late joiner
    whose source lacks it) is one it cannot sign with, whatever the fleet does.
    """
    records = fleet.records
    held = sorted(held_kids(records), key=lambda k: -(records[k].active_from or 0.0))
    revoked = _revoked(records)
    gates: dict[str, _Gate] = {}
    seen: set[str] = set()
    for kid in (wanted, fleet.previous_kid, *held, *sorted(fleet.signed)):
        if kid is None or kid in revoked or kid in seen:
            continue
        seen.add(kid)
        key = fleet.key(kid)
        if key is None:
            continue
        if fleet.signs and not key.has_private:
            gates[kid] = _Gate("no private key for it here: its source lacks it")
            continue
        gate = fleet.gate(kid)
        if gate is None:
            return key, gates
        gates[kid] = gate
    return None, gates


def _decisions(
    single: Plan, fleet: _Fleet, chosen: str | None, gates: Mapping[str, _Gate]
) -> tuple[tuple[Decision, ...], float | None, tuple[str, ...]]:
    """The single plan's decisions, corrected by the fleet's; next change; who is awaited."""
    decisions = {d.kid: d for d in single.decisions}
    next_change = single.next_change_at
    wanted = single.active_kid
    waiting: tuple[str, ...] = ()
    if wanted is not None and wanted != chosen:
        gate = gates.get(wanted)
        reason = gate.reason if gate is not None else "signing withheld"
        until = gate.until if gate is not None else None
        waiting = gate.waiting_for if gate is not None else ()
        decisions[wanted] = Decision(wanted, "pending", reason, until)
        if until is not None:
            next_change = until if next_change is None else min(next_change, until)
    if chosen is not None:
        reason = "signers use it: every live replica publishes it"
        decisions[chosen] = Decision(chosen, "active", reason)
    for kid in sorted(fleet.signed - {chosen}):
        if kid not in decisions or decisions[kid].state not in ("pending", "published"):
            decisions[kid] = Decision(kid, "retained", "another live replica signs with it")
    return tuple(sorted(decisions.values(), key=lambda d: d.kid)), next_change, waiting


def plan_replica(
    keyset: Keyset,
    history: Mapping[str, KeyRecord],
    acks: Mapping[str, Ack],
    *,
    replica_id: str,
    policy: Policy,
    now: float,
    previous_signer: Keyset | None = None,
    revocations: Mapping[str, Revocation] | None = None,
) -> FleetPlan:
    """What this replica's verifier and signer outputs publish at ``now``.

    ``history``: the shared key history; ``acks``: the LIVE acknowledgements by replica id
    (a replica whose lease expired has none); ``previous_signer``: the signer keyset this
    replica last committed (what its signer outputs hold now); ``revocations``: the shared
    revocations document (applied here, so a revocation needs no history write to take hold).
    """
    fleet = _fleet(
        keyset,
        history,
        acks,
        replica_id=replica_id,
        policy=policy,
        now=now,
        previous_signer=previous_signer,
        revocations=revocations,
    )
    single = plan(keyset, fleet.records, policy, now, previous_signer)
    chosen, gates = _choose(fleet, single.active_kid)
    chosen_kid = chosen.kid if chosen is not None else None
    signer_keys = list(fleet.source.keys)
    if chosen is not None and fleet.source.get(chosen.kid) is None:
        signer_keys.append(chosen)
    verifier_keys = list(single.verifier.keys)
    present = {k.kid for k in verifier_keys}
    # What this replica signs with, signed with until now, and what live replicas sign with.
    kept = {kid for kid in (chosen_kid, fleet.previous_kid) if kid is not None}
    for kid in sorted((kept | fleet.signed) - present - _revoked(fleet.records)):
        key = fleet.key(kid)
        if key is not None:
            verifier_keys.append(key if fleet.source.get(kid) else key.without_private())
    decisions, next_change, waiting = _decisions(single, fleet, chosen_kid, gates)
    verifier = Keyset(tuple(verifier_keys), chosen_kid)
    fleet_plan = Plan(
        verifier=verifier,
        signer=Keyset(tuple(signer_keys), chosen_kid),
        fingerprint=verifier.fingerprint(),
        decisions=decisions,
        next_change_at=next_change,
    )
    opens = None
    if chosen_kid is not None:
        shared = history.get(chosen_kid)
        if shared is None or shared.active_from is None or shared.active_until is not None:
            opens = chosen_kid
    return FleetPlan(
        plan=fleet_plan,
        view=fleet.records,
        opens=opens,
        waiting_for=waiting,
        catching_up=replica_id not in acks,
    )


# -- the acknowledgement ---------------------------------------------------------------------


def acknowledge(
    replica_id: str,
    verifier: Keyset,
    signing: str | None,
    now: float,
    previous: Ack | None = None,
) -> Ack:
    """The ack to write after the verifier notifiers succeeded (and the signer commit).

    Each kid keeps the time it was first held in ``previous`` (this replica's last ack while its
    outputs held it without a gap); a kid new to the outputs is held since ``now``.
    """
    before = previous.kids if previous is not None else {}
    kids = {kid: before.get(kid, now) for kid in sorted(verifier.kids)}
    return Ack(replica_id, now, verifier.fingerprint(), kids, signing)


def ack_before_commit(previous: Ack | None, verifier: Keyset) -> Ack | None:
    """The ack to write BEFORE a verifier commit that drops kids ``previous`` lists, else None.

    An ack never lists a kid the outputs may no longer hold: it shrinks before the commit and
    grows after it (``acknowledge``). A rotation adds and drops kids in different cycles, so
    this costs no write of its own in the usual case.
    """
    if previous is None or set(previous.kids) <= set(verifier.kids):
        return None
    kids = {kid: since for kid, since in previous.kids.items() if kid in verifier.kids}
    signing = previous.signing if previous.signing in kids else None
    # No fingerprint: the outputs are between two commits.
    return Ack(previous.replica_id, previous.at, "", kids, signing)


def ack_changed(previous: Ack | None, ack: Ack) -> bool:
    """Whether ``ack`` says anything ``previous`` did not: write at most once per change."""
    if previous is None:
        return True
    return (previous.fingerprint, dict(previous.kids), previous.signing) != (
        ack.fingerprint,
        dict(ack.kids),
        ack.signing,
    )


# -- shared history transitions --------------------------------------------------------------


def open_signing(history: Records, planned: FleetPlan, now: float) -> Records:
    """Write-ahead before the signer commit: the kid this replica will sign with is held open.

    The record comes from the replica's view when the shared history has none yet (its source
    is ahead of the leader's). Returns ``history`` itself when nothing needs opening.
    """
    kid = planned.opens
    if kid is None:
        return history
    record = history.get(kid) or planned.view.get(kid)
    if record is None:
        return history
    updated = dict(history)
    active_from = record.active_from if record.active_from is not None else now
    updated[kid] = replace(record, active_from=active_from, active_until=None)
    return updated


def follow_acks(
    history: Records,
    acks: Mapping[str, Ack],
    now: float,
    revocations: Mapping[str, Revocation] | None = None,
    *,
    keep_open: Collection[str] = (),
) -> tuple[Records, list[Event]]:
    """The leader's refresh: bring first publication, retirement and signing in line with
    the live acks.

    A kid is published fleet-wide from the earliest time a live replica began holding it, and
    retired once no live replica holds it (its delay then starts anew). A kid a live replica
    signs with is held open; a held kid nobody signs is closed (``active_until``: retention
    starts) unless it is the newest one, so a fleet that withheld signing still waits the
    activation delay for the next kid. ``revocations`` are applied first (``apply_revocations``):
    a revoked kid is closed at once.
    ``keep_open``: kids not to close yet though nobody live signs them (their last signer's
    lease ended: it may still be signing, cut off).
    """
    events: list[Event] = []
    if revocations is not None:
        revoked_at = {kid: r.at for kid, r in revocations.items()}
        history, events = apply_revocations(history, revoked_at, now)
    held_since: dict[str, float] = {}
    for ack in acks.values():
        for kid, since in ack.kids.items():
            held_since[kid] = min(since, held_since.get(kid, since))
    signing = {ack.signing for ack in acks.values() if ack.signing is not None}
    updated = dict(history)
    for kid, record in history.items():
        new = record
        if kid in held_since:
            if new.first_published is None or new.retired_at is not None:
                start = held_since[kid]
                if new.retired_at is not None:
                    start = max(start, new.retired_at)
                new = replace(new, first_published=start, retired_at=None)
                events.append({"event": "key_published", "kid": kid, "fleet": True})
        elif new.first_published is not None and new.retired_at is None:
            new = replace(new, retired_at=now)
            events.append({"event": "key_retired", "kid": kid, "fleet": True})
        if kid in signing and new.revoked is None:
            if new.active_from is None:
                new = replace(new, active_from=now, active_until=None)
                events.append({"event": "key_activated", "kid": kid, "fleet": True})
            elif new.active_until is not None:
                new = replace(new, active_until=None)
        updated[kid] = new
    newest = current_signer_kid(updated)
    for kid in held_kids(updated):
        record = updated[kid]
        if record.revoked is None and (kid in signing or kid == newest or kid in keep_open):
            continue
        updated[kid] = replace(record, active_until=now)
        events.append({"event": "key_deactivated", "kid": kid, "fleet": True})
    return updated, events
