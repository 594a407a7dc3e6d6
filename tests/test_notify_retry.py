"""A notification that failed is delivered again, from the daemon loop, until it succeeds.

A real loopback HTTP consumer that first answers 503 (or is not listening at
all), then comes back; a real ``keysetd run``; no source change in between.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from tests.conftest import Env, wait_for
from tests.keys import jwks_doc
from tests.test_daemon import events


@dataclass
class Consumer:
    """What the consumer answers now, and every POST it got: (monotonic time, status, body)."""

    status: int = 503
    posts: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, status: int) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, code, body in self.posts if code == status]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    consumer: Consumer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        consumer = self.server.consumer
        with consumer.lock:
            status = consumer.status
            consumer.posts.append((time.monotonic(), status, body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def listening(consumer: Consumer, port: int = 0) -> Iterator[int]:
    """Serve ``consumer`` on 127.0.0.1 (``port`` 0: any free one); yields the port."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.consumer = consumer
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    consumer = Consumer(status=503)
    with listening(consumer) as port:
        configure(env, keys, port)
        source = env.source.read_bytes()
        env.start()
        # The cycle's delivery fails, then the loop retries on its own ~1 s later.
        wait_for(lambda: len(consumer.answered(503)) >= 2, timeout=10, what="a retry")
        consumer.status = 204
        wait_for(lambda: events(env, "notify_retry") and events(env, "notify_failed"), 5, "logs")
        errors = wait_for(lambda: status(env)["notify_errors"], 5, what="notify_errors")
        assert "web" in errors[0], errors
        delivered = wait_for(lambda: consumer.answered(204), timeout=10, what="the delivery")
        times = [t for t, _, _ in consumer.posts]
        assert len(times) == 3, times  # failed, failed, delivered: no retry in between
        assert times[1] - times[0] >= 0.8 and times[2] - times[1] >= 1.6, times  # doubling
        assert env.source.read_bytes() == source
        assert delivered[0]["fingerprint"] == status(env)["fingerprint"]
        assert delivered[0]["active_kid"] == "es-a"
        wait_for(lambda: status(env)["notify_errors"] == [], timeout=5, what="status clear")
        assert status(env)["notify_retry_at"] is None
        assert len(consumer.answered(204)) == 1  # delivered once: nothing is owed any more


def test_a_consumer_that_was_not_listening_is_told_once_it_starts(
    env: Env, keys: dict[str, Any]
) -> None:
    port = unused_port()
    configure(env, keys, port)
    env.start()
    wait_for(lambda: events(env, "notify_failed"), timeout=10, what="a failed delivery")
    assert "refused" in events(env, "notify_failed")[0]["error"].lower()
    consumer = Consumer(status=200)
    with listening(consumer, port):  # the retry ~1 s after the failure finds it
        delivered = wait_for(lambda: consumer.answered(200), timeout=10, what="the delivery")
        assert delivered[0]["fingerprint"] == status(env)["fingerprint"]
        assert sorted(delivered[0]["outputs"]) == ["jwks", "keyset"]


@pytest.mark.parametrize(("answer", "code"), [(503, 1), (204, 0)])
def test_once_exits_non_zero_when_a_notifier_failed(
    env: Env, keys: dict[str, Any], answer: int, code: int
) -> None:
    consumer = Consumer(status=answer)
    with listening(consumer) as port:
        configure(env, keys, port)
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
