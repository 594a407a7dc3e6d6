"""Run every benchmark and print one table: name, figure, target, verdict (ok / MISS).

Usage: ``.venv/bin/python benchmarks/run.py [--only NAME ...]``, NAME one of ``NAMES``
(``make bench``). Loopback and local files only; ~16 minutes in all, 13 of them the
``idle`` and ``sources`` windows (``BENCH_IDLE_SECONDS``, ``BENCH_SOURCE_SECONDS``). Exits 0
when every benchmark ran (MISS is a finding, not a failure; ``--fail-on-miss``
makes it one), 1 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so ``benchmarks`` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMES = (
    "propagation",
    "breakdown",
    "footprint",
    "peer",
    "scale",
    "idle",
    "sources",
    "verify",
    "nats",
    "fleet",
    "sealing",
)


def _benchmarks() -> dict[str, Callable[[], Sequence[object]]]:
    from benchmarks import (
        breakdown,
        fleet,
        footprint,
        idle,
        nats_rotation,
        peer,
        propagation,
        scale,
        sealing,
        sources,
        verify,
    )

    return {
        "propagation": propagation.run,
        "breakdown": breakdown.run,
        "footprint": footprint.run,
        "peer": peer.run,
        "scale": scale.run,
        "idle": idle.run,
        "sources": sources.run,
        "verify": verify.run,
        "nats": nats_rotation.run,
        "fleet": fleet.run,
        "sealing": sealing.run,
    }


def _table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    header = ("benchmark", "figure", "target", "verdict")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    rule = "  ".join("-" * w for w in widths)
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
        for r in (header, *rows)
    ]
    return "\n".join([lines[0], rule, *lines[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=NAMES, help="run just this one")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 on any MISS")
    args = parser.parse_args(argv)

    from benchmarks._common import Row, machine

    info = machine()
    print(
        f"keysetd benchmarks: {info['date']}, {info['nproc']} CPU ({info['cpu']}),"
        f" Python {info['python']}, Linux {info['kernel']}, load average {info['load']}",
        flush=True,
    )
    rows: list[tuple[str, str, str, str]] = []
    errors = 0
    for name, bench in _benchmarks().items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            results = bench()
        except Exception as exc:  # a benchmark that cannot run is reported, not fatal
            traceback.print_exc()
            errors += 1
            rows.append((f"{name}", f"{type(exc).__name__}: {exc}".splitlines()[0], "-", "ERROR"))
            continue
        print(f"  {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        for row in results:
            assert isinstance(row, Row)
            rows.append((f"{name}: {row.name}", row.figure, row.target, row.verdict))
    print(_table(rows))
    misses = sum(1 for row in rows if row[3] == "MISS")
    print(f"\n{misses} MISS, {errors} ERROR")
    if errors:
        return 1
    return 1 if misses and args.fail_on_miss else 0


if __name__ == "__main__":
    sys.exit(main())
