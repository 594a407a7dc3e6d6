"""One cycle: fetch -> validate -> plan -> render -> commit -> notify -> record.

Never sleeps and never loops: the daemon decides when a cycle runs. A cycle
that fails at any stage leaves every output as it was; the error is recorded
and returned, and the last-known-good stays in ``state_dir``.

This module is the order of the stages; each lives next door: keysetd.publish
(commit and notify, with the crash ordering of history marks), keysetd.record
(status.json and audit lines), keysetd.ledger (key history, revocations),
keysetd.lkg (the last-known-good) and keysetd.managed (managed rotation).
The pipeline is given its StateStore: ``Pipeline.open`` makes state_dir for the
daemon and ``keysetd once``; ``keysetd plan`` and ``evidence`` pass a store
over state_dir as it is, and construction writes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from keysetd.backoff import Random, jittered
from keysetd.commit import Rendered, render_outputs
from keysetd.config import Config
from keysetd.dispatch import Backlog
from keysetd.errors import (
    InvalidKeyset,
    KeysetdError,
    NotifyError,
    OutputError,
    Problem,
    SealError,
    SourceError,
)
from keysetd.extension import Notifier, Output, Role, Source
from keysetd.history import Records, reuse_allowed, reused_kids
from keysetd.ledger import Ledger
from keysetd.lkg import Keeper
from keysetd.log import event
from keysetd.managed import ManagedRotation, writable_source
from keysetd.model import Keyset
from keysetd.plan import Plan, Policy, plan
from keysetd.publish import Delivery, Publisher
from keysetd.record import Recorder, failure_entry
from keysetd.sealing import is_sealed
from keysetd.state import LastKnownGood, StateStore
from keysetd.validate import check, weak_secrets

if TYPE_CHECKING:
    from keysetd.fleet.member import FleetMember

__all__ = ["CycleResult", "Pipeline"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CycleResult:
    """How a cycle ended. ``ok`` means the outputs are current for the source."""

    ok: bool
    changed: tuple[str, ...] = ()
    error: str | None = None
    fingerprint: str | None = None
    from_lkg: bool = False
    unchanged_source: bool = False
    notify_errors: tuple[str, ...] = field(default=())
    next_change_at: float | None = None
    #: Where a failed cycle stopped (fetch | validate | commit) and the rules it broke.
    stage: str | None = None
    rules: tuple[str, ...] = ()
    failed_notifiers: tuple[str, ...] = ()
    #: keysetd just wrote the managed source, or found it moved under a write: the next
    #: cycle must read it, even when only a planned change woke the daemon.
    fetch_next: bool = False
    #: False for a re-plan that did not ask the source (it says nothing of its health).
    fetched: bool = True


class Pipeline:
    """Holds the built plugins and the in-memory view of what was last published."""

    def __init__(
        self,
        config: Config,
        state: StateStore,
        *,
        clock: Clock = time.time,
        rand: Random = random.random,
        backlog: Backlog | None = None,
        read_only: bool = False,
        fleet: FleetMember | None = None,
    ) -> None:
        """Read state (history, status, signer keyset); create or write nothing.

        ``backlog``: notifications still owed by the pipeline this one replaces.
        ``read_only`` (plan, evidence): in fleet mode, read etcd but never write to it.
        ``fleet``: the member of the pipeline this one replaces (a reload), kept with its
        lease and ack when ``[fleet]`` did not change.
        """
        self.config = config
        self.clock = clock
        self._rand = rand
        self.policy = Policy(config.policy.activation_delay, config.policy.retention)
        self.state = state
        rotation = config.settings.rotation
        # ConfigError when [rotation] names a source keysetd cannot write.
        managed = None
        if rotation is not None:
            managed = writable_source(config, state.sealer, upgrade=not read_only)
        self.source: Source = config.build_source() if managed is None else managed
        self.outputs: tuple[Output, ...] = config.build_outputs()
        self.notifiers: tuple[Notifier, ...] = config.build_notifiers()
        self.recorder = Recorder(state, self.source, self.outputs, clock, config.settings.audit)
        self.ledger = Ledger(state, self.recorder)
        self.fleet: FleetMember | None = None
        if config.settings.fleet is not None:
            if fleet is not None and fleet.settings == config.settings.fleet:
                self.fleet = fleet.carried(self.policy, signs=self.needs_active)
            else:
                self.fleet = _fleet_member(
                    config,
                    self.policy,
                    state,
                    signs=self.needs_active,
                    clock=clock,
                    read_only=read_only,
                )
            self.recorder.fleet = self.fleet.status
        self.publisher = Publisher(
            self.outputs,
            self.notifiers,
            state=state,
            ledger=self.ledger,
            recorder=self.recorder,
            clock=clock,
            rand=rand,
            backlog=backlog,
            fleet=self.fleet,
        )
        self.lkg = Keeper(state, self.recorder)
        self.rotation: ManagedRotation | None = None
        if managed is not None and rotation is not None:
            self.rotation = ManagedRotation(
                managed,
                rotation,
                activation_delay=self.policy.activation_delay,
                recorder=self.recorder,
                # In a fleet a replica cut off from etcd may sign an old version for
                # lease_ttl + retention (keysetd.fleet.member): retire none sooner.
                retention=self.policy.retention
                + (config.settings.fleet.lease_ttl if config.settings.fleet else 0.0),
            )
        #: Plaintext private files left in state_dir are sealed (once) before the first cycle.
        self._secured = state.sealer is None
        self._keyset: Keyset | None = None
        self._last_data: bytes | None = None
        #: Kids the last fetched snapshot was refused for as ``kid-reused``.
        self._refused_reuse: tuple[str, ...] = ()
        self._published: Plan | None = None
        self._rendered: list[Rendered] = []

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        clock: Clock = time.time,
        rand: Random = random.random,
        backlog: Backlog | None = None,
        fleet: FleetMember | None = None,
    ) -> Pipeline:
        """The pipeline of a writer (the daemon, ``keysetd once``): state_dir made if missing.

        ConfigError when state_dir is encrypted and ``[state] encryption`` is not set.
        """
        state = StateStore(config.state_dir, config.build_sealer())
        state.ensure()
        state.check_encryption()
        return cls(config, state, clock=clock, rand=rand, backlog=backlog, fleet=fleet)

    @property
    def needs_active(self) -> bool:
        return any(o.role is Role.SIGNER for o in self.outputs)

    @property
    def published(self) -> Plan | None:
        return self._published

    @property
    def status(self) -> dict[str, Any]:
        """What was last recorded in status.json."""
        return self.recorder.status

    @property
    def history(self) -> Records:
        """Every kid keysetd knows of (may be ahead of history.json by kids only observed)."""
        return self.ledger.records

    @property
    def backlog(self) -> Backlog:
        """Notifications that failed and are owed again (the daemon retries them)."""
        return self.publisher.backlog

    def close(self, *, keep_fleet: bool = False) -> None:
        """Close the source; write the count of repeated failures still owed to the audit log.

        In fleet mode the replica leaves the fleet (its lease is revoked) first, unless the
        pipeline replacing this one carries the member on (``keep_fleet``).
        """
        if self.fleet is not None and not keep_fleet:
            self.fleet.close()
        self.source.close()
        self.recorder.close()
        if self.state.sealer is not None:
            self.state.sealer.close()

    # -- the cycle ---------------------------------------------------------

    def cycle(self, *, force: bool = False, fetch: bool = True) -> CycleResult:
        """Run one cycle for the current source snapshot.

        ``fetch=False`` (a planned change came due, nothing else happened): re-plan the
        last validated keyset without asking the source; a source that was never read
        is fetched anyway.
        """
        try:
            if self.fleet is None:
                return self._cycle(force, fetch or self._reuse_due())
            self.fleet.sync()
            fetch = fetch or self._reuse_due()  # a forget or a wait over, on any replica
            # Re-read the fleet each period (jittered: a fleet started together does not poll
            # etcd in step): acks, revocations and leases change there.
            period = jittered(self.fleet.period, self._rand)
            return _sooner(self._cycle(force, fetch), self.clock() + period)
        except OSError as exc:
            # state_dir could not be written (full, read-only): fail the cycle, stay up.
            name = exc.filename2 or exc.filename  # os.replace names the target second
            where = self.state.directory / name if name else self.state.directory
            failure = OutputError("state_dir", str(where), exc.strerror or str(exc))
            return self._failed(failure, "record", self.clock())

    def _secure(self, now: float) -> None:
        """Seal plaintext private files from before encryption was configured (read once,
        written sealed); a key provider that fails is tried again next cycle."""
        try:
            sealed = self.state.secure(now)
        except SealError as exc:
            event("state_seal_failed", logging.ERROR, error=str(exc))
            self.status["state_error"] = str(exc)
            return
        self._secured = True
        if sealed:
            event("state_sealed", files=",".join(sealed), encryption=self.config.key_provider_name)
            self.recorder.audit("state_sealed", files=sealed)

    def _cycle(self, force: bool, fetch: bool) -> CycleResult:
        now = self.clock()
        if self.state.sealer is not None:
            self.state.sealer.expire()
        if not self._secured:
            self._secure(now)
        if self.ledger.sync_revocations(now) and self._keyset is not None:
            self._apply_revocations(now)
        if self.fleet is None:
            self.ledger.sync_forgets()
        if not fetch and not force and self._keyset is not None:
            return self._refresh(now, fetched=False)
        try:
            snapshot = self.source.fetch()
        except SourceError as exc:
            return self._failed(exc, "fetch", now)
        if not force and self._keyset is not None and snapshot.data == self._last_data:
            self._confirm(self._keyset)
            return self._refresh(now)
        try:
            keyset = self.validate_snapshot(snapshot.data, snapshot.format, snapshot.origin)
            self._confirm(keyset)
            result = self._publish(keyset, now)
            self._refused_reuse = ()
        except InvalidKeyset as exc:
            self._note_reused(exc, now)
            return self._failed(exc, "validate", now)
        except SealError as exc:  # the key provider failed: no signer moved, nothing plaintext
            return self._failed(exc, "state", now)
        except KeysetdError as exc:
            return self._failed(exc, "commit", now)
        fmt = snapshot.format or self.config.source.format
        lkg = LastKnownGood(snapshot.data, fmt, snapshot.origin, now, result.fingerprint or "")
        try:
            self.lkg.keep(lkg, self.ledger.saved)
        except SealError as exc:  # never a plaintext fallback: the old sealed one stays
            return self._failed(exc, "record", now)
        self._last_data = snapshot.data
        self._record_success(now, result)
        return self._manage(result, now)

    def validate_snapshot(
        self, data: bytes, fmt: str | None, origin: str, *, refuse_revoked: bool = True
    ) -> Keyset:
        if is_sealed(data):  # SealedSource opens what it reads: here no [rotation] wraps it
            detail = (
                "the file is sealed by keysetd ([state] encryption of a managed source): "
                "only a config with [rotation] and that encryption reads it"
            )
            raise InvalidKeyset([Problem("-", "malformed", detail)], origin)
        now = self.clock()
        retention = self.policy.retention
        known = {
            kid: rec.material
            for kid, rec in self._known().items()
            if not reuse_allowed(rec, retention, now)
        }
        keyset = check(
            data,
            fmt or self.config.source.format,
            hmac_alg=self.config.policy.hmac_alg,
            where=origin,
            history=known,
            declared_public=self.source.public_only,
            require_active=self.needs_active,
        )
        revoked = [
            Problem(kid, "revoked-kid", "revoked by keysetd revoke; lift with keysetd unrevoke")
            for kid in keyset.kids
            if kid in self.ledger.revoked
        ]
        if refuse_revoked and revoked:
            raise InvalidKeyset(revoked, origin)
        if weak := weak_secrets(keyset):
            if self.config.settings.strict:
                raise InvalidKeyset(weak, origin)
            for problem in weak:
                event("weak_secret", logging.WARNING, kid=problem.kid, detail=problem.detail)
        return keyset

    def plan_now(self, keyset: Keyset, now: float | None = None) -> Plan:
        """What outputs would get for ``keyset`` now (``keysetd plan`` and the cycle)."""
        when = self.clock() if now is None else now
        if self.fleet is not None:
            planned = self.fleet.plan(keyset, when, self.publisher.signer, self.ledger.revoked)
            self.ledger.records = planned.view  # the shared history as this replica saw it
            return planned.plan
        return plan(keyset, self.ledger.records, self.policy, when, self.publisher.signer)

    def _refresh(self, now: float, *, fetched: bool = True) -> CycleResult:
        """Same bytes as last time: re-plan (time may have passed) and restore drifted files.

        ``fetched=False``: no fetch happened (a planned change came due); the result says
        so, and the source's health in status stays what the last fetch found.
        """
        assert self._keyset is not None
        published = self._published
        try:
            due = (
                published is None
                or self.fleet is not None  # the fleet's documents may have moved: always
                or (published.next_change_at is not None and now >= published.next_change_at)
            )
            planned = self.plan_now(self._keyset, now) if due else published
            assert planned is not None
            if published is not None and planned.fingerprint == published.fingerprint:
                result = _result(planned, self.publisher.deliver(planned, self._rendered, now))
            else:
                result = self._publish_plan(planned, now)
        except KeysetdError as exc:
            return self._failed(exc, "commit", now)
        result = replace(result, unchanged_source=True, fetched=fetched)
        self._record_success(now, result)
        return self._manage(result, now)

    def _confirm(self, keyset: Keyset) -> None:
        """A snapshot just fetched validated: waits for other material it belies end."""
        if self.fleet is not None:
            self.fleet.confirm_source(keyset)
        else:
            self.ledger.confirm(keyset)

    def _note_reused(self, refused: InvalidKeyset, now: float) -> None:
        """Kids refused as ``kid-reused`` start their wait (the fleet's leader for all)."""
        self._refused_reuse = tuple(reused_kids(refused))
        if self.fleet is not None:
            self.fleet.reuse_refused(self._refused_reuse, self.policy.retention, now)
        else:
            self.ledger.note_reused(refused, self.policy.retention, now)

    def _known(self) -> Records:
        """The history validation checks material against: in fleet mode the shared one
        as last read, so a leader's wait or a forget counts even while every cycle fails
        (``ledger.records`` holds the view the last plan made)."""
        return self.fleet.snapshot.history if self.fleet is not None else self.ledger.records

    def _reuse_due(self) -> bool:
        """A kid the source was refused for may be taken now: the next cycle fetches."""
        if not self._refused_reuse:
            return False
        records, now = self._known(), self.clock()
        return any(
            kid in records and reuse_allowed(records[kid], self.policy.retention, now)
            for kid in self._refused_reuse
        )

    def _publish(self, keyset: Keyset, now: float) -> CycleResult:
        """Record the kids the source brings, then plan, render, commit and notify."""
        self.ledger.observe(keyset, now)
        result = self._publish_plan(self.plan_now(keyset, now), now)
        self._keyset = keyset
        return result

    def _publish_plan(self, planned: Plan, now: float) -> CycleResult:
        rendered = render_outputs(self.outputs, planned)
        delivery = self.publisher.publish(planned, rendered, now)
        self._published, self._rendered = planned, rendered
        return _result(planned, delivery)

    def _record_success(self, now: float, result: CycleResult) -> None:
        self.recorder.success(
            now,
            self._published,
            changed=bool(result.changed),
            backlog=self.backlog,
            fetched=result.fetched,
        )

    def retry_notifications(self) -> list[NotifyError]:
        """Deliver again what the backlog owes, each notifier the event it failed on.

        The daemon calls this at ``backlog.retry_at``, whether or not the source
        changed; failures stay owed with a longer backoff.
        """
        failures = self.publisher.retry()
        self.recorder.notifications(self.backlog)
        return failures

    def record_reload_refused(self, message: str) -> None:
        """A SIGHUP reload was refused: status names why until a reload succeeds."""
        self.recorder.reload_refused(message)

    # -- managed keys, revocation ---------------------------------------------

    def _manage(self, result: CycleResult, now: float) -> CycleResult:
        """With ``[rotation]``, write the owned source's next content (compare-and-swap).

        In fleet mode only the elected leader rotates: one write for the fleet.
        """
        if self.rotation is None or (self.fleet is not None and not self.fleet.leading):
            return result
        expected = self._last_data if self._keyset is not None else None
        when = self.rotation.step(self._keyset, self.history, expected, now)
        if when is not None and when <= now:  # the source was written or moved: read it next
            result = replace(result, fetch_next=True)
        return _sooner(result, when)

    def _apply_revocations(self, now: float) -> None:
        """Publish at once without revoked kids, whatever the source is doing."""
        assert self._keyset is not None
        try:
            self._publish_plan(self.plan_now(self._keyset, now), now)
        except KeysetdError as exc:
            event("revocation_failed", logging.ERROR, error=str(exc))
            # Forget the plan that still holds the kid: the rest of this cycle re-plans,
            # fails like any commit, and the failure backoff tries the revocation again.
            self._published = None

    # -- failure and last-known-good ----------------------------------------

    def _failed(self, exc: KeysetdError, stage: str, now: float) -> CycleResult:
        source = self.source.describe()
        event("cycle_failed", logging.ERROR, stage=stage, source=source, error=str(exc))
        if isinstance(exc, SealError):
            self.status["state_error"] = str(exc)
        from_lkg = False
        try:
            self.recorder.failed(stage, str(exc), failure_entry(exc, source), now)
            if self._keyset is None and not isinstance(exc, OutputError):
                from_lkg = self._republish_lkg(now)
        except OSError as error:  # state_dir itself is failing: report, stay up
            event(
                "state_write_failed",
                logging.ERROR,
                path=str(error.filename),
                error=error.strerror or str(error),
            )
        self.recorder.failure(now, self._published, str(exc))
        result = CycleResult(
            ok=False,
            error=str(exc),
            stage=stage,
            rules=tuple(sorted(exc.rules)) if isinstance(exc, InvalidKeyset) else (),
            from_lkg=from_lkg,
            fingerprint=self.status.get("fingerprint"),
            next_change_at=self._published.next_change_at if self._published else None,
        )
        if isinstance(exc, SourceError) and self.rotation is not None and self.rotation.missing():
            return self._manage(result, now)
        return result

    def _republish_lkg(self, now: float) -> bool:
        """After a restart with a failing source, publish the last-known-good again."""
        lkg = self.lkg.trusted()
        if lkg is None:
            return False
        try:
            keyset = self.validate_snapshot(
                lkg.data, lkg.format, self.lkg.where, refuse_revoked=False
            )
            result = self._publish(keyset, now)
        except KeysetdError as exc:
            self.lkg.refuse(str(exc))
            return False
        self.lkg.republished(lkg, result.fingerprint, result.changed)
        return True


def _fleet_member(
    config: Config, policy: Policy, state: StateStore, *, signs: bool, clock: Clock, read_only: bool
) -> FleetMember:
    """Fleet mode's member (imported only then: the etcd client stays out of other daemons)."""
    from keysetd.fleet.member import FleetMember

    assert config.settings.fleet is not None
    from keysetd.status import stuck_limit

    return FleetMember(
        config.settings.fleet,
        policy,
        state,
        signs=signs,
        clock=clock,
        read_only=read_only,
        stuck_after=stuck_limit(float(config.source.timeout)),
    )


def _result(planned: Plan, delivery: Delivery) -> CycleResult:
    return CycleResult(
        ok=True,
        changed=delivery.changed,
        fingerprint=planned.fingerprint,
        notify_errors=tuple(str(f) for f in delivery.failures),
        failed_notifiers=tuple(f.notifier for f in delivery.failures),
        next_change_at=planned.next_change_at,
    )


def _sooner(result: CycleResult, when: float | None) -> CycleResult:
    """The result with ``next_change_at`` moved earlier to ``when``."""
    if when is None or (result.next_change_at is not None and result.next_change_at <= when):
        return result
    return replace(result, next_change_at=when)
