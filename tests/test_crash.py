"""kill -9 at random instants of change-and-publish: every output stays whole and consistent."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.pemdir import check_pem_dir

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "200"))
BUDGET_SECONDS = 150


def check_consistent(env: Env, pem_dir: Path) -> None:
    """Each output parses and the pem directory is one whole set; the signer's active kid
    is published to verifiers."""
    jwks = json.loads(env.jwks.read_bytes())
    published = {k["kid"] for k in jwks["keys"]}
    signer = json.loads(env.signer.read_bytes())
    assert signer["active_kid"] in published, (signer["active_kid"], published)
    assert signer["active_kid"] in check_pem_dir(pem_dir)


def test_kill_9_at_random_instants(env: Env) -> None:
    rng = random.Random(20261123)
    pool = [jwk("ES256", f"k{i}") for i in range(6)]
    pem_dir = env.pem

    def document(i: int) -> bytes:
        previous, current = pool[(i - 1) % len(pool)], pool[i % len(pool)]
        keys: list[dict[str, Any]] = [current, previous] if i else [current]
        return jwks_doc(*keys, active=current["kid"])

    env.write_source(document(0))
    env.config(outputs=env.outputs_with_pem())
    env.start()
    wait_for(env.signer.exists, what="first publish")
    deadline = time.monotonic() + BUDGET_SECONDS
    rounds = 0
    for i in range(1, ROUNDS + 1):
        if time.monotonic() > deadline:
            break
        proc = env.procs[-1]
        env.write_source(document(i))
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        check_consistent(env, pem_dir)
        env.start()
        rounds += 1
    final = document(rounds)
    expected = json.loads(final)["active_kid"]
    wait_for(
        lambda: json.loads(env.signer.read_bytes())["active_kid"] == expected,
        timeout=10,
        what="the last snapshot after the last restart",
    )
    check_consistent(env, pem_dir)
    # Stopped with SIGTERM, no write is in flight: any temp file now is a leftover.
    env.stop_all()
    assert all(proc.returncode == 0 for proc in env.procs[-1:])
    leftovers = [p for p in env.out.rglob("*") if ".keysetd-" in p.name]
    assert leftovers == [], leftovers
    assert rounds >= min(ROUNDS, 100), f"only {rounds} rounds fit the time budget"
