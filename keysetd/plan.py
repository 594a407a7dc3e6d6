"""What verifiers and signers get now: a pure function of (keyset, history, policy, now).

The rules that make rotation safe by construction:

- every key in the source, and the key signers use, is published to verifiers;
- a new ``active_kid`` reaches signers only once it has been published to
  verifiers for ``activation_delay``; until then signers keep the key they had
  (from the last signer keyset, even if the source already dropped it);
- a kid that left the source stays published, from history, for ``retention``
  after it was last seen or last active, whichever is later;
- a revoked kid is in no output at all.

The one exception is the very first key: with nothing published before, it is
active at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from keysetd.model import Key, Keyset
from keysetd.state import KeyRecord

__all__ = [
    "Decision",
    "Plan",
    "Policy",
    "current_signer_kid",
    "held_kids",
    "plan",
    "public_key_from_record",
]


@dataclass(frozen=True, slots=True)
class Policy:
    """The timings of rotation, in seconds."""

    activation_delay: float = 0.0
    retention: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Why a kid is where it is: shown by ``keysetd plan`` and recorded in status."""

    kid: str
    state: str  # active | pending | published | retained | revoked | expired
    reason: str
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The keyset verifier outputs publish and the one signer outputs publish."""

    verifier: Keyset
    signer: Keyset
    #: Of the verifier keyset with the signers' active kid: what is published, in one value.
    fingerprint: str
    decisions: tuple[Decision, ...] = field(default=())
    next_change_at: float | None = None

    @property
    def active_kid(self) -> str | None:
        return self.signer.active_kid

    @property
    def published_kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.verifier.ordered())

    def decision(self, kid: str) -> Decision | None:
        return next((d for d in self.decisions if d.kid == kid), None)


def public_key_from_record(record: KeyRecord) -> Key | None:
    """The public key history keeps for a kid (None for HMAC keys: history holds no secrets)."""
    jwk = record.public_jwk
    if not jwk:
        return None
    fixed = {"kty", "kid", "alg", "use"}
    members = tuple(sorted((k, v) for k, v in jwk.items() if k not in fixed))
    return Key(
        kid=record.kid,
        kty=jwk["kty"],
        alg=jwk["alg"],
        public=members,
        use=jwk.get("use", "sig"),
    )


def held_kids(history: Mapping[str, KeyRecord]) -> list[str]:
    """Kids signers may hold: given to them (active_from) and not yet taken back (active_until).

    One, or two while a hand-over was interrupted by a crash.
    """
    return [k for k, r in history.items() if r.active_from is not None and r.active_until is None]


def current_signer_kid(history: Mapping[str, KeyRecord]) -> str | None:
    """The kid signers were last given: the held one activated last."""
    live = [history[kid] for kid in held_kids(history)]
    return max(live, key=lambda r: r.active_from or 0.0).kid if live else None


def _signer_key(
    kid: str, keyset: Keyset, history: Mapping[str, KeyRecord], previous_signer: Keyset | None
) -> Key | None:
    """A key signers hold: from the source, else the last signer keyset, else history."""
    if history[kid].revoked is not None:
        return None
    key = keyset.get(kid)
    if key is None and previous_signer is not None:
        key = previous_signer.get(kid)
    return key if key is not None else public_key_from_record(history[kid])


def _choose_active(
    keyset: Keyset,
    current: Key | None,
    history: Mapping[str, KeyRecord],
    policy: Policy,
    now: float,
) -> tuple[Key | None, list[Decision], float | None]:
    """The key signers get now, why, and when that may change."""
    desired = keyset.active
    if desired is None:
        return current, [], None
    if current is None or current.kid == desired.kid:
        reason = "active in the source" if current else "first active key: nothing to wait for"
        return desired, [Decision(desired.kid, "active", reason)], None
    record = history.get(desired.kid)
    # Published since the start of its unbroken publication: a kid retired (retention
    # over, revoked) and published again waits the full delay again, as a new one does.
    published = now
    if record is not None and record.first_published is not None and record.retired_at is None:
        published = record.first_published
    eligible_at = published + policy.activation_delay
    if now >= eligible_at:
        reason = f"published to verifiers since {published:.0f}, activation delay over"
        return desired, [Decision(desired.kid, "active", reason)], None
    decisions = [
        Decision(
            desired.kid, "pending", "activation delay: published, not yet signing", eligible_at
        ),
        Decision(
            current.kid, "active", f"signers keep it until {desired.kid} is eligible", eligible_at
        ),
    ]
    return current, decisions, eligible_at


def plan(
    keyset: Keyset,
    history: Mapping[str, KeyRecord] | None = None,
    policy: Policy | None = None,
    now: float = 0.0,
    previous_signer: Keyset | None = None,
) -> Plan:
    """Decide what verifier and signer outputs publish for ``keyset`` at ``now``."""
    history = history or {}
    policy = policy or Policy()
    revoked = {kid for kid, r in history.items() if r.revoked is not None}
    source = Keyset(tuple(k for k in keyset if k.kid not in revoked), keyset.active_kid)
    if source.active_kid in revoked:
        source = Keyset(source.keys, None)
    current_kid = current_signer_kid(history)
    current = _signer_key(current_kid, source, history, previous_signer) if current_kid else None
    active, decisions, next_change = _choose_active(source, current, history, policy, now)
    signer_keys = list(source.keys)
    if active is not None and source.get(active.kid) is None:
        signer_keys.append(active)
    verifier_keys = list(signer_keys)
    for kid in sorted(held_kids(history)):
        held = _signer_key(kid, source, history, previous_signer)
        if held is None or (active is not None and kid == active.kid):
            continue
        # Signers hold it until this cycle's signer commit: it stays published through
        # that commit, then for the retention (from active_until) as usual. Also when no
        # kid is active now (the new one was revoked): tokens it signed are still out.
        if source.get(kid) is None:
            verifier_keys.append(held.without_private())
        until = now + policy.retention
        decisions.append(Decision(kid, "retained", "signers are moving off it", until))
        next_change = until if next_change is None else min(next_change, until)
    present = {k.kid for k in verifier_keys}
    for kid, record in sorted(history.items()):
        if kid in present:
            continue
        if kid in revoked:
            decisions.append(Decision(kid, "revoked", "break-glass revocation", None))
            continue
        if record.left_source_at is None:
            continue
        last = record.left_source_at
        if record.active_until is not None:
            last = max(last, record.active_until)
        until = last + policy.retention
        public = public_key_from_record(record)
        if public is None or now >= until:
            continue
        verifier_keys.append(public)
        decisions.append(Decision(kid, "retained", "left the source; kept for retention", until))
        next_change = until if next_change is None else min(next_change, until)
    decided = {d.kid for d in decisions}
    decisions += [
        Decision(k.kid, "published", "in the source") for k in source if k.kid not in decided
    ]
    active_kid = active.kid if active else None
    verifier = Keyset(tuple(verifier_keys), active_kid)
    signer = Keyset(tuple(signer_keys), active_kid)
    return Plan(
        verifier=verifier,
        signer=signer,
        fingerprint=verifier.fingerprint(),
        decisions=tuple(sorted(decisions, key=lambda d: d.kid)),
        next_change_at=next_change,
    )
