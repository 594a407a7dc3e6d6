"""Idle: CPU and RSS of a ``keysetd run`` with the HTTP server on and nothing changing, and
the time one ``/metrics`` scrape takes.

The window defaults to 600 s (the issue's ten minutes); ``BENCH_IDLE_SECONDS``
shortens it for a quick look. CPU comes from /proc/<pid>/stat (utime + stime).
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks._common import (
    Row,
    Workspace,
    document,
    free_port,
    key_pool,
    percentile,
    proc_status,
    wait_for,
)

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "600"))
CPU_TARGET_PERCENT = 0.1
SCRAPES = 200


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def run(seconds: float = IDLE_SECONDS) -> list[Row]:
    pool = key_pool(("EC", "OKP"), prefix="idle")
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-idle-") as tmp:
        ws = Workspace(Path(tmp))
        ws.source.write_bytes(document([(k, True) for k in pool], pool[0].kid))
        ws.write_config(
            outputs=[
                {"type": "jwks", "path": str(ws.out / "jwks.json")},
                {"type": "keyset", "path": str(ws.out / "keyset.json")},
            ]
        )
        port = free_port()
        with ws.config_path.open("a") as config:
            config.write(f'\n[server]\nlisten = "127.0.0.1:{port}"\n')
        base = f"http://127.0.0.1:{port}"
        proc = ws.start()
        try:
            wait_for(lambda: _ready(base + "/readyz"), 10, "ready")
            _get(base + "/metrics")  # warm
            before = _cpu_seconds(proc.pid)
            time.sleep(seconds)
            cpu = _cpu_seconds(proc.pid) - before
            rss = proc_status(proc.pid)["VmRSS"] / 1024
            scrapes = []
            for _ in range(SCRAPES):
                started = time.perf_counter()
                _get(base + "/metrics")
                scrapes.append(time.perf_counter() - started)
        finally:
            ws.stop(proc)
    percent = 100 * cpu / seconds
    return [
        Row(
            f"idle CPU over {seconds:.0f} s (server on)",
            f"{percent:.3f}% of a core",
            f"< {CPU_TARGET_PERCENT}%",
            percent < CPU_TARGET_PERCENT,
        ),
        Row("idle RSS at the end", f"{rss:.1f} MB"),
        Row(f"/metrics scrape p50 ({SCRAPES} scrapes)", f"{percentile(scrapes, 50) * 1e3:.2f} ms"),
        Row(f"/metrics scrape p99 ({SCRAPES} scrapes)", f"{percentile(scrapes, 99) * 1e3:.2f} ms"),
    ]


def _ready(url: str) -> bool:
    try:
        return _get(url) == b"ready\n"
    except OSError:
        return False


if __name__ == "__main__":
    for row in run():
        print(f"{row.name}: {row.figure} (target {row.target}) {row.verdict}")
