"""Scale: decode + validate + render, and a whole ``Pipeline.cycle()``, for 10 to 10,000 keys.

Keysets mix EC P-256, RSA-2048 and Ed25519 keys in turn. Generating thousands of
RSA keys is far too slow, so a small pool per type is reused under distinct kids
(duplicate material under different kids is allowed). Every key is public except
the active one (EC, with private members), as in a large verifier keyset: see
the per-key rows for what private members cost.

keysetd refuses documents of more than ``keysetd.formats.jwks.MAX_KEYS`` keys
("too-large"). Sizes above that are reported as refused, then measured with the
limit lifted in this process only, so the growth of the code path stays visible.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import keysetd.formats.jwks as jwks_format
from benchmarks._common import Row, Workspace, document, key_pool
from keysetd.config import load_config
from keysetd.errors import InvalidKeyset
from keysetd.formats.jwks import render_jwks, render_keyset
from keysetd.model import Key
from keysetd.pipeline import Pipeline
from keysetd.validate import check, forget_verdicts

__all__ = ["run"]

SIZES = (10, 100, 1_000, 10_000)
TARGET_10K_S = 2.0
#: "Roughly linear": 10x the keys costs at most this many times the time.
TARGET_RATIO = 15.0
TARGET_REFRESH_MS = 5.0
REFRESH_SIZE = 1_000
POOL = ("EC", "RSA", "OKP") * 3


def _keyset(pool: list[Key], size: int) -> bytes:
    """``size`` keys cycling through the pool under distinct kids; the first (EC) is active."""
    keys: list[tuple[Key, bool]] = []
    for index in range(size):
        base = pool[index % len(pool)]
        kid = f"scale-{index:05d}"
        keys.append((Key(kid, base.kty, base.alg, base.public, base.private), index == 0))
    return document(keys, keys[0][0].kid)


def _repeats(size: int) -> int:
    return 1 if size >= 10_000 else 3 if size >= 1_000 else 10


def _best(func: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed one)."""
    times = []
    for _ in range(repeats):
        forget_verdicts()  # first-sight cost: keysetd memoises keys it validated before
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


@contextmanager
def _key_limit(limit: int) -> Iterator[None]:
    saved = jwks_format.MAX_KEYS
    jwks_format.MAX_KEYS = limit
    try:
        yield
    finally:
        jwks_format.MAX_KEYS = saved


def _check_render(data: bytes) -> None:
    keyset = check(data, require_active=True)
    render_jwks(keyset)
    render_keyset(keyset)


def _pipeline(root: Path, data: bytes) -> Pipeline:
    ws = Workspace(root)
    ws.source.write_bytes(data)
    ws.write_config(
        outputs=[
            {"type": "jwks", "path": str(ws.out / "jwks.json")},
            {"type": "keyset", "path": str(ws.out / "keyset.json")},
        ]
    )
    return Pipeline.open(load_config(ws.config_path))


def _first_cycle(data: bytes, repeats: int) -> float:
    """Best wall time of a first cycle (fresh state and outputs) over ``data``."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="keysetd-bench-scale-") as tmp:
            pipeline = _pipeline(Path(tmp), data)
            forget_verdicts()
            started = time.perf_counter()
            result = pipeline.cycle()
            times.append(time.perf_counter() - started)
            pipeline.close()
            if not result.ok:
                raise RuntimeError(f"cycle failed: {result.error}")
    return min(times)


def _refresh_cpu(data: bytes, repeats: int = 20) -> float:
    """Median CPU seconds of a cycle whose source bytes did not change."""
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-refresh-") as tmp:
        pipeline = _pipeline(Path(tmp), data)
        if not pipeline.cycle().ok:
            raise RuntimeError("first cycle failed")
        times = []
        for _ in range(repeats):
            started = time.process_time()
            result = pipeline.cycle()
            times.append(time.process_time() - started)
            if not (result.ok and result.unchanged_source):
                raise RuntimeError("the refresh did not see an unchanged source")
        pipeline.close()
    return statistics.median(times)


def _per_kind(pool: list[Key]) -> list[Row]:
    """What check() costs for a one-key keyset of each kind, public and private."""
    rows = []
    for kty in ("EC", "OKP", "RSA"):
        key = next(k for k in pool if k.kty == kty)
        for private in (False, True):
            data = document([(key, private)], key.kid)
            cost = _best(partial(check, data), 5)
            what = "private" if private else "public"
            rows.append(Row(f"check(): one {key.alg} key, {what}", f"{cost * 1e3:.2f} ms"))
    return rows


def run(sizes: tuple[int, ...] = SIZES) -> list[Row]:
    pool = key_pool(POOL, prefix="pool")
    rows: list[Row] = []
    check_times: dict[int, float] = {}
    cycle_times: dict[int, float] = {}
    for size in sizes:
        data = _keyset(pool, size)
        label = f"{size:,} keys"
        if size > jwks_format.MAX_KEYS:
            try:
                check(data)
            except InvalidKeyset as exc:
                rules = ",".join(sorted({p.rule for p in exc.problems}))
                rows.append(Row(f"check(): {label} as shipped", f"refused ({rules})"))
        lifted = " (limit lifted)" if size > jwks_format.MAX_KEYS else ""
        with _key_limit(max(size, jwks_format.MAX_KEYS)):
            check_times[size] = _best(partial(_check_render, data), _repeats(size))
            cycle_times[size] = _first_cycle(data, _repeats(size))
        for name, times in (("check+render", check_times), ("Pipeline.cycle()", cycle_times)):
            spent = times[size]
            big = size == 10_000
            rows.append(
                Row(
                    f"{name}: {label}{lifted}",
                    f"{spent * 1e3:.1f} ms, {spent / size * 1e6:.0f} us/key",
                    f"<= {TARGET_10K_S:g} s" if big else "-",
                    spent <= TARGET_10K_S if big else None,
                )
            )
    if 1_000 in sizes and 10_000 in sizes:
        for name, times in (("check+render", check_times), ("Pipeline.cycle()", cycle_times)):
            ratio = times[10_000] / times[1_000]
            rows.append(
                Row(
                    f"{name}: time 10,000 / 1,000 keys",
                    f"{ratio:.1f}x",
                    f"<= {TARGET_RATIO:g}x (linear 10x)",
                    ratio <= TARGET_RATIO,
                )
            )
    refresh = _refresh_cpu(_keyset(pool, REFRESH_SIZE))
    rows.append(
        Row(
            f"unchanged refresh, {REFRESH_SIZE:,} keys (CPU)",
            f"{refresh * 1e3:.2f} ms",
            f"<= {TARGET_REFRESH_MS:g} ms",
            refresh * 1e3 <= TARGET_REFRESH_MS,
        )
    )
    rows += _per_kind(pool)
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:50} {row.figure:>24}  {row.target:>18}  {row.verdict}")
