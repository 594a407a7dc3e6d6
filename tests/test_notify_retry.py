"""A notification that failed is delivered again, from the daemon loop, until it succeeds.

A real loopback HTTP consumer that first answers 503 (or is not listening at
all), then comes back; a real ``keysetd run``; no source change in between.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from tests.conftest import Env, wait_for
from tests.keys import jwks_doc
from tests.servers import HttpServer, Reply, free_port
from tests.test_daemon import events


def consumer(status: int, port: int = 0) -> HttpServer:
    """A webhook consumer on 127.0.0.1 (``port`` 0: any free one) that answers ``status``."""
    server = HttpServer(port=port)
    server.reply = Reply(status)
    return server


def answered(server: HttpServer, status: int) -> list[dict[str, Any]]:
    """The JSON bodies of the POSTs ``server`` answered with ``status``."""
    return [json.loads(r.body) for r in server.hits() if r.method == "POST" and r.status == status]


def status(env: Env) -> dict[str, Any]:
    return dict(json.loads((env.state / "status.json").read_text()))


def configure(env: Env, keys: dict[str, Any], port: int) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    url = f"http://127.0.0.1:{port}/-/reload"
    env.config(notify=[{"type": "http", "name": "web", "url": url, "timeout": "1s", "retries": 0}])


def test_a_consumer_back_from_503_is_told_without_a_source_change(
    env: Env, keys: dict[str, Any]
) -> None:
    """The loop retries on its own at the backoff (~1 s, then ~2 s: the whole schedule is
    checked without a clock in test_backoff.py) and delivers once the consumer is back."""
    with consumer(503) as server:
        configure(env, keys, server.port)
        source = env.source.read_bytes()
        env.start()
        # The cycle's delivery fails, then the loop retries on its own ~1 s later.
        wait_for(lambda: len(answered(server, 503)) >= 2, timeout=10, what="a retry")
        server.reply = Reply(204)
        wait_for(lambda: events(env, "notify_retry") and events(env, "notify_failed"), 5, "logs")
        errors = wait_for(lambda: status(env)["notify_errors"], 5, what="notify_errors")
        assert "web" in errors[0], errors
        delivered = wait_for(lambda: answered(server, 204), timeout=10, what="the delivery")
        times = [r.at for r in server.hits()]
        assert len(times) == 3, times  # failed, failed, delivered: no retry in between
        assert times[1] - times[0] >= 0.8 and times[2] - times[1] >= 1.6, times  # doubling
        assert env.source.read_bytes() == source
        assert delivered[0]["fingerprint"] == status(env)["fingerprint"]
        assert delivered[0]["active_kid"] == "es-a"
        wait_for(lambda: status(env)["notify_errors"] == [], timeout=5, what="status clear")
        assert status(env)["notify_retry_at"] is None
        assert len(answered(server, 204)) == 1  # delivered once: nothing is owed any more


def test_a_consumer_that_was_not_listening_is_told_once_it_starts(
    env: Env, keys: dict[str, Any]
) -> None:
    port = free_port()
    configure(env, keys, port)
    env.start()
    wait_for(lambda: events(env, "notify_failed"), timeout=10, what="a failed delivery")
    assert "refused" in events(env, "notify_failed")[0]["error"].lower()
    with consumer(200, port) as server:  # the retry ~1 s after the failure finds it
        delivered = wait_for(lambda: answered(server, 200), timeout=10, what="the delivery")
        assert delivered[0]["fingerprint"] == status(env)["fingerprint"]
        assert sorted(delivered[0]["outputs"]) == ["jwks", "keyset"]


@pytest.mark.parametrize(("answer", "code"), [(503, 1), (204, 0)])
def test_once_exits_non_zero_when_a_notifier_failed(
    env: Env, keys: dict[str, Any], answer: int, code: int
) -> None:
    with consumer(answer) as server:
        configure(env, keys, server.port)
        done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == code, done.stderr
    assert env.signer.exists()  # the outputs stand either way
    assert ("notifier web" in done.stderr) == (code == 1), done.stderr


def test_a_newer_change_supersedes_the_owed_notification(env: Env, keys: dict[str, Any]) -> None:
    """In-process: the owed event is replaced by the newer change; retry delivers that one."""
    flag, seen = env.root / "consumer-up", env.root / "seen"
    script = f'[ -e {flag} ] && echo "$KEYSETD_FINGERPRINT" >> {seen}'
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    config = env.config(
        notify=[{"type": "command", "argv": ["/bin/sh", "-c", script], "retries": 0}]
    )
    pipeline = Pipeline.open(load_config(config))
    try:
        first = pipeline.cycle()
        assert first.ok and first.failed_notifiers == ("command",)
        env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
        second = pipeline.cycle()
        assert second.fingerprint != first.fingerprint and second.failed_notifiers
        [(owed, _)] = pipeline.backlog.due(pipeline.notifiers)
        assert owed.fingerprint == second.fingerprint
        flag.touch()
        assert pipeline.retry_notifications() == []
        assert seen.read_text().split() == [second.fingerprint]
        assert not pipeline.backlog and pipeline.backlog.retry_at is None
        assert pipeline.retry_notifications() == []  # nothing owed: nothing sent
        assert seen.read_text().split() == [second.fingerprint]
    finally:
        pipeline.close()
