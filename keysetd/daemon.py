"""The long-running loop: triggers (file watch, interval, signals), backoff, reload, stop.

The pipeline does one cycle and returns; this module decides when the next one
runs. A watcher thread turns file events into a wake-up; signal handlers only
set flags, so SIGTERM lets the current commit finish before the loop exits.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from types import FrameType

from keysetd.atomic import clean_temp_files
from keysetd.config import Config, load_config
from keysetd.errors import ConfigError
from keysetd.log import event
from keysetd.pipeline import CycleResult, Pipeline
from keysetd.state import StateStore
from keysetd.strict import config_violations
from keysetd.watch import Watcher

__all__ = ["Daemon"]

FAILURE_BACKOFF_INITIAL = 1.0
FAILURE_BACKOFF_MAX = 60.0
#: Wake this long after a planned change (activation, end of retention) so it is due.
PLAN_SLACK = 0.01


class Daemon:
    """Runs cycles until stopped; owns the pipeline, the watcher and the signal flags."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.wake = threading.Event()
        self.stopping = False
        self.reload_requested = False
        self.failures = 0
        self.pipeline = Pipeline(config)
        #: Held for the daemon's life, across config reloads that rebuild the pipeline.
        self.lock = StateStore(config.state_dir)
        self.watcher = self._watcher()

    def _watcher(self) -> Watcher:
        """Watch the source files and the revocation list (``keysetd revoke`` writes it)."""
        paths = (*self.pipeline.source.watch_paths(), self.pipeline.state.revocations_path)
        return Watcher(paths, self.wake)

    # -- signals -------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
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
        event(
            "started",
            source=self.pipeline.source.describe(),
            outputs=",".join(o.name for o in self.pipeline.outputs),
        )
        force = False
        try:
            while not self.stopping:
                self.wake.clear()
                started = time.monotonic()
                result = self.pipeline.cycle(force=force)
                force = False
                if self.stopping:
                    break
                deadline = started + self._next_wait(result)
                while not self.stopping and not self.reload_requested:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.wake.wait(remaining):
                        break
                if self.reload_requested and not self.stopping:
                    self._reload()
                    force = True
        finally:
            self.watcher.stop()
            self.pipeline.close()
            self.lock.unlock()
            event("stopped")
        return 0
