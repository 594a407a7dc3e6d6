"""One replica of a fleet: its lease, its view of the shared documents, its acks, its lead.

The pipeline calls, per cycle: ``sync`` (one range read of the whole prefix; a keepalive
every third of the lease; a campaign only when this replica's election key is missing),
``plan`` (the leader first folds its source and the live acks into the shared history, one
compare-and-swap when it changed), then around the commit ``before_verifiers`` (shrink this
replica's ack before dropping kids), ``before_signers`` (hold the new signing kid open in the
shared history) and ``acknowledge`` (after the verifier notifiers: at most one write per
change). See ``keysetd.fleet.planner`` for the rules, ``tests/test_fleet_planner.py`` for
the guarantees.

When etcd does not answer, the replica plans from the last snapshot it read (kept in
``state_dir/fleet.json`` so a restart during an outage has it) with no live ack, itself
included: it keeps the kid it signs with, moves no signer and writes nothing to etcd;
status says so. Its lease runs out meanwhile, so the others stop counting it; when the
store answers again it takes a new lease and catches up (acknowledges) before it may sign
a new kid.

Cut off alone (a partition), the others go on without it, and the bound is time: the
replica keeps signing for ``retention`` past the moment its lease may have expired, then
withholds signing; every replica keeps a kid whose last signer vanished (lease gone, not
moved on) held open for ``retention`` before the leader may close it. So a full outage
shorter than ``lease_ttl + retention`` costs no signing, and a partitioned replica's tokens
verify. The leader's history writes are fenced by its election key: a leader whose lease
expired while it was stalled writes nothing.

The lease is kept alive by a thread, not by the loop: a cycle that waits on a slow
notifier or backs off keeps its replica counted. The thread stops renewing once the loop
has made no progress for the time ``/healthz`` calls stuck: a stuck replica leaves.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from keysetd.errors import StoreError
from keysetd.fleet.etcd import Entry, EtcdStore, Guard, LeaseNotFound
from keysetd.fleet.planner import (
    FleetPlan,
    ack_before_commit,
    ack_changed,
    acknowledge,
    follow_acks,
    open_signing,
    plan_replica,
)
from keysetd.fleet.state import (
    Ack,
    FleetDocumentError,
    Revocation,
    decode_ack,
    decode_history,
    decode_revocations,
    encode_ack,
    encode_history,
    encode_revocations,
)
from keysetd.history import Records, confirm_material, forget, note_reused, observe
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.plan import Plan, Policy, held_kids

if TYPE_CHECKING:
    from keysetd.config import FleetSettings
    from keysetd.state import StateStore

__all__ = ["FleetMember", "Snapshot", "revoke_in_fleet"]

#: How often a replica reads the shared documents when nothing else wakes it: a revocation
#: or another replica's ack reaches it within this (and a lease keepalive is due by ttl/3).
SYNC_PERIOD = 1.0
#: Compare-and-swap attempts before a write gives up for this cycle (it is retried next).
CAS_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shared documents as one range read found them (revisions for compare-and-swap)."""

    history: Records = field(default_factory=dict)
    history_revision: int = 0
    revocations: Mapping[str, Revocation] = field(default_factory=dict)
    acks: Mapping[str, Ack] = field(default_factory=dict)
    #: Election keys: (create revision, key, replica id), oldest first.
    candidates: tuple[tuple[int, str, str], ...] = ()
    #: The mod revision of each ack key as read, for writes that must not race an ack.
    ack_revisions: Mapping[str, int] = field(default_factory=dict)
    #: The store revision this was read at (0: not read as a whole, or this replica wrote
    #: since: the next sync reads it again).
    revision: int = 0

    @property
    def leader(self) -> str | None:
        return self.candidates[0][2] if self.candidates else None

    @property
    def leader_key(self) -> str | None:
        """The leader's election key: its lease, not only its name (a restarted replica
        has the same name while its previous lease still leads)."""
        return self.candidates[0][1] if self.candidates else None


class FleetMember:
    """This replica's side of fleet mode. A store error or a malformed shared document leaves
    it planning from the last good snapshot (``error`` says why), signing only within the
    offline bound of the module docstring."""

    def __init__(
        self,
        settings: FleetSettings,
        policy: Policy,
        state: StateStore,
        *,
        signs: bool,
        store: EtcdStore | None = None,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        stuck_after: float = 120.0,
    ) -> None:
        """``read_only`` (``keysetd plan``, ``evidence``): read the fleet, never write to it or
        to state_dir: no lease, no campaign, no lead, no ack. ``stuck_after``: seconds without a
        sync after which the keepalive thread lets the lease lapse."""
        self.settings = settings
        self.read_only = read_only
        self.replica_id = settings.replica_id
        self.policy = policy
        self._state = state
        self.signs = signs
        self._store = store if store is not None else EtcdStore(settings.store_settings())
        self._clock = clock
        self._ttl = max(1, math.ceil(settings.lease_ttl))
        self._lease = 0
        self._renewed = 0.0
        self.snapshot, self._renewed_at = _load_snapshot(state)
        self._ack: Ack | None = None
        self._stuck_after = stuck_after
        self._progress = time.monotonic()
        self._keeper: threading.Thread | None = None
        self._closing = threading.Event()
        #: Kids whose last live signer vanished (its ack went with its lease), and since when.
        self._departed: dict[str, float] = {}
        self._read_once = False
        #: Why the store is not usable now (None: the last sync worked).
        self.error: str | None = "not synced yet"
        self.unreachable_since: float | None = None
        self._pending: FleetPlan | None = None
        self._saved, self._saved_at = self.snapshot, self._renewed_at

    def carried(self, policy: Policy, *, signs: bool) -> FleetMember:
        """This member for the pipeline of a reloaded config: same lease, ack and snapshot."""
        self.policy, self.signs = policy, signs
        return self

    @property
    def period(self) -> float:
        return min(SYNC_PERIOD, self._ttl / 3)

    @property
    def leading(self) -> bool:
        if self.read_only or self.error is not None or not self._lease:
            return False
        return self.snapshot.leader_key == self._election_key

    @property
    def store(self) -> EtcdStore:
        return self._store

    def _key(self, *parts: str) -> str:
        return self.settings.key(*parts)

    # -- reading the fleet ----------------------------------------------------------------

    def sync(self) -> None:
        """Renew the lease when due and read every shared document; a failure is kept."""
        self._progress = time.monotonic()
        try:
            if not self.read_only:
                self._renew()
            snapshot = self._read()
            mine = any(c[1] == self._election_key for c in snapshot.candidates)
            if not mine and not self.read_only:
                snapshot = self._campaign(snapshot)
        except (StoreError, FleetDocumentError) as exc:
            self._unreachable(str(exc))
            return
        if self.error is not None:
            event("fleet_synced", replica=self.replica_id, leader=snapshot.leader)
        self.error, self.unreachable_since = None, None
        self._note_departures(snapshot)
        self.snapshot = snapshot
        if not self.read_only:
            self._save()

    def _read(self) -> Snapshot:
        """The shared documents: the last snapshot when the store has not moved since it was
        read (a count-only request), else one range read of the prefix."""
        current = self.snapshot
        if self.error is None and current.revision and self._store.revision() == current.revision:
            return current
        entries, revision = self._store.list_at(self._key(""))
        return replace(self._parse(entries), revision=revision)

    def _note_departures(self, snapshot: Snapshot) -> None:
        """Remember when a kid lost its last live signer by a lease ending, not a move."""
        now = self._clock()
        signed = {ack.signing for ack in snapshot.acks.values() if ack.signing}
        if not self._read_once:
            # No earlier view: whoever held a kid open may have just vanished.
            gone = set(held_kids(snapshot.history)) - signed
        else:
            before = self.snapshot.acks
            gone = {
                a.signing for rid, a in before.items() if rid not in snapshot.acks and a.signing
            }
            gone -= signed
        self._read_once = True
        for kid in gone:
            self._departed.setdefault(kid, now)
        grace = self.policy.retention
        self._departed = {
            kid: since
            for kid, since in self._departed.items()
            if kid not in signed and now - since < grace
        }

    def _unreachable(self, message: str) -> None:
        if self.error is None or self.unreachable_since is None:
            event("fleet_unreachable", logging.ERROR, replica=self.replica_id, error=message)
            self.unreachable_since = self._clock()
        self.error = message

    @property
    def _election_key(self) -> str:
        return self._key("election", f"{self._lease:x}")

    def _renew(self) -> None:
        """A lease for this replica; kept alive every third of its TTL; a lost one replaced."""
        now = time.monotonic()
        if self._lease and now - self._renewed < self._ttl / 3:
            return
        if self._lease:
            try:
                alive = self._store.keepalive(self._lease) > 0
            except LeaseNotFound:
                alive = False
            if alive:
                self._renewed, self._renewed_at = now, self._clock()
                return
            # Expired (stopped, partitioned): the ack and candidacy went with it. Catch up.
            event("fleet_lease_lost", logging.WARNING, replica=self.replica_id)
            self._ack = None
        self._lease = self._store.grant(self._ttl)
        self._renewed, self._renewed_at = now, self._clock()
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_alive, daemon=True)
            self._keeper.start()

    def _keep_alive(self) -> None:
        """The keepalive thread: renew every third of the TTL while the loop makes progress."""
        while not self._closing.wait(self._ttl / 3):
            lease = self._lease
            if not lease or time.monotonic() - self._progress > self._stuck_after:
                continue  # no lease yet, or the loop is stuck: let it lapse
            try:
                if self._store.keepalive(lease) > 0:
                    self._renewed, self._renewed_at = time.monotonic(), self._clock()
            except StoreError:
                continue  # the loop's next sync finds out and reports it

    def _campaign(self, snapshot: Snapshot) -> Snapshot:
        """Stand for leader once per lease (create-if-absent); the snapshot with our key."""
        result = self._store.cas(self._election_key, self.replica_id.encode(), 0, lease=self._lease)
        if result.current is None:
            raise StoreError("campaign", "etcd", "the lease expired while standing")
        mine = (result.current.create_revision, self._election_key, self.replica_id)
        candidates = tuple(sorted((*snapshot.candidates, mine)))
        return replace(snapshot, candidates=candidates, revision=0)

    def _parse(self, entries: Sequence[Entry]) -> Snapshot:
        history: Records = {}
        history_revision = 0
        revocations: dict[str, Revocation] = {}
        acks: dict[str, Ack] = {}
        ack_revisions: dict[str, int] = {}
        candidates: list[tuple[int, str, str]] = []
        acks_prefix, election_prefix = self._key("acks", ""), self._key("election", "")
        for entry in entries:
            if entry.key == self._key("history"):
                history, history_revision = decode_history(entry.value), entry.mod_revision
            elif entry.key == self._key("revocations"):
                revocations = decode_revocations(entry.value)
            elif entry.key.startswith(acks_prefix):
                rid = entry.key[len(acks_prefix) :]
                ack_revisions[entry.key] = entry.mod_revision
                try:
                    acks[rid] = decode_ack(entry.value)
                except FleetDocumentError as exc:
                    # A live replica whose ack cannot be read holds nothing we know of: new
                    # kids wait for it (as for any replica that has not acknowledged them).
                    event("fleet_ack_refused", logging.WARNING, replica=rid, error=str(exc))
                    acks[rid] = Ack(rid, 0.0, "", {}, None)
            elif entry.key.startswith(election_prefix):
                value = entry.value.decode("utf-8", "replace")
                candidates.append((entry.create_revision, entry.key, value))
        return Snapshot(history, history_revision, revocations, acks, tuple(sorted(candidates)))

    # -- planning -------------------------------------------------------------------------

    def plan(
        self,
        keyset: Keyset,
        now: float,
        previous_signer: Keyset | None,
        local_revocations: Mapping[str, float] | None = None,
    ) -> FleetPlan:
        """This replica's plan; the leader first brings the shared history up to date.

        ``local_revocations`` (kid -> when): ``keysetd revoke`` on this host, which holds
        here even when it could not reach the shared document (etcd down).
        """
        if self.leading:
            self._lead(keyset, now)
        snapshot = self.snapshot
        acks = snapshot.acks if self.error is None else {}
        if self.error is not None and self._offline_too_long(now):
            # The others may have presumed this replica gone for ``retention`` already: its
            # kid may be closed and dropped anywhere. Withhold signing until it catches up.
            previous_signer = None
        planned = plan_replica(
            keyset,
            snapshot.history,
            acks,
            replica_id=self.replica_id,
            policy=self.policy,
            now=now,
            previous_signer=previous_signer,
            revocations={
                **{
                    kid: Revocation(at, "revoked on this host")
                    for kid, at in (local_revocations or {}).items()
                },
                **snapshot.revocations,
            },
        )
        self._pending = planned
        return planned

    def _offline_too_long(self, now: float) -> bool:
        """Past the lease this replica last renewed, plus ``retention``."""
        return now >= self._renewed_at + self._ttl + self.policy.retention

    def _lead(self, keyset: Keyset, now: float) -> None:
        """Observe the leader's source into the shared history and follow the live acks."""
        snapshot = self.snapshot
        history = observe(snapshot.history, keyset, now)
        history, events = follow_acks(
            history, snapshot.acks, now, snapshot.revocations, keep_open=set(self._departed)
        )
        self._write_history(history, events)

    def _write_history(self, history: Records, events: Sequence[dict[str, Any]]) -> None:
        """Compare-and-swap the shared history over the one last read, fenced by this
        leader's election key (a leader whose lease expired unseen writes nothing); then
        log ``events``."""
        snapshot = self.snapshot
        if history == snapshot.history:
            return
        fence = [
            Guard(key, created)
            for created, key, _ in snapshot.candidates
            if key == self._election_key
        ]
        try:
            result = self._store.cas(
                self._key("history"),
                encode_history(history),
                snapshot.history_revision,
                guards=fence,
            )
        except StoreError as exc:
            self._unreachable(str(exc))
            return
        if not result.succeeded:  # another writer moved it: the next sync reads it
            return
        for entry in events:
            event(entry["event"], replica=self.replica_id, **_fields(entry))
        self.snapshot = _with_history(snapshot, history, result.revision)

    # -- a kid the source brings with other material ---------------------------------------

    def reuse_refused(self, kids: Sequence[str], retention: float, now: float) -> None:
        """The leader starts the fleet-wide wait of kids refused as ``kid-reused``."""
        if self.leading:
            self._write_history(*note_reused(self.snapshot.history, kids, retention, now))

    def confirm_source(self, keyset: Keyset) -> None:
        """The leader ends the waits a snapshot just fetched shows were needless."""
        if self.leading:
            self._write_history(confirm_material(self.snapshot.history, keyset), ())

    # -- around the commit ----------------------------------------------------------------

    def before_verifiers(self, planned: Plan) -> None:
        """Shrink this replica's ack before its verifier outputs drop kids it lists."""
        if self.error is not None or not self._lease:
            return
        shrunk = ack_before_commit(self._ack, planned.verifier)
        if shrunk is None:
            return
        # Only if the history this plan dropped kids by is still the fleet's: another replica
        # may have just held one of them open for its signers (``before_signers``).
        history = {self._key("history"): self.snapshot.history_revision}
        if not self._write_ack(shrunk, unchanged=history):
            raise StoreError("txn", "etcd", "the shared history moved; outputs kept, re-planning")

    def before_signers(self, planned: Plan, now: float) -> None:
        """Hold the kid signers move to open in the shared history (write-ahead)."""
        fleet_plan = self._pending
        if fleet_plan is None or fleet_plan.plan is not planned or fleet_plan.opens is None:
            return
        if self.error is not None:
            # Planned without live acks: only the kid signers already hold can be chosen.
            return
        snapshot = self.snapshot
        for _ in range(CAS_ATTEMPTS):
            updated = open_signing(snapshot.history, fleet_plan, now)
            if updated is snapshot.history:
                return
            # Only while every ack this plan counted is as read: a replica that shrank its ack
            # meanwhile is dropping a kid (``before_verifiers``), perhaps this one.
            result = self._store.cas(
                self._key("history"),
                encode_history(updated),
                snapshot.history_revision,
                unchanged=self._others(snapshot),
            )
            if result.succeeded:
                self.snapshot = _with_history(snapshot, updated, result.revision)
                return
            current = result.current
            if (current.mod_revision if current else 0) == snapshot.history_revision:
                raise StoreError("txn", "etcd", "an ack moved; signers not moved, re-planning")
            history = decode_history(current.value) if current is not None else {}
            revision = current.mod_revision if current is not None else 0
            snapshot = _with_history(snapshot, history, revision)
        raise StoreError("txn", "etcd", "the shared history kept moving; signers not moved")

    def acknowledge(self, planned: Plan, now: float, *, verifiers_told: bool) -> None:
        """After the commit: which kids the verifier outputs hold (only once consumers were
        told) and the kid signers use; written only when that changed."""
        if self.error is not None or not self._lease or not verifiers_told:
            return
        signing = planned.signer.active_kid if self.signs else None
        ack = acknowledge(self.replica_id, planned.verifier, signing, now, self._ack)
        if not ack_changed(self._ack, ack):
            return
        try:
            self._write_ack(ack)
        except StoreError as exc:
            # The outputs are committed and their consumers told: the cycle stands. The ack
            # differs from the last one written, so the next cycle writes it again.
            self._unreachable(str(exc))

    def _others(self, snapshot: Snapshot) -> dict[str, int]:
        """The other replicas' ack revisions (this replica's own may have moved this cycle)."""
        own = self._key("acks", self.replica_id)
        return {key: rev for key, rev in snapshot.ack_revisions.items() if key != own}

    def _write_ack(self, ack: Ack, unchanged: Mapping[str, int] | None = None) -> bool:
        """Write this replica's ack under its lease (if ``unchanged`` holds); True if written."""
        key, value = self._key("acks", self.replica_id), encode_ack(ack)
        try:
            if unchanged is None:
                self._store.put(key, value, self._lease)
            elif not self._store.put_if_unchanged(key, value, unchanged, lease=self._lease):
                return False
        except LeaseNotFound:
            self._lease, self._ack = 0, None  # expired: the next sync takes a new one
            raise
        self._ack = ack
        return True

    # -- what status shows ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        snapshot = self.snapshot
        return {
            "replica_id": self.replica_id,
            "store": "ok" if self.error is None else "unreachable",
            "error": self.error,
            "unreachable_since": self.unreachable_since,
            "leader": snapshot.leader,
            "leading": self.leading,
            "replicas": {
                rid: {"fingerprint": ack.fingerprint, "signing": ack.signing, "at": ack.at}
                for rid, ack in sorted(snapshot.acks.items())
            },
            "waiting_for": list(self._pending.waiting_for) if self._pending else [],
            "catching_up": bool(self._pending and self._pending.catching_up),
        }

    def close(self) -> None:
        """Leave the fleet at once (revoke the lease: ack and candidacy go with it)."""
        self._closing.set()
        if self._lease:
            try:
                self._store.revoke(self._lease)
            except StoreError as exc:
                event("fleet_leave_failed", logging.WARNING, error=str(exc))
        self._lease = 0
        self._store.close()

    def _save(self) -> None:
        """Keep the snapshot and the last renewal in state_dir for a restart while etcd is
        down: on a change, or when the renewal time it holds is a third of the TTL old."""
        if self.snapshot == self._saved and self._renewed_at - self._saved_at < self._ttl / 3:
            return
        document = _snapshot_document(self.snapshot, self._renewed_at)
        self._state.save_fleet(document, durable=self.snapshot != self._saved)
        self._saved, self._saved_at = self.snapshot, self._renewed_at


def revoke_in_fleet(
    store: EtcdStore, settings: FleetSettings, kid: str, reason: str, *, lift: bool = False
) -> bool:
    """Add (or lift) a revocation in the shared document; True when it changed."""
    key = settings.key("revocations")
    for _ in range(CAS_ATTEMPTS * 3):
        current = store.get(key)
        try:
            revoked = dict(decode_revocations(current.value)) if current is not None else {}
        except FleetDocumentError as exc:
            raise StoreError("range", "etcd", str(exc)) from None
        if lift:
            if revoked.pop(kid, None) is None:
                return False
        elif kid in revoked:
            return False
        else:
            revoked[kid] = Revocation(time.time(), reason)
        revision = current.mod_revision if current is not None else 0
        if store.cas(key, encode_revocations(revoked), revision).succeeded:
            return True
    raise StoreError("txn", "etcd", "the revocations kept moving; try again")


def forget_in_fleet(store: EtcdStore, settings: FleetSettings, kid: str) -> list[dict[str, Any]]:
    """``keysetd forget`` in the shared history (one compare-and-swap); the events it
    amounts to (none when the kid is not on record)."""
    key = settings.key("history")
    for _ in range(CAS_ATTEMPTS * 3):
        current = store.get(key)
        try:
            history = decode_history(current.value) if current is not None else {}
        except FleetDocumentError as exc:
            raise StoreError("range", "etcd", str(exc)) from None
        updated, events = forget(history, kid)
        if updated == history:
            return events
        revision = current.mod_revision if current is not None else 0
        if store.cas(key, encode_history(updated), revision).succeeded:
            return events
    raise StoreError("txn", "etcd", "the history kept moving; try again")


def _fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("event", "fleet")}


def _with_history(snapshot: Snapshot, history: Records, revision: int) -> Snapshot:
    return replace(snapshot, history=history, history_revision=revision, revision=0)


def _snapshot_document(snapshot: Snapshot, renewed_at: float) -> bytes:
    doc = {
        "history": json.loads(encode_history(snapshot.history)),
        "revocations": json.loads(encode_revocations(snapshot.revocations)),
        "renewed_at": renewed_at,
    }
    return json.dumps(doc, sort_keys=True).encode()


def _load_snapshot(state: StateStore) -> tuple[Snapshot, float]:
    """The snapshot a previous run kept and when it last renewed its lease (0: unknown);
    an unreadable one is as good as none."""
    raw = state.load_fleet()
    if raw is None:
        return Snapshot(), 0.0
    try:
        doc = json.loads(raw)
        history = decode_history(json.dumps(doc["history"]).encode())
        revocations = decode_revocations(json.dumps(doc["revocations"]).encode())
        renewed_at = float(doc.get("renewed_at", 0.0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        event("fleet_snapshot_refused", logging.WARNING, error=type(exc).__name__)
        return Snapshot(), 0.0
    if not math.isfinite(renewed_at):
        renewed_at = 0.0
    return Snapshot(history, 0, revocations), renewed_at
