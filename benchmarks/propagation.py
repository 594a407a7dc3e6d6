"""Propagation: atomic replace of the source file -> every output committed and a notifier started.

A real ``keysetd run`` with a file source, four outputs (jwks, a second jwks, pem,
keyset) and a command notifier that appends ``<wall-clock ns> <active kid>`` to a
stamp file when it starts. The notifier runs after every output is committed
(verifiers, then signers), so the stamp time bounds the whole publish. Latency =
stamp - ``time.time_ns()`` taken just before ``os.replace``.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from functools import partial
from pathlib import Path

from benchmarks._common import Row, Workspace, document, key_pool, percentile, wait_for
from keysetd.model import Key

__all__ = ["run"]

TARGET_P99_MS = 15.0
#: Rotation pool: set i is {k(i-1), k(i)} with k(i) active; a kid always has the same material.
POOL = ("EC",) * 8
WARMUP = 5
#: Deadline for one change to land; far above any plausible latency.
LAND_TIMEOUT = 10.0


class _Stamps:
    """Reads the lines the notifier appends: ``<ns> <active kid>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""

    def next_for(self, kid: str) -> int | None:
        """The stamp of the first new line naming ``kid``, or None when none arrived yet."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return None
        self.offset += len(chunk)
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            stamp, _, named = line.decode().partition(" ")
            if named == kid:
                return int(stamp)
        return None


def _sets(pool: list[Key], count: int) -> list[tuple[str, bytes]]:
    """(active kid, document) for sets 0..count-1."""
    out = []
    for i in range(count):
        old, new = pool[(i - 1) % len(pool)], pool[i % len(pool)]
        out.append((new.kid, document([(old, True), (new, True)], new.kid)))
    return out


def _status_is(ws: Workspace, kid: str) -> bool:
    """Whether the daemon recorded ``kid`` as active: the cycle is over."""
    try:
        doc = json.loads((ws.state / "status.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("active_kid") == kid


def measure(changes: int = 200) -> list[float]:
    """Latencies in ms of ``changes`` source replacements (after ``WARMUP`` unmeasured ones)."""
    pool = key_pool(POOL, prefix="prop")
    sets = _sets(pool, changes + WARMUP + 1)
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-prop-") as tmp:
        ws = Workspace(Path(tmp))
        stamp_file = ws.root / "stamps"
        script = f'exec /bin/date "+%s%N $KEYSETD_ACTIVE_KID" >> {shlex.quote(str(stamp_file))}'
        ws.write_config(
            outputs=ws.four_outputs(),
            notify=[{"type": "command", "argv": ["/bin/sh", "-c", script], "timeout": "5s"}],
        )
        stamps = _Stamps(stamp_file)
        ws.source.write_bytes(sets[0][1])
        proc = ws.start()
        latencies: list[float] = []
        try:
            wait_for(lambda: stamps.next_for(sets[0][0]), LAND_TIMEOUT, "the first publish")
            for index, (kid, data) in enumerate(sets[1:]):
                ws.stage(data)
                started = ws.publish()
                try:
                    landed = wait_for(partial(stamps.next_for, kid), LAND_TIMEOUT, f"kid {kid}")
                except TimeoutError as exc:
                    raise TimeoutError(f"{exc}; daemon log:\n{ws.log_tail()}") from None
                # Let the cycle finish (state, status) before the next change.
                wait_for(partial(_status_is, ws, kid), LAND_TIMEOUT, "the status file")
                jwks = json.loads((ws.out / "jwks.json").read_bytes())
                if jwks["keys"][0]["kid"] != kid:
                    raise AssertionError(f"jwks output does not lead with {kid}")
                if index >= WARMUP:
                    latencies.append((landed - started) / 1e6)
                time.sleep(0.01)  # pacing: let late watch events of this change drain
        finally:
            Workspace.stop(proc)
    return latencies


def run(changes: int = 200) -> list[Row]:
    latencies = measure(changes)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    n = len(latencies)
    return [
        Row(f"replace -> committed + notified, p50 ({n} changes)", f"{p50:.1f} ms"),
        Row(
            f"replace -> committed + notified, p99 ({n} changes)",
            f"{p99:.1f} ms",
            f"<= {TARGET_P99_MS:g} ms",
            p99 <= TARGET_P99_MS,
        ),
        Row("replace -> committed + notified, max", f"{max(latencies):.1f} ms"),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:45} {row.figure:>12}  {row.target:>12}  {row.verdict}")
