"""Soak: thousands of in-process cycles with changing keysets leak no memory, fd or thread.

Two pipelines (jwks + pem + keyset over EC keys, rgs + env over HMAC secrets)
take turns; each cycle changes the source to the next of a few documents, so
every cycle renders, commits, saves history and LKG, and appends audit lines.
``make test`` runs 800 cycles; ``make stress`` runs ``SOAK_CYCLES=20000``,
bounded by ``SOAK_BUDGET_SECONDS``. Growth is measured after a warm-up: RSS, fds and
threads from cycle 200, and the interpreter's live memory blocks over the second half
(caches fill in the first), which shows a leak of one object per cycle; RSS shows only
kilobytes per cycle.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest

from keysetd.audit_read import verify
from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from tests.conftest import Env
from tests.keys import jwk, jwks_doc

CYCLES = int(os.environ.get("SOAK_CYCLES", "800"))
BUDGET_SECONDS = float(os.environ.get("SOAK_BUDGET_SECONDS", "40" if CYCLES <= 2000 else "900"))
WARMUP = max(200, CYCLES // 10)
RSS_LIMIT_KB = 5 * 1024
#: Where the block count is taken, and how many more blocks per later cycle are a leak
#: (measured: ~0.2 per cycle from cycle 400 to 800, ~0.03 from 1,000 to 2,000).
BLOCKS_FROM = CYCLES // 2
BLOCKS_PER_CYCLE = 0.5


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def asym_pipeline(env: Env) -> tuple[Pipeline, list[bytes]]:
    keys = [jwk("ES256", f"a{i}") for i in range(3)] + [jwk("EdDSA", "ed")]
    docs = [jwks_doc(keys[i], keys[(i + 1) % 3], keys[3], active=keys[i]["kid"]) for i in range(3)]
    env.write_source(docs[0])
    env.config(outputs=env.outputs_with_pem())
    return Pipeline.open(load_config(env.config_path, environ={})), docs


def hmac_pipeline(env: Env) -> tuple[Pipeline, list[bytes]]:
    secrets_ = {f"h{i}": secrets.token_urlsafe(48) for i in range(3)}
    docs = [
        json.dumps(
            {"active_kid": f"h{i}", "keys": {f"h{j}": secrets_[f"h{j}"] for j in (i, (i + 1) % 3)}}
        ).encode()
        for i in range(3)
    ]
    env.write_source(docs[0])
    env.config(
        outputs=[
            {"type": "rgs", "path": str(env.out / "rgs.json")},
            {"type": "env", "path": str(env.out / "keys.env")},
        ]
    )
    return Pipeline.open(load_config(env.config_path, environ={})), docs


@pytest.mark.timeout(BUDGET_SECONDS + 120)
def test_soak_no_memory_fd_or_thread_growth(tmp_path: Path) -> None:
    envs = []
    for name in ("asym", "hmac"):
        (tmp_path / name).mkdir()
        envs.append(Env(tmp_path / name))
    lanes = [asym_pipeline(envs[0]), hmac_pipeline(envs[1])]
    deadline = time.monotonic() + BUDGET_SECONDS
    baseline: tuple[int, int, int, int] | None = None
    blocks: tuple[int, int] | None = None
    done = 0
    started = time.monotonic()
    for i in range(CYCLES):
        if time.monotonic() > deadline:
            break
        lane = i % 2
        pipeline, docs = lanes[lane]
        envs[lane].write_source(docs[(i // 2) % len(docs)])
        result = pipeline.cycle()
        assert result.ok, result
        assert result.changed or i < 2, result
        done += 1
        if done == WARMUP:
            gc.collect()
            baseline = (rss_kb(), fd_count(), threading.active_count(), os_threads())
        if done == BLOCKS_FROM:
            gc.collect()
            blocks = (done, sys.getallocatedblocks())
    elapsed = time.monotonic() - started
    gc.collect()
    final = (rss_kb(), fd_count(), threading.active_count(), os_threads())
    assert baseline is not None and blocks is not None, f"only {done} cycles in {BUDGET_SECONDS}s"
    growth = final[0] - baseline[0]
    block_cycles, block_growth = done - blocks[0], sys.getallocatedblocks() - blocks[1]
    print(
        f"\nsoak: {done} cycles in {elapsed:.1f}s ({done / elapsed:.0f}/s); after {WARMUP} warm-up"
        f" cycles RSS {baseline[0]} -> {final[0]} KiB ({growth:+d} KiB), fds {baseline[1]} ->"
        f" {final[1]}, threads {baseline[2]} -> {final[2]} (OS tasks {baseline[3]} -> {final[3]});"
        f" {block_growth:+d} live blocks over the last {block_cycles} cycles"
    )
    assert block_growth < BLOCKS_PER_CYCLE * block_cycles, "live objects grow with the cycles"
    assert growth < RSS_LIMIT_KB, f"RSS grew {growth} KiB over {done - WARMUP} cycles"
    assert final[1] <= baseline[1], "file descriptors leaked"
    assert final[2] <= baseline[2] and final[3] <= baseline[3], "threads leaked"
    for env, (pipeline, _docs) in zip(envs, lanes, strict=True):
        assert verify(pipeline.state.audit_path).ok
        assert [p for p in env.root.rglob("*") if ".keysetd-" in p.name] == []
        pipeline.close()
    assert done >= min(CYCLES, 1000), f"only {done} cycles fit in {BUDGET_SECONDS}s"
    assert block_cycles >= 200
