"""One cycle: fetch -> decode -> validate -> plan -> render -> commit -> notify -> record.

Never sleeps and never loops: the daemon decides when a cycle runs. A cycle
that fails at any stage leaves every output as it was; the error is recorded
and returned, and the last-known-good stays in ``state_dir``.

Crash ordering: history learns a kid was published only after the verifier
outputs holding it are on disk, and that it is active only after the signer
outputs are; so a restart never shortens an activation delay or a retention.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keysetd import failpoints
from keysetd.atomic import replace_if_unchanged
from keysetd.audit import AuditLog
from keysetd.backoff import Random
from keysetd.commit import Rendered, Written, commit_output, render_outputs
from keysetd.config import Config
from keysetd.dispatch import Backlog, interested, run_notifiers
from keysetd.errors import (
    InvalidKeyset,
    KeysetdError,
    NotifyError,
    OutputError,
    Problem,
    SourceError,
)
from keysetd.extension import Notifier, NotifyEvent, Output, Role, Source
from keysetd.formats import decode
from keysetd.formats.jwks import render_keyset
from keysetd.history import (
    Records,
    apply_revocations,
    mark_activating,
    mark_active,
    mark_published,
    observe,
)
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.plan import Plan, Policy, plan
from keysetd.repeats import RepeatedFailures
from keysetd.rotation import next_source
from keysetd.state import LastKnownGood, StateStore, UntrustedLastKnownGood
from keysetd.validate import check, weak_secrets

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


class Pipeline:
    """Holds the built plugins and the in-memory view of what was last published."""

    def __init__(
        self, config: Config, *, clock: Clock = time.time, rand: Random = random.random
    ) -> None:
        self.config = config
        self.clock = clock
        self.rand = rand
        self.policy = Policy(config.policy.activation_delay, config.policy.retention)
        self.state = StateStore(config.state_dir)
        self.state.ensure()
        self.audit = AuditLog(self.state.audit_path, clock)
        self.source: Source = config.build_source()
        self.outputs: tuple[Output, ...] = config.build_outputs()
        self.notifiers: tuple[Notifier, ...] = config.build_notifiers()
        self.history: Records = self.state.load_history()
        #: What history.json holds; ``history`` may be ahead by kids only observed so far.
        self._saved_history: Records = self.history
        self._signer: Keyset | None = self._load_signer()
        self._keyset: Keyset | None = None
        self._last_data: bytes | None = None
        self._published: Plan | None = None
        self._rendered: list[Rendered] = []
        self._written = Written()
        self._revoked: frozenset[str] = frozenset()
        self._status: dict[str, Any] = self.state.load_status() or {}
        #: Notifications that failed and are owed again (the daemon retries them).
        self.backlog = Backlog()
        self._repeats = RepeatedFailures()
        #: Why the last SIGHUP reload was refused; shown as last_error until one succeeds.
        self.reload_error: str | None = None

    @property
    def needs_active(self) -> bool:
        return any(o.role is Role.SIGNER for o in self.outputs)

    @property
    def published(self) -> Plan | None:
        return self._published

    @property
    def status(self) -> dict[str, Any]:
        """What was last recorded in status.json."""
        return self._status

    def close(self) -> None:
        """Close the source; write the count of repeated failures still owed to the audit log."""
        self.source.close()
        try:
            self._write_audit(self._repeats.recovered())
        except OSError as exc:
            event("state_write_failed", logging.ERROR, path=str(exc.filename), error=str(exc))

    def _load_signer(self) -> Keyset | None:
        raw = self.state.load_signer()
        if raw is None:
            return None
        try:
            return decode(raw, "jwks")
        except InvalidKeyset:
            return None

    # -- the cycle ---------------------------------------------------------

    def cycle(self, *, force: bool = False) -> CycleResult:
        """Run one cycle for the current source snapshot."""
        try:
            return self._cycle(force)
        except OSError as exc:
            # state_dir could not be written (full, read-only): fail the cycle, stay up.
            name = exc.filename2 or exc.filename  # os.replace names the target second
            where = self.state.directory / name if name else self.state.directory
            failure = OutputError("state_dir", str(where), exc.strerror or str(exc))
            return self._failed(failure, "record", self.clock())

    def _audit(self, event_name: str, **fields: Any) -> None:
        self._audit_all([{"event": event_name, **fields}])

    def _audit_all(self, events: Sequence[dict[str, Any]]) -> None:
        """Append audit lines now: before the history they describe, so none is ever lost."""
        if events:
            self._write_audit([*self._repeats.flush(), *events])

    def _write_audit(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            self.audit.append_all(events)
            failpoints.hit("state.after-audit-append")  # failpoint (tests only)

    def _cycle(self, force: bool) -> CycleResult:
        now = self.clock()
        revoked_now = self._sync_revocations(now)
        if revoked_now and self._keyset is not None:
            self._apply_revocations(now)
        try:
            snapshot = self.source.fetch()
        except SourceError as exc:
            return self._failed(exc, "fetch", now)
        if not force and self._keyset is not None and snapshot.data == self._last_data:
            return self._refresh(now)
        try:
            keyset = self.validate_snapshot(snapshot.data, snapshot.format, snapshot.origin)
            result = self._publish(keyset, now)
        except InvalidKeyset as exc:
            return self._failed(exc, "validate", now)
        except KeysetdError as exc:
            return self._failed(exc, "commit", now)
        fmt = snapshot.format or self.config.source.format
        lkg = LastKnownGood(snapshot.data, fmt, snapshot.origin, now, result.fingerprint or "")
        # After the notifiers: its history write (the file's digest) costs consumers nothing.
        self.state.save_lkg(lkg, self._saved_history)
        self._status.pop("lkg_error", None)  # a good last-known-good replaces a refused one
        failpoints.hit("state.after-lkg-save")  # failpoint (tests only)
        self._last_data = snapshot.data
        self._record_success(now, result)
        return self._manage(result, now)

    def plan_now(self, keyset: Keyset, now: float | None = None) -> Plan:
        """What outputs would get for ``keyset`` now (``keysetd plan`` and the cycle)."""
        when = self.clock() if now is None else now
        return plan(keyset, self.history, self.policy, when, self._signer)

    def validate_snapshot(
        self, data: bytes, fmt: str | None, origin: str, *, refuse_revoked: bool = True
    ) -> Keyset:
        known = {kid: rec.material for kid, rec in self.history.items()}
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
            if kid in self._revoked
        ]
        if refuse_revoked and revoked:
            raise InvalidKeyset(revoked, origin)
        if weak := weak_secrets(keyset):
            if self.config.settings.strict:
                raise InvalidKeyset(weak, origin)
            for problem in weak:
                event("weak_secret", logging.WARNING, kid=problem.kid, detail=problem.detail)
        return keyset

    def _refresh(self, now: float) -> CycleResult:
        """Same bytes as last time: re-plan (time may have passed) and restore drifted files."""
        assert self._keyset is not None
        published = self._published
        try:
            due = published is None or (
                published.next_change_at is not None and now >= published.next_change_at
            )
            planned = self.plan_now(self._keyset, now) if due else published
            assert planned is not None
            if published is not None and planned.fingerprint == published.fingerprint:
                result = self._commit_and_notify(planned, self._rendered, now)
            else:
                result = self._publish_plan(planned, now)
        except KeysetdError as exc:
            return self._failed(exc, "commit", now)
        result = replace(result, unchanged_source=True)
        self._record_success(now, result)
        return self._manage(result, now)

    def _publish(self, keyset: Keyset, now: float) -> CycleResult:
        """Record the kids the source brings, then plan, render, commit and notify."""
        # Kids seen in the source are saved with the next transition (after the verifier
        # commit): one history write fewer before consumers are told.
        self.history = observe(self.history, keyset, now)
        result = self._publish_plan(self.plan_now(keyset, now), now)
        self._keyset = keyset
        return result

    def _publish_plan(self, planned: Plan, now: float) -> CycleResult:
        rendered = render_outputs(self.outputs, planned)
        files = {path: data for item in rendered for path, data in item.files.items()}
        for notifier in self.notifiers:
            notifier.check(files)  # pre-commit: a NotifyError here fails the cycle unwritten
        result = self._commit_and_notify(planned, rendered, now)
        if result.changed:
            event(
                "published",
                fingerprint=planned.fingerprint,
                active_kid=planned.active_kid,
                kids=",".join(planned.published_kids),
                outputs=",".join(result.changed),
            )
            self._audit(
                "published",
                fingerprint=planned.fingerprint,
                active_kid=planned.active_kid,
                kids=list(planned.published_kids),
                outputs=list(result.changed),
            )
        self._published, self._rendered = planned, rendered
        return result

    def _remember(self, history: Records, events: Sequence[dict[str, Any]] = ()) -> None:
        """Audit what changed, then persist history (a crash between repeats the lines)."""
        self._audit_all(events)
        self.history = history
        if history != self._saved_history:
            self.state.save_history(history)
            failpoints.hit("state.after-history-save")  # failpoint (tests only)
            self._saved_history = history
        for entry in events:
            event(entry["event"], **{k: v for k, v in entry.items() if k != "event"})

    def _commit_and_notify(
        self, planned: Plan, rendered: list[Rendered], now: float
    ) -> CycleResult:
        """Verifier outputs, their notifiers, then signer outputs and the remaining notifiers."""
        changed: list[str] = []
        failures: list[NotifyError] = []
        verifiers = [r for r in rendered if r.output.role is Role.VERIFIER]
        signers = [r for r in rendered if r.output.role is Role.SIGNER]
        signer_names = {r.output.name for r in signers}
        pending = list(self.notifiers)

        changed += self._commit_phase(verifiers)
        failpoints.hit("cycle.after-verifier-phase")  # failpoint (tests only)
        self._remember(*mark_published(self.history, planned, now))
        # A notifier that follows any signer output waits for the signer phase.
        early = [n for n in pending if interested(n, changed) and not interested(n, signer_names)]
        failures += self._notify(early, planned, changed)
        pending = [n for n in pending if n not in early]

        activating, activated = mark_activating(self.history, planned, now)
        self._remember(activating)  # write-ahead: both kids count as held until the commit
        failpoints.hit("cycle.before-signer-phase")  # failpoint (tests only)
        changed += self._commit_phase(signers)
        history, closed = mark_active(self.history, planned, now)
        self._remember(history, activated + closed)
        failures += self._notify([n for n in pending if interested(n, changed)], planned, changed)
        self.backlog.schedule(self.clock(), failed=bool(failures), fresh=True, rand=self.rand)
        self._keep_signer(planned.signer)  # the signer files already hold it; no hurry
        return CycleResult(
            ok=True,
            changed=tuple(changed),
            fingerprint=planned.fingerprint,
            notify_errors=tuple(str(f) for f in failures),
            failed_notifiers=tuple(f.notifier for f in failures),
            next_change_at=planned.next_change_at,
        )

    def _commit_phase(self, phase: Sequence[Rendered]) -> list[str]:
        return [item.output.name for item in phase if commit_output(item, self._written)]

    def _notify(self, due: list[Notifier], planned: Plan, changed: list[str]) -> list[NotifyError]:
        if not due:
            return []
        what = NotifyEvent(planned.fingerprint, planned.active_kid, tuple(changed))
        failures = run_notifiers(due, what)
        self.backlog.settle(due, what, failures)  # a newer change supersedes an owed one
        return failures

    def retry_notifications(self) -> list[NotifyError]:
        """Deliver again what the backlog owes, each notifier the event it failed on.

        The daemon calls this at ``backlog.retry_at``, whether or not the source
        changed; failures stay owed with a longer backoff.
        """
        failures: list[NotifyError] = []
        for what, notifiers in self.backlog.due(self.notifiers):
            event(
                "notify_retry",
                notifiers=",".join(n.name for n in notifiers),
                fingerprint=what.fingerprint,
                attempt=self.backlog.attempts + 1,
            )
            found = run_notifiers(notifiers, what)
            self.backlog.settle(notifiers, what, found)
            failures += found
        self.backlog.keep_only(n.name for n in self.notifiers)
        self.backlog.schedule(self.clock(), failed=bool(failures), fresh=False, rand=self.rand)
        status = dict(self._status)
        status.update(notify_errors=self.backlog.errors, notify_retry_at=self.backlog.retry_at)
        self._save_status(status)
        return failures

    def _keep_signer(self, signer: Keyset) -> None:
        """Remember the signer keyset (with private keys) so a held-back key survives restarts."""
        if signer == self._signer or signer.active is None:
            return
        self.state.save_signer(render_keyset(signer))
        failpoints.hit("state.after-signer-save")  # failpoint (tests only)
        self._signer = signer

    # -- managed keys ------------------------------------------------------------

    def _manage(self, result: CycleResult, now: float) -> CycleResult:
        """With ``[rotation]``, write the owned source's next content (compare-and-swap)."""
        rotation = self.config.settings.rotation
        if rotation is None:
            return result
        step = next_source(
            self._keyset,
            self.history,
            every=rotation.every,
            activation_delay=self.policy.activation_delay,
            alg=rotation.alg,
            kid_prefix=rotation.kid_prefix,
            now=now,
        )
        if step.keyset is None:
            return _sooner(result, step.next_at)
        path: Path = self.config.source.path  # type: ignore[attr-defined]
        expected = self._last_data if self._keyset is not None else None
        try:
            written = replace_if_unchanged(path, expected, render_keyset(step.keyset), 0o600)
        except OSError as exc:
            event("rotation_failed", logging.ERROR, path=str(path), error=exc.strerror or str(exc))
            return result
        if not written:
            event(
                "rotation_skipped",
                logging.WARNING,
                path=str(path),
                reason="the source changed meanwhile; the next cycle reads it",
            )
            return _sooner(result, now)
        event("rotation_step", reason=step.reason, active_kid=step.keyset.active_kid)
        self._audit(
            "managed_rotation",
            reason=step.reason,
            active_kid=step.keyset.active_kid,
            kids=list(step.keyset.kids),
        )
        return _sooner(result, now)

    # -- revocation ------------------------------------------------------------

    def _sync_revocations(self, now: float) -> bool:
        revoked = {kid: float(v.get("at", now)) for kid, v in self.state.load_revocations().items()}
        self._revoked = frozenset(revoked)
        history, events = apply_revocations(self.history, revoked, now)
        self._remember(history, events)
        return bool(events)

    def _apply_revocations(self, now: float) -> None:
        """Publish at once without revoked kids, whatever the source is doing."""
        assert self._keyset is not None
        try:
            self._publish_plan(self.plan_now(self._keyset, now), now)
        except KeysetdError as exc:
            event("revocation_failed", logging.ERROR, error=str(exc))

    # -- failure and last-known-good ----------------------------------------

    def _failed(self, exc: KeysetdError, stage: str, now: float) -> CycleResult:
        source = self.source.describe()
        event("cycle_failed", logging.ERROR, stage=stage, source=source, error=str(exc))
        if isinstance(exc, InvalidKeyset):
            entry = {
                "event": "refused",
                "source": source,
                "rules": sorted(exc.rules),
                "kids": sorted({p.kid for p in exc.problems}),
            }
        elif isinstance(exc, SourceError):
            entry = {"event": "source_failed", "source": source, "error": exc.reason}
        else:
            entry = {"event": "commit_failed", "error": str(exc)}
        from_lkg = False
        try:
            # Only a failure unlike the one before gets its own line; repeats are counted.
            self._write_audit(self._repeats.admit(stage, str(exc), entry, now))
            if self._keyset is None and not isinstance(exc, OutputError):
                from_lkg = self._republish_lkg(now)
        except OSError as error:  # state_dir itself is failing: report, stay up
            event(
                "state_write_failed",
                logging.ERROR,
                path=str(error.filename),
                error=error.strerror or str(error),
            )
        self._record_failure(now, str(exc))
        result = CycleResult(
            ok=False,
            error=str(exc),
            stage=stage,
            rules=tuple(sorted(exc.rules)) if isinstance(exc, InvalidKeyset) else (),
            from_lkg=from_lkg,
            fingerprint=self._status.get("fingerprint"),
            next_change_at=self._published.next_change_at if self._published else None,
        )
        if isinstance(exc, SourceError) and self._source_missing():
            return self._manage(result, now)
        return result

    def _source_missing(self) -> bool:
        """A managed source file that is gone: keysetd writes it again (or its first key)."""
        path = getattr(self.config.source, "path", None)
        return (
            self.config.settings.rotation is not None
            and isinstance(path, Path)
            and (not path.exists())
        )

    def _republish_lkg(self, now: float) -> bool:
        """After a restart with a failing source, publish the last-known-good again.

        Only the file history recorded the digest of: a corrupt or swapped one is
        refused by name (log, audit, ``status.lkg_error``) and outputs stay as they are.
        """
        try:
            lkg = self.state.verified_lkg()
        except UntrustedLastKnownGood as exc:
            self._refuse_lkg(str(exc))
            return False
        if lkg is None:
            return False
        where = f"last-known-good ({self.state.lkg_path})"
        try:
            keyset = self.validate_snapshot(lkg.data, lkg.format, where, refuse_revoked=False)
            result = self._publish(keyset, now)
        except KeysetdError as exc:
            self._refuse_lkg(str(exc))
            return False
        self._status.pop("lkg_error", None)
        self._status["lkg_fetched_at"] = lkg.fetched_at
        event(
            "published_last_known_good",
            fingerprint=result.fingerprint,
            outputs=",".join(result.changed),
        )
        self._audit("published_last_known_good", fingerprint=result.fingerprint)
        return True

    def _refuse_lkg(self, message: str) -> None:
        """Log every refusal; audit and put in status each new reason once (no flood)."""
        event("lkg_unusable", logging.ERROR, path=str(self.state.lkg_path), error=message)
        if self._status.get("lkg_error") != message:
            self._status["lkg_error"] = message
            self._audit("lkg_refused", path=str(self.state.lkg_path), reason=message)

    # -- status ----------------------------------------------------------------

    def _base_status(self) -> dict[str, Any]:
        status = dict(self._status)
        published = self._published
        if published is not None:
            status["active_kid"] = published.active_kid
            status["published_kids"] = list(published.published_kids)
            status["fingerprint"] = published.fingerprint
            status["keys"] = [
                {"kid": d.kid, "state": d.state, "reason": d.reason, "until": d.until}
                for d in published.decisions
            ]
            status["next_change_at"] = published.next_change_at
        status["source"] = self.source.describe()
        status["outputs"] = {
            o.name: {"path": str(o.config.path), "role": o.role.value} for o in self.outputs
        }
        return status

    def _record_success(self, now: float, result: CycleResult) -> None:
        self._write_audit(self._repeats.recovered())
        status = self._base_status()
        status.update(last_error=self.reload_error, last_success_at=now, lkg_fetched_at=now)
        status["reload_error"] = self.reload_error
        status.update(notify_errors=self.backlog.errors, notify_retry_at=self.backlog.retry_at)
        if result.changed:
            status["last_change_at"] = now
        self._save_status(status)

    def record_reload_refused(self, message: str) -> None:
        """A SIGHUP reload was refused: status names why until a reload succeeds."""
        self.reload_error = message
        status = dict(self._status)
        status.update(last_error=message, last_error_at=self.clock(), reload_error=message)
        self._save_status(status)

    def _record_failure(self, now: float, message: str) -> None:
        status = self._base_status()
        status.update(last_error=message, last_error_at=now)
        self._save_status(status)

    def _save_status(self, status: dict[str, Any]) -> None:
        self._status = status
        try:
            self.state.save_status(status)
        except OSError as exc:
            event(
                "state_write_failed",
                logging.ERROR,
                path=str(self.state.status_path),
                error=exc.strerror or str(exc),
            )


def _sooner(result: CycleResult, when: float | None) -> CycleResult:
    """The result with ``next_change_at`` moved earlier to ``when``."""
    if when is None or (result.next_change_at is not None and result.next_change_at <= when):
        return result
    return replace(result, next_change_at=when)
