"""The long-running loop: triggers (file watch, interval, signals), backoff, reload, stop.

The pipeline does one cycle and returns; this module decides when the next one
runs (``keysetd.backoff.next_wait``), and when a failed notification is
delivered again (``Pipeline.retry_notifications``), source change or not.
A watcher thread turns file events into a wake-up; signal handlers only set
flags and write to the wake-up pipe (no locks: see ``keysetd.wake``), so
SIGTERM lets the current commit finish before the loop exits.
"""

from __future__ import annotations

import enum
import logging
import math
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from keysetd import cancel
from keysetd.atomic import clean_temp_files
from keysetd.backoff import next_wait, plan_wait
from keysetd.config import Config, load_config
from keysetd.errors import ConfigError
from keysetd.log import event
from keysetd.pipeline import CycleResult, Pipeline
from keysetd.sdnotify import notify as sd_notify
from keysetd.sdnotify import watchdog_period
from keysetd.state import StateStore
from keysetd.status import readiness, status_document, stuck_limit
from keysetd.strict import checked, config_violations
from keysetd.wake import Wake
from keysetd.watch import Watcher

if TYPE_CHECKING:
    from keysetd.metrics import Metrics
    from keysetd.server import StatusServer

__all__ = ["Daemon"]


def one_line(exc: ConfigError) -> str:
    """The error and every problem it lists (each names its key) on one log line."""
    head, *problems = str(exc).splitlines()
    return head + (": " + "; ".join(p.strip() for p in problems) if problems else "")


class Wakeup(enum.Enum):
    """Why the daemon stopped sleeping."""

    DEADLINE = "deadline"  # the refresh, a backoff or a planned change is due
    EVENT = "event"  # a file event, a revocation, a signal
    RETRY = "retry"  # owed notifications are due


class Daemon:
    """Runs cycles until stopped; owns the pipeline, the watcher and the signal flags."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.wake = Wake()
        self.stopping = False
        self.reload_requested = False
        self.failures = 0
        self.pipeline = Pipeline.open(config)
        #: Held for the daemon's life, across config reloads that rebuild the pipeline.
        self.lock = StateStore(config.state_dir)
        self.watcher = self._watcher()
        self.cycle_started: float | None = None
        self.ready_sent = False
        self.watchdog = watchdog_period()
        self.metrics: Metrics | None = None
        self.server: StatusServer | None = None
        if config.settings.server is not None:
            self._serve(config.settings.server.listen)

    def _serve(self, listen: str) -> None:
        """Build the HTTP listener and the metrics it serves (imported only when asked for)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        from keysetd.metrics import Metrics
        from keysetd.server import Endpoints, StatusServer

        self.metrics = Metrics()
        endpoints = Endpoints(
            alive=self.alive,
            ready=self.ready,
            status=lambda: status_document(self.config.state_dir),
            metrics=self.metrics.render,
            metrics_type=CONTENT_TYPE_LATEST,
        )
        self.server = StatusServer(listen, endpoints)

    # -- health ---------------------------------------------------------------

    def alive(self) -> tuple[bool, str]:
        """The loop is alive unless one cycle has run far longer than any cycle should."""
        started = self.cycle_started
        limit = stuck_limit(float(self.config.source.timeout))
        if started is not None and time.monotonic() - started > limit:
            return False, f"a cycle has been running for over {limit:g}s"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        doc = status_document(self.config.state_dir)
        return readiness(doc, self.config.policy.staleness_limit)

    def _report(self, result: CycleResult, duration: float) -> None:
        """Metrics, and systemd: READY=1 once outputs exist, then a STATUS= line per cycle."""
        if self.metrics is not None:
            self.metrics.observe(result, duration, self.pipeline.status)
        published = self.pipeline.published
        if published is not None:
            line = f"STATUS=publishing {published.fingerprint[:12]}, active {published.active_kid}"
        else:
            line = "STATUS=nothing published yet"
        if not result.ok:
            line += f"; last cycle failed: {(result.error or '')[:200]}"
        if published is not None and not self.ready_sent:
            sd_notify("READY=1", line)
            self.ready_sent = True
        else:
            sd_notify(line)

    def _watcher(self) -> Watcher:
        """Watch the source files and the files ``keysetd revoke`` and ``forget`` write."""
        state = self.pipeline.state
        paths = (*self.pipeline.source.watch_paths(), state.revocations_path, state.forgets_path)
        return Watcher(paths, self.wake)

    # -- signals -------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        cancel.cancel_all()  # a source fetch in flight ends now, not at its timeout (takes no lock)
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- loop ----------------------------------------------------------------

    def _waits(self, result: CycleResult) -> tuple[float, float | None]:
        """(seconds until the source is fetched again, until a planned change is due or None)."""
        if not result.ok:
            self.failures += 1
        elif result.fetched:  # a re-plan that worked says nothing of the source
            self.failures = 0
        refresh = float(self.config.source.refresh_interval)
        now = time.time()
        # A source that fails to answer must not hold a due activation or end of retention
        # back: only a failing commit of the change itself backs the change off.
        commit_failures = 0 if result.stage == "fetch" else self.failures
        return (
            next_wait(self.failures, refresh, None, now),
            plan_wait(commit_failures, result.next_change_at, now),
        )

    def _next_wait(self, result: CycleResult) -> float:
        """Seconds until the next cycle: refresh interval, failure backoff, or a planned change."""
        fetch, planned = self._waits(result)
        return fetch if planned is None else min(fetch, planned)

    def _retry_in(self) -> float | None:
        """Seconds until the owed notifications are due again; None when none are owed."""
        at = self.pipeline.backlog.retry_at if self.pipeline.backlog else None
        return None if at is None else at - time.time()

    def _retry_notifications(self) -> None:
        """Deliver the owed notifications; a retry that hangs shows on /healthz like a cycle."""
        self.cycle_started = time.monotonic()
        failures = self.pipeline.retry_notifications()
        self.cycle_started = None
        if self.metrics is not None:
            for failure in failures:
                self.metrics.notify_errors.labels(failure.notifier).inc()

    def _refuse_reload(self, error: str, problems: tuple[str, ...] = ()) -> None:
        event("reload_refused", logging.ERROR, error=error, problems=list(problems) or None)
        self.pipeline.record_reload_refused(error)

    def _reload(self) -> None:
        """Re-read the config; a bad one is refused (named in the log and status), the old stays."""
        self.reload_requested = False
        try:
            new = checked(load_config(self.config.path))
        except ConfigError as exc:
            self._refuse_reload(one_line(exc), exc.problems)
            return
        if new.state_dir != self.config.state_dir:
            self._refuse_reload("state_dir cannot change on reload; restart keysetd")
            return
        old_pipeline, old_watcher = self.pipeline, self.watcher
        try:
            # Owed notifications carry over to the notifiers of the same name.
            pipeline = Pipeline.open(new, backlog=old_pipeline.backlog, fleet=old_pipeline.fleet)
        except ConfigError as exc:  # e.g. [rotation] on a source keysetd cannot write
            self._refuse_reload(one_line(exc), exc.problems)
            return
        self.config, self.pipeline = new, pipeline
        self.pipeline.backlog.keep_only(n.name for n in self.pipeline.notifiers)
        self.watcher = self._watcher()
        old_watcher.stop()
        old_pipeline.close(keep_fleet=pipeline.fleet is old_pipeline.fleet)
        self.watcher.start()
        event("config_reloaded", path=str(new.path))

    def prepare(self) -> None:
        """Lock the state dir and clean temp files a crash left next to the outputs."""
        self.lock.lock()
        for output in self.pipeline.outputs:
            path = output.config.path
            clean_temp_files(path if path.is_dir() else path.parent)

    def _sleep(self, deadline: float) -> Wakeup:
        """Wait until a cycle is due (the deadline, a wake-up or a signal) or a notify retry."""
        while not self.stopping and not self.reload_requested:
            if self.watchdog is not None:
                sd_notify("WATCHDOG=1")
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # a file event that came meanwhile still counts as one
                return Wakeup.EVENT if self.wake.wait(0) else Wakeup.DEADLINE
            retry_in = self._retry_in()
            if retry_in is not None and retry_in <= 0:
                return Wakeup.RETRY
            step = min(remaining, self.watchdog or remaining)
            if retry_in is not None:
                step = min(step, retry_in)
            if self.wake.wait(step):
                return Wakeup.EVENT
        return Wakeup.EVENT

    def run(self) -> int:
        """Cycle until SIGTERM/SIGINT; returns the exit code."""
        self.prepare()
        self.install_signal_handlers()
        for violation in config_violations(self.config):
            event("strict_mode_warning", logging.WARNING, rule=violation)
        self.watcher.start()
        if self.server is not None:
            self.server.start()
        event(
            "started",
            source=self.pipeline.source.describe(),
            outputs=",".join(o.name for o in self.pipeline.outputs),
        )
        force, fetch, wakeup = False, True, Wakeup.EVENT
        fetch_at = plan_at = 0.0
        try:
            while not self.stopping:
                if wakeup is not Wakeup.RETRY:
                    if fetch:  # a re-plan reads no file: a pending wake-up waits for a fetch
                        self.wake.clear()
                    started = self.cycle_started = time.monotonic()
                    result = self.pipeline.cycle(force=force, fetch=fetch)
                    self.cycle_started = None
                    self._report(result, time.monotonic() - started)
                    force = False
                    fetch_in, plan_in = self._waits(result)
                    if fetch or not result.ok:  # a failed re-plan backs off like any failure
                        fetch_at = started + fetch_in
                    plan_at = math.inf if plan_in is None else time.monotonic() + plan_in
                else:
                    self._retry_notifications()
                if self.stopping:
                    break
                wakeup = self._sleep(min(fetch_at, plan_at))
                # Woken only because a planned change came due: re-plan, no fetch (the
                # source was read moments ago; a KMS is not asked twice per rotation).
                fetch = result.fetch_next or not (wakeup is Wakeup.DEADLINE and plan_at < fetch_at)
                if self.reload_requested and not self.stopping:
                    self._reload()
                    force, fetch, wakeup = True, True, Wakeup.EVENT
        finally:
            sd_notify("STOPPING=1")
            if self.server is not None:
                self.server.stop()
            self.watcher.stop()
            self.pipeline.close()
            self.lock.unlock()
            event("stopped")
        return 0
