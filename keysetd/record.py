"""The record stage: what a cycle leaves for the operator, status.json and audit lines.

Audit lines are appended before the history or status they describe, so a crash
repeats a line rather than losing one; a failure repeated cycle after cycle gets
one line and then a count (keysetd.repeats). status.json is what ``keysetd status``
and ``GET /status`` read; rewritten every cycle, so a failed write is logged, not fatal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from keysetd import failpoints
from keysetd.audit import AuditLog, was_keyed
from keysetd.dispatch import Backlog
from keysetd.errors import InvalidKeyset, KeysetdError, SealError, SourceError
from keysetd.extension import Output, Source
from keysetd.log import event
from keysetd.plan import Plan
from keysetd.repeats import RepeatedFailures
from keysetd.state import AuditKey, StateStore

if TYPE_CHECKING:
    from keysetd.config import AuditSettings

__all__ = ["AUDIT_KEY_RETRY", "Recorder", "audit_log", "failure_entry"]

#: Seconds between attempts to unwrap the audit key after the key provider failed.
AUDIT_KEY_RETRY = 30.0


def audit_log(
    state: StateStore, clock: Callable[[], float] = time.time, audit: AuditSettings | None = None
) -> AuditLog:
    """The audit log of ``state``: keyed with [state] encryption, rotated per ``[audit]``."""

    failed_at = [-math.inf]

    def key(first_seq: int) -> AuditKey | None:
        if time.monotonic() - failed_at[0] < AUDIT_KEY_RETRY:
            return None  # the provider just failed: no call (and its timeout) per line
        try:
            # A log last written keyed whose key is gone: refused, never a key made anew.
            missing = not state.audit_key_path.exists()
            return state.audit_key(first_seq, create=not (missing and was_keyed(state.audit_path)))
        except SealError as exc:  # chained unkeyed until a keyed line covers it
            failed_at[0] = time.monotonic()
            event("audit_key_unavailable", logging.ERROR, error=str(exc))
            return None

    return AuditLog(
        state.audit_path,
        clock,
        key=key if state.sealer is not None else None,
        max_bytes=None if audit is None else audit.max_bytes,
        keep=8 if audit is None else audit.keep,
    )


def failure_entry(exc: KeysetdError, source: str) -> dict[str, Any]:
    """The audit line of a failed cycle: rules and kids, never key material."""
    if isinstance(exc, InvalidKeyset):
        return {
            "event": "refused",
            "source": source,
            "rules": sorted(exc.rules),
            "kids": sorted({p.kid for p in exc.problems}),
        }
    if isinstance(exc, SourceError):
        return {"event": "source_failed", "source": source, "error": exc.reason}
    return {"event": "commit_failed", "error": str(exc)}


class Recorder:
    """Writes the audit log and status.json of one state_dir for one pipeline."""

    def __init__(
        self,
        state: StateStore,
        source: Source,
        outputs: Sequence[Output],
        clock: Callable[[], float],
        audit: AuditSettings | None = None,
    ) -> None:
        self.state = state
        self.clock = clock
        self._source = source
        self._outputs = tuple(outputs)
        self._log = audit_log(state, clock, audit)
        self._repeats = RepeatedFailures()
        #: What was last recorded in status.json (read at start, so a restart keeps it).
        self.status: dict[str, Any] = state.load_status() or {}
        #: Why the last SIGHUP reload was refused; shown as last_error until one succeeds.
        self.reload_error: str | None = None
        #: Fleet mode: this replica's view of the fleet, shown under ``fleet`` in status.
        self.fleet: Callable[[], dict[str, Any]] | None = None

    # -- audit -----------------------------------------------------------------

    def audit(self, event_name: str, **fields: Any) -> None:
        self.audit_all([{"event": event_name, **fields}])

    def audit_all(self, events: Sequence[dict[str, Any]]) -> None:
        """Append audit lines now: before the history they describe, so none is ever lost."""
        if events:
            self._write([*self._repeats.flush(), *events])

    def failed(self, stage: str, message: str, entry: dict[str, Any], now: float) -> None:
        """Only a failure unlike the one before gets its own line; repeats are counted."""
        self._write(self._repeats.admit(stage, message, entry, now))

    def recovered(self) -> None:
        """Write the count of repeated failures still owed (after a success, or at close)."""
        self._write(self._repeats.recovered())

    def _write(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            self._log.append_all(events)
            failpoints.hit("state.after-audit-append")  # failpoint (tests only)

    # -- status ----------------------------------------------------------------

    def _base(self, published: Plan | None) -> dict[str, Any]:
        status = dict(self.status)
        if published is not None:
            status["active_kid"] = published.active_kid
            status["published_kids"] = list(published.published_kids)
            status["fingerprint"] = published.fingerprint
            status["keys"] = [
                {"kid": d.kid, "state": d.state, "reason": d.reason, "until": d.until}
                for d in published.decisions
            ]
            status["next_change_at"] = published.next_change_at
        if self.fleet is not None:
            status["fleet"] = self.fleet()
        status["source"] = self._source.describe()
        status["outputs"] = {
            o.name: {"path": str(o.config.path), "role": o.role.value} for o in self._outputs
        }
        return status

    def success(
        self,
        now: float,
        published: Plan | None,
        *,
        changed: bool,
        backlog: Backlog,
        fetched: bool = True,
    ) -> None:
        """A cycle that published. ``fetched=False``: a re-plan that did not ask the source,
        so the source's health (last error, last-known-good age) stays as the last fetch
        left it: a planned change during an outage must not make /readyz look fresh."""
        status = self._base(published)
        if fetched:
            self.recovered()
            status.pop("state_error", None)
            status.update(last_error=self.reload_error, last_success_at=now, lkg_fetched_at=now)
            status["reload_error"] = self.reload_error
        status.update(notify_errors=backlog.errors, notify_retry_at=backlog.retry_at)
        if changed:
            status["last_change_at"] = now
        self.save(status)

    def failure(self, now: float, published: Plan | None, message: str) -> None:
        status = self._base(published)
        status.update(last_error=message, last_error_at=now)
        self.save(status)

    def notifications(self, backlog: Backlog) -> None:
        """After a notification retry: what is still owed, and when it is tried again."""
        status = dict(self.status)
        status.update(notify_errors=backlog.errors, notify_retry_at=backlog.retry_at)
        self.save(status)

    def reload_refused(self, message: str) -> None:
        """A SIGHUP reload was refused: status names why until a reload succeeds."""
        self.reload_error = message
        status = dict(self.status)
        status.update(last_error=message, last_error_at=self.clock(), reload_error=message)
        self.save(status)

    def save(self, status: dict[str, Any]) -> None:
        self.status = status
        try:
            self.state.save_status(status)
        except OSError as exc:
            event(
                "state_write_failed",
                logging.ERROR,
                path=str(self.state.status_path),
                error=exc.strerror or str(exc),
            )

    def close(self) -> None:
        """Write the count of repeated failures still owed; a failing state_dir is logged."""
        try:
            self.recovered()
        except OSError as exc:
            event("state_write_failed", logging.ERROR, path=str(exc.filename), error=str(exc))
