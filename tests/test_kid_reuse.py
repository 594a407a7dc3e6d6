"""A kid the source brings back with other material (an IdP that recreated a fixed kid).

Refused while the old material may still verify tokens; taken, audited, once retention has
passed since the source last carried it and signers left it; ``keysetd forget`` at once.
"""

from __future__ import annotations

import json
from typing import Any

from keysetd.audit_read import verify
from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc, public

RETENTION = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def verifier_only(env: Env, clock: Clock) -> Pipeline:
    """A remote-JWKS-like setup: public keys in, one jwks out."""
    config = env.config(
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
        policy={"retention": f"{int(RETENTION)}s"},
    )
    return Pipeline.open(load_config(config), clock=clock)


def audited(env: Env) -> list[dict[str, Any]]:
    lines = (env.state / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def published_x(env: Env, kid: str) -> str:
    doc = json.loads(env.jwks.read_bytes())
    return next(str(k["x"]) for k in doc["keys"] if k["kid"] == kid)


def test_new_material_is_refused_until_the_old_is_past_retention(env: Env) -> None:
    clock = Clock()
    old, new = jwk("ES256", "idp-1"), jwk("ES256", "idp-1")
    env.write_source(jwks_doc(public(old)))
    cycle = verifier_only(env, clock)
    assert cycle.cycle().ok
    served = env.snapshot_outputs()
    env.write_source(jwks_doc(public(new)))
    clock.now += 1
    refused = cycle.cycle()
    assert not refused.ok and "kid-reused" in str(refused.error)
    assert env.snapshot_outputs() == served
    [entry] = [e for e in audited(env) if e["event"] == "kid_reuse_refused"]
    assert entry["kid"] == "idp-1" and entry["accepted_after"] == clock.now + RETENTION
    clock.now += RETENTION - 1  # tokens the old material signed may still be valid
    assert not cycle.cycle().ok
    assert env.snapshot_outputs() == served
    clock.now += 1
    assert cycle.cycle().ok
    assert published_x(env, "idp-1") == new["x"]
    events = [e["event"] for e in audited(env)]
    assert events.count("kid_reuse_refused") == 1 and "kid_material_replaced" in events
    assert verify(env.state / "audit.jsonl").ok
    # The new material is an ordinary record now: the old one is not waited for again.
    assert StateStore(env.state).load_history()["idp-1"].reused_since is None


def test_the_old_material_coming_back_ends_the_wait(env: Env) -> None:
    clock = Clock()
    old, new = jwk("ES256", "idp-1"), jwk("ES256", "idp-1")
    env.write_source(jwks_doc(public(old)))
    cycle = verifier_only(env, clock)
    cycle.cycle()
    env.write_source(jwks_doc(public(new)))
    assert not cycle.cycle().ok
    env.write_source(jwks_doc(public(old)))
    assert cycle.cycle().ok
    clock.now += RETENTION + 1
    env.write_source(jwks_doc(public(new)))  # a new wait from now: refused again
    assert not cycle.cycle().ok
    assert published_x(env, "idp-1") == old["x"]


def test_signers_holding_the_kid_keep_it_refused_past_retention(
    env: Env, keys: dict[str, Any]
) -> None:
    clock = Clock()
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    config = env.config(policy={"retention": "1s"})
    cycle = Pipeline.open(load_config(config), clock=clock)
    assert cycle.cycle().ok
    served = env.snapshot_outputs()
    env.write_source(jwks_doc(jwk("ES256", "es-a"), active="es-a"))
    assert not cycle.cycle().ok
    clock.now += 3600
    assert not cycle.cycle().ok
    assert env.snapshot_outputs() == served
    done = env.keysetd("forget", "es-a", "-c", str(config))
    assert (
        done.returncode == 1 and "es-a: signers hold it: rotate to another kid first" in done.stderr
    )
    assert not (env.state / "forget.json").exists()


def test_forget_takes_the_new_material_at_once_in_a_running_daemon(env: Env) -> None:
    old, new = jwk("ES256", "idp-1"), jwk("ES256", "idp-1")
    other = jwk("ES256", "idp-2")
    env.write_source(jwks_doc(public(old), public(other)))
    config = env.config(
        outputs=[{"type": "jwks", "path": str(env.jwks)}], policy={"retention": "1h"}
    )
    proc = env.start()
    wait_for(env.jwks.exists, what="the first jwks")
    env.write_source(jwks_doc(public(new), public(other)))
    wait_for(lambda: "kid_reuse_refused" in env.log(), what="the refusal")
    assert published_x(env, "idp-1") == old["x"]
    done = env.keysetd("forget", "idp-1", "-c", str(config))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: published_x(env, "idp-1") == new["x"], timeout=5, what="the new material")
    assert proc.poll() is None
    assert published_x(env, "idp-2") == other["x"]
    events = [e["event"] for e in audited(env)]
    assert events.index("forget_requested") < events.index("kid_forgotten")
    assert StateStore(env.state).load_forgets() == {}
    assert verify(env.state / "audit.jsonl").ok


def test_forget_names_what_it_cannot_do(env: Env) -> None:
    config = env.config()
    done = env.keysetd("forget", "nobody", "-c", str(config))
    assert done.returncode == 1 and "nobody is not in the key history" in done.stderr
