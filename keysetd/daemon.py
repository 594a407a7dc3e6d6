"""The long-running loop: triggers (file watch, interval, signals), backoff, reload, stop.

The pipeline does one cycle and returns; this module decides when the next one
runs. A watcher thread turns file events into a wake-up; signal handlers only
set flags and write to the wake-up pipe (no locks: see ``keysetd.wake``), so
SIGTERM lets the current commit finish before the loop exits.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from keysetd import cancel
from keysetd.atomic import clean_temp_files
from keysetd.config import Config, load_config
from keysetd.errors import ConfigError
from keysetd.log import event
from keysetd.pipeline import CycleResult, Pipeline
from keysetd.sdnotify import notify as sd_notify
from keysetd.sdnotify import watchdog_period
from keysetd.state import StateStore
from keysetd.status import readiness, status_document
from keysetd.strict import config_violations
from keysetd.wake import Wake
from keysetd.watch import Watcher

if TYPE_CHECKING:
    from keysetd.metrics import Metrics
    from keysetd.server import StatusServer

__all__ = ["Daemon"]

FAILURE_BACKOFF_INITIAL = 1.0
FAILURE_BACKOFF_MAX = 60.0
#: /healthz fails when one cycle runs longer than this (or 3x the source timeout).
STUCK_CYCLE_MIN = 120.0
#: Wake this long after a planned change (activation, end of retention) so it is due.
PLAN_SLACK = 0.01


class Daemon:
    """Runs cycles until stopped; owns the pipeline, the watcher and the signal flags."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.wake = Wake()
        self.stopping = False
        self.reload_requested = False
        self.failures = 0
        self.pipeline = Pipeline(config)
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
        limit = max(STUCK_CYCLE_MIN, 3 * float(self.config.source.timeout))
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
        """Watch the source files and the revocation list (``keysetd revoke`` writes it)."""
        paths = (*self.pipeline.source.watch_paths(), self.pipeline.state.revocations_path)
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

    def _next_wait(self, result: CycleResult) -> float:
        """Seconds until the next cycle: refresh interval, failure backoff, or a planned change."""
        wait = float(self.config.source.refresh_interval)
        if result.ok:
            self.failures = 0
        else:
            self.failures += 1
            backoff = min(FAILURE_BACKOFF_MAX, FAILURE_BACKOFF_INITIAL * 2.0 ** (self.failures - 1))
            wait = min(wait, backoff * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
        if result.next_change_at is not None:
            wait = min(wait, max(0.0, result.next_change_at - time.time()) + PLAN_SLACK)
        return wait

    def _reload(self) -> None:
        """Re-read the config; a bad one is refused and the running one stays."""
        self.reload_requested = False
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            event("reload_refused", logging.ERROR, error=str(exc))
            return
        if new.state_dir != self.config.state_dir:
            event(
                "reload_refused",
                logging.ERROR,
                error="state_dir cannot change on reload; restart keysetd",
            )
            return
        old_pipeline, old_watcher = self.pipeline, self.watcher
        self.config = new
        self.pipeline = Pipeline(new)
        self.watcher = self._watcher()
        old_watcher.stop()
        old_pipeline.close()
        self.watcher.start()
        event("config_reloaded", path=str(new.path))

    def prepare(self) -> None:
        """Lock the state dir and clean temp files a crash left next to the outputs."""
        self.lock.lock()
        for output in self.pipeline.outputs:
            path = output.config.path
            clean_temp_files(path if path.is_dir() else path.parent)

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
        force = False
        try:
            while not self.stopping:
                self.wake.clear()
                started = self.cycle_started = time.monotonic()
                result = self.pipeline.cycle(force=force)
                self.cycle_started = None
                self._report(result, time.monotonic() - started)
                force = False
                if self.stopping:
                    break
                deadline = started + self._next_wait(result)
                while not self.stopping and not self.reload_requested:
                    if self.watchdog is not None:
                        sd_notify("WATCHDOG=1")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.wake.wait(min(remaining, self.watchdog or remaining)):
                        break
                if self.reload_requested and not self.stopping:
                    self._reload()
                    force = True
        finally:
            sd_notify("STOPPING=1")
            if self.server is not None:
                self.server.stop()
            self.watcher.stop()
            self.pipeline.close()
            self.lock.unlock()
            event("stopped")
        return 0
