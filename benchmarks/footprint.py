"""Footprint: start-to-first-commit time and resident memory of ``keysetd run``.

Each start gets a fresh workspace (empty state dir, no outputs) with a file
source holding three keys (EC, OKP, RSA; private members) and four outputs:
jwks, a second jwks, pem and keyset. The time runs from just before ``Popen``
until every output exists (atomic writes: existing means complete); VmRSS and
VmHWM are read from /proc about one second after that.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    Row,
    Workspace,
    document,
    key_pool,
    proc_status,
    wait_for,
)

__all__ = ["run"]

SETTLE_S = 1.0
START_TIMEOUT = 20.0


def _outputs_present(out: Path) -> bool:
    pem = out / "pem"
    return (
        (out / "jwks.json").exists()
        and (out / "gateway.json").exists()
        and (out / "keyset.json").exists()
        and pem.is_dir()
        and any(p.suffix == ".pem" and p.exists() for p in pem.iterdir())  # links into ..data
    )


def start_once(data: bytes) -> tuple[float, int, int]:
    """(seconds to first commit, VmRSS kB, VmHWM kB) of one fresh start."""
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-fp-") as tmp:
        ws = Workspace(Path(tmp))
        ws.write_config(outputs=ws.four_outputs())
        ws.source.write_bytes(data)
        started = time.perf_counter()
        proc = ws.start()
        try:
            try:
                wait_for(lambda: _outputs_present(ws.out), START_TIMEOUT, "the first commit")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; daemon log:\n{ws.log_tail()}") from None
            elapsed = time.perf_counter() - started
            time.sleep(SETTLE_S)  # the measurement point: ~1 s after the first commit
            if proc.poll() is not None:
                raise RuntimeError(f"keysetd exited with {proc.returncode}:\n{ws.log_tail()}")
            mem = proc_status(proc.pid)
        finally:
            Workspace.stop(proc)
    return elapsed, mem["VmRSS"], mem["VmHWM"]


def run(starts: int = 5) -> list[Row]:
    keys = key_pool(("EC", "OKP", "RSA"), prefix="fp")
    data = document([(k, True) for k in keys], keys[0].kid)
    results = [start_once(data) for _ in range(starts)]
    first = statistics.median(r[0] for r in results)
    rss = statistics.median(r[1] for r in results) / 1024
    hwm = max(r[2] for r in results) / 1024
    return [
        # The targets are relative to OpenBao Agent's figures: see ``peer.py``.
        Row(f"start to first commit (median of {starts})", f"{first * 1000:.0f} ms"),
        Row("VmRSS 1 s after first commit (median)", f"{rss:.1f} MB"),
        Row("VmHWM (max)", f"{hwm:.1f} MB"),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:45} {row.figure:>12}  {row.target:>12}  {row.verdict}")
