"""Where a propagation's time goes: one publish cycle, in process, split by what it waits on.

The same workspace as ``propagation.py`` (file source; jwks, a second jwks, pem and
keyset outputs; a ``command`` notifier running ``/bin/sh``), but the cycle is driven
in process with ``Pipeline.cycle()`` so its parts can be timed: every ``os.fsync``
(count and time), every ``os.replace``, the notifier's process (spawn to exit), and
the log lines. "other" is the rest: fetch, decode, validate, plan, render, state
files. The file watch and the daemon's wake-up are not in here (propagation's p50
minus this cycle's p50 is about their cost).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._common import Row, Workspace, key_pool, percentile
from benchmarks.propagation import POOL, WARMUP, _sets

__all__ = ["run"]


class _Clock:
    """Time spent inside the wrapped calls during one cycle, by category."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, category: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.spent[category] += time.perf_counter() - started
                self.calls[category] += 1

        return timed

    def reset(self) -> None:
        self.spent.clear()
        self.calls.clear()


@contextmanager
def _instrumented(clock: _Clock) -> Iterator[None]:
    """os.fsync, os.replace, the notifier's process and log emission, timed."""
    saved_fsync, saved_replace = os.fsync, os.replace
    saved_communicate = subprocess.Popen.communicate
    saved_wait = subprocess.Popen.wait
    saved_init = subprocess.Popen.__init__
    saved_handle = logging.Logger.handle
    os.fsync = clock.wrap("fsync", saved_fsync)
    os.replace = clock.wrap("rename", saved_replace)
    subprocess.Popen.__init__ = clock.wrap("notifier", saved_init)  # type: ignore[method-assign]
    subprocess.Popen.communicate = clock.wrap("notifier", saved_communicate)  # type: ignore[method-assign]
    subprocess.Popen.wait = clock.wrap("notifier", saved_wait)  # type: ignore[method-assign]
    logging.Logger.handle = clock.wrap("logging", saved_handle)  # type: ignore[method-assign]
    try:
        yield
    finally:
        os.fsync, os.replace = saved_fsync, saved_replace
        subprocess.Popen.__init__ = saved_init  # type: ignore[method-assign]
        subprocess.Popen.communicate = saved_communicate  # type: ignore[method-assign]
        subprocess.Popen.wait = saved_wait  # type: ignore[method-assign]
        logging.Logger.handle = saved_handle  # type: ignore[method-assign]


def measure(changes: int = 200) -> tuple[list[float], dict[str, list[float]], dict[str, float]]:
    """Cycle times (ms), time per category per cycle (ms), and mean calls per cycle."""
    from keysetd.config import load_config
    from keysetd.log import configure, logger
    from keysetd.pipeline import Pipeline

    pool = key_pool(POOL, prefix="prop")
    sets = _sets(pool, changes + WARMUP + 1)
    totals: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    calls: dict[str, int] = defaultdict(int)
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-breakdown-") as tmp:
        ws = Workspace(Path(tmp))
        stamps = shlex.quote(str(ws.root / "stamps"))
        script = f'exec /bin/date "+%s%N $KEYSETD_ACTIVE_KID" >> {stamps}'
        ws.write_config(
            outputs=ws.four_outputs(),
            notify=[{"type": "command", "argv": ["/bin/sh", "-c", script], "timeout": "5s"}],
        )
        with (ws.root / "keysetd.log").open("a") as log_file:
            configure("json", "info")
            streams = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
            previous = [h.setStream(log_file) for h in streams]  # the workspace's log
            ws.source.write_bytes(sets[0][1])
            pipeline = Pipeline.open(load_config(ws.config_path))
            pipeline.cycle()
            clock = _Clock()
            with _instrumented(clock):
                for index, (_kid, data) in enumerate(sets[1:]):
                    ws.stage(data)
                    ws.publish()
                    clock.reset()
                    started = time.perf_counter()
                    result = pipeline.cycle()
                    elapsed = time.perf_counter() - started
                    if not result.ok:
                        raise RuntimeError(f"cycle failed: {result.error}")
                    if index < WARMUP:
                        continue
                    totals.append(elapsed * 1000)
                    for category in ("fsync", "rename", "notifier", "logging"):
                        parts[category].append(clock.spent.get(category, 0.0) * 1000)
                        calls[category] += clock.calls.get(category, 0)
                    parts["other"].append(elapsed * 1000 - sum(clock.spent.values()) * 1000)
            pipeline.close()
            for handler, stream in zip(streams, previous, strict=True):
                handler.setStream(stream)  # not left on a closed file for later benchmarks
    measured = len(totals)
    return totals, parts, {k: v / measured for k, v in calls.items()}


def run(changes: int = 200) -> list[Row]:
    totals, parts, calls = measure(changes)
    rows = [
        Row(
            f"one publish cycle in process, p50 / p99 ({len(totals)} changes)",
            f"{percentile(totals, 50):.1f} / {percentile(totals, 99):.1f} ms",
        )
    ]
    for category in ("fsync", "notifier", "rename", "logging", "other"):
        times = parts[category]
        count = f", {calls[category]:.1f} calls" if category in calls else ""
        rows.append(
            Row(
                f"  {category}: p50 / p99 per cycle{count}",
                f"{percentile(times, 50):.1f} / {percentile(times, 99):.1f} ms",
            )
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:55} {row.figure:>16}  {row.target:>8}  {row.verdict}")
