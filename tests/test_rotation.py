"""Managed keys under an injected clock: weeks of rotations in seconds, every guarantee checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from tests.conftest import Env

HOUR = 3600.0
DAY = 24 * HOUR


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def managed(env: Env, clock: Clock, **rotation: Any) -> Pipeline:
    config = env.config(
        policy={"activation_delay": "1h", "retention": "1d"},
        rotation={"every": "7d", "alg": "ES256", **rotation},
    )
    return Pipeline.open(load_config(config), clock=clock)


def published(env: Env) -> list[str]:
    return [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]]


def signing(env: Env) -> str:
    return str(json.loads(env.signer.read_text())["active_kid"])


def settle(pipeline: Pipeline) -> None:
    """Cycle until nothing more is due now (a rotation step asks for a cycle right away)."""
    for _ in range(10):
        result = pipeline.cycle()
        if result.next_change_at is None or result.next_change_at > pipeline.clock():
            return
    raise AssertionError("the pipeline kept asking for another cycle")


def test_first_key_is_generated_into_a_missing_source(env: Env) -> None:
    clock = Clock()
    pipeline = managed(env, clock)
    settle(pipeline)
    source = json.loads(env.source.read_text())
    assert len(source["keys"]) == 1 and source["active_kid"] == signing(env)
    assert env.source.stat().st_mode & 0o777 == 0o600
    assert published(env) == [signing(env)]


def test_ten_rotations(env: Env) -> None:
    """Every signer kid was published >= activation_delay before use; retired ones linger 1d.

    Every 2 days (the 7 days of the other tests, compressed: retention and activation
    delay still end well inside a period), checked every 20 minutes for 20 days.
    """
    clock = Clock()
    pipeline = managed(env, clock, every="2d")
    settle(pipeline)
    first_published: dict[str, float] = {}
    signer_periods: dict[str, list[float]] = {}
    last_signer: str | None = None
    step = 20 * 60.0
    end = clock.now + 20 * DAY
    while clock.now < end:
        settle(pipeline)
        for kid in published(env):
            first_published.setdefault(kid, clock.now)
        kid = signing(env)
        assert kid in published(env)
        if kid != last_signer:
            if last_signer is not None:
                assert clock.now - first_published[kid] >= HOUR - step
                signer_periods[last_signer].append(clock.now)
            signer_periods[kid] = [clock.now]
            last_signer = kid
        for old, period in signer_periods.items():
            if len(period) == 2 and clock.now < period[1] + DAY - step:
                assert old in published(env), (old, "dropped before its retention")
        clock.now += step
    rotations = len(signer_periods) - 1
    assert 9 <= rotations <= 10, rotations
    assert len(json.loads(env.source.read_text())["keys"]) <= 2
    assert len(published(env)) <= 3
    audit = (env.state / "audit.jsonl").read_text()
    assert audit.count('"event":"key_activated"') == rotations + 1
    assert pipeline.history[signing(env)].active_from is not None


def test_operator_edit_is_never_overwritten(env: Env) -> None:
    clock = Clock()
    pipeline = managed(env, clock)
    settle(pipeline)
    clock.now += 7 * DAY
    edited = json.loads(env.source.read_text())
    edited["operator_note"] = "hand edit"
    text = json.dumps(edited)

    original_fetch = pipeline.source.fetch

    def fetch_then_edit() -> Any:
        snapshot = original_fetch()
        Path(env.source).write_text(text)  # lands between our read and our write
        return snapshot

    pipeline.source.fetch = fetch_then_edit  # type: ignore[method-assign]
    pipeline.cycle()
    assert env.source.read_text() == text


def test_restart_does_not_cut_the_activation_delay_short(env: Env) -> None:
    clock = Clock()
    pipeline = managed(env, clock)
    settle(pipeline)
    old = signing(env)
    clock.now += 7 * DAY - HOUR + 1
    settle(pipeline)
    new = json.loads(env.source.read_text())["active_kid"]
    assert new != old and new in published(env) and signing(env) == old
    pipeline.close()
    clock.now += HOUR / 2
    restarted = Pipeline.open(load_config(env.config_path), clock=clock)
    settle(restarted)
    assert signing(env) == old, "a restart must not shorten the activation delay"
    clock.now += HOUR / 2
    settle(restarted)
    assert signing(env) == new
