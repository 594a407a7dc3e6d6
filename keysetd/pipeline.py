"""One cycle: fetch -> decode -> validate -> plan -> render -> commit -> notify -> record.

Never sleeps and never loops: the daemon decides when a cycle runs. A cycle
that fails at any stage leaves every output as it was; the error is recorded
and returned, and the last-known-good stays in ``state_dir``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keysetd.commit import Rendered, commit_output, render_outputs
from keysetd.config import Config
from keysetd.dispatch import interested, run_notifiers
from keysetd.errors import InvalidKeyset, KeysetdError, OutputError, SourceError
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.plan import Plan, plan
from keysetd.plugin import Notifier, NotifyEvent, Output, Role, Source
from keysetd.state import KeyRecord, LastKnownGood, StateStore, observe
from keysetd.validate import check

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


class Pipeline:
    """Holds the built plugins and the in-memory view of what was last published."""

    def __init__(self, config: Config, *, clock: Clock = time.time) -> None:
        self.config = config
        self.clock = clock
        self.state = StateStore(config.state_dir)
        self.state.ensure()
        self.source: Source = config.build_source()
        self.outputs: tuple[Output, ...] = config.build_outputs()
        self.notifiers: tuple[Notifier, ...] = config.build_notifiers()
        self.history: dict[str, KeyRecord] = self.state.load_history()
        self._last_data: bytes | None = None
        self._published: Plan | None = None
        self._rendered: list[Rendered] = []
        self._status: dict[str, Any] = self.state.load_status() or {}

    @property
    def needs_active(self) -> bool:
        return any(o.role is Role.SIGNER for o in self.outputs)

    def close(self) -> None:
        self.source.close()

    # -- the cycle ---------------------------------------------------------

    def cycle(self, *, force: bool = False) -> CycleResult:
        """Run one cycle for the current source snapshot."""
        now = self.clock()
        try:
            snapshot = self.source.fetch()
        except SourceError as exc:
            return self._failed(exc, "fetch", now)
        if not force and self._published is not None and snapshot.data == self._last_data:
            return self._refresh(now)
        try:
            keyset = self._validate(snapshot.data, snapshot.format, snapshot.origin)
            result = self._publish(keyset)
        except KeysetdError as exc:
            return self._failed(
                exc, "validate" if isinstance(exc, InvalidKeyset) else "commit", now
            )
        fmt = snapshot.format or self.config.source.format
        self.state.save_lkg(
            LastKnownGood(snapshot.data, fmt, snapshot.origin, now, result.fingerprint or "")
        )
        self._last_data = snapshot.data
        self._record_success(now, result=result)
        return result

    def _validate(self, data: bytes, fmt: str | None, origin: str) -> Keyset:
        known = {kid: rec.material for kid, rec in self.history.items()}
        return check(
            data,
            fmt or self.config.source.format,
            hmac_alg=self.config.policy.hmac_alg,
            where=origin,
            history=known,
            require_active=self.needs_active,
        )

    def _refresh(self, now: float) -> CycleResult:
        """Same bytes as last time: restore any output changed behind our back, nothing more."""
        assert self._published is not None
        try:
            result = self._commit_and_notify(self._published, self._rendered)
        except KeysetdError as exc:
            return self._failed(exc, "commit", now)
        self._record_success(now, result=result)
        return CycleResult(
            ok=True,
            changed=result.changed,
            fingerprint=result.fingerprint,
            unchanged_source=True,
            notify_errors=result.notify_errors,
        )

    def _publish(self, keyset: Keyset) -> CycleResult:
        """Plan and render everything, record the kids, then commit and notify."""
        planned = plan(keyset)
        rendered = render_outputs(self.outputs, planned)
        self._remember(observe(self.history, keyset, self.clock()))
        result = self._commit_and_notify(planned, rendered)
        self._published, self._rendered = planned, rendered
        if result.changed:
            event(
                "published",
                fingerprint=result.fingerprint,
                active_kid=planned.active_kid,
                kids=",".join(planned.published_kids),
                outputs=",".join(result.changed),
            )
        return result

    def _remember(self, history: dict[str, KeyRecord]) -> None:
        """Persist history when a record changed; unchanged cycles write nothing."""
        if history != self.history:
            self.state.save_history(history)
            self.history = history

    def _commit_and_notify(self, planned: Plan, rendered: list[Rendered]) -> CycleResult:
        """Commit verifier outputs, run their notifiers, then signer outputs and the rest."""
        what = NotifyEvent(planned.fingerprint, planned.active_kid, ())
        changed: list[str] = []
        failures: list[str] = []
        phases = [
            [r for r in rendered if r.output.role is Role.VERIFIER],
            [r for r in rendered if r.output.role is Role.SIGNER],
        ]
        pending = list(self.notifiers)
        for index, phase in enumerate(phases):
            changed += self._commit_phase(phase)
            later = {r.output.name for p in phases[index + 1 :] for r in p}
            due = [n for n in pending if interested(n, changed) and not _follows_any(n, later)]
            if due:
                event_now = NotifyEvent(what.fingerprint, what.active_kid, tuple(changed))
                failures += [str(e) for e in run_notifiers(due, event_now)]
                pending = [n for n in pending if n not in due]
        due = [n for n in pending if interested(n, changed)]
        if due:
            failures += [
                str(e)
                for e in run_notifiers(
                    due, NotifyEvent(what.fingerprint, what.active_kid, tuple(changed))
                )
            ]
        return CycleResult(
            ok=True,
            changed=tuple(changed),
            fingerprint=what.fingerprint,
            notify_errors=tuple(failures),
        )

    def _commit_phase(self, phase: Sequence[Rendered]) -> list[str]:
        changed = []
        for item in phase:
            if commit_output(item):
                changed.append(item.output.name)
        return changed

    # -- failure and last-known-good ----------------------------------------

    def _failed(self, exc: KeysetdError, stage: str, now: float) -> CycleResult:
        event(
            "cycle_failed",
            logging.ERROR,
            stage=stage,
            source=self.source.describe(),
            error=str(exc),
        )
        from_lkg = False
        if self._published is None and not isinstance(exc, OutputError):
            from_lkg = self._republish_lkg()
        self._record_failure(now, str(exc))
        return CycleResult(
            ok=False, error=str(exc), from_lkg=from_lkg, fingerprint=self._status.get("fingerprint")
        )

    def _republish_lkg(self) -> bool:
        """After a restart with a failing source, publish the last-known-good again."""
        lkg = self.state.load_lkg()
        if lkg is None:
            return False
        try:
            keyset = self._validate(lkg.data, lkg.format, "last-known-good")
            result = self._publish(keyset)
        except KeysetdError as exc:
            event("lkg_unusable", logging.ERROR, error=str(exc))
            return False
        self._status["lkg_fetched_at"] = lkg.fetched_at
        self._status["fingerprint"] = result.fingerprint
        event(
            "published_last_known_good",
            fingerprint=lkg.fingerprint,
            outputs=",".join(result.changed),
        )
        return True

    # -- status ----------------------------------------------------------------

    def _base_status(self) -> dict[str, Any]:
        status = dict(self._status)
        published = self._published
        if published is not None:
            status["active_kid"] = published.active_kid
            status["published_kids"] = list(published.published_kids)
            status["fingerprint"] = published.fingerprint
        status["source"] = self.source.describe()
        status["outputs"] = {
            o.name: {"path": str(o.config.path), "role": o.role.value} for o in self.outputs
        }
        return status

    def _record_success(self, now: float, *, result: CycleResult) -> None:
        status = self._base_status()
        status.update(last_error=None, last_success_at=now, lkg_fetched_at=now)
        status["notify_errors"] = list(result.notify_errors)
        if result.changed:
            status["last_change_at"] = now
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


def _follows_any(notifier: Notifier, names: set[str]) -> bool:
    """Whether the notifier also follows an output committed in a later phase."""
    wanted = notifier.config.outputs
    return bool(names) if wanted is None else bool(names.intersection(wanted))
