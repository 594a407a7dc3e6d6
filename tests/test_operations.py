"""The daemon in production: HTTP probes, Prometheus metrics, and systemd's notify protocol."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.daemon import Daemon
from keysetd.metrics import fetch_reason
from tests.conftest import Env, wait_for
from tests.keys import jwks_doc
from tests.servers import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def served(env: Env, keys: dict[str, Any]) -> Iterator[tuple[Env, str]]:
    port = free_port()
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(server={"listen": f"127.0.0.1:{port}"}, policy={"max_staleness": "2s"})
    env.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready")
    yield env, base


def test_probes_status_and_metrics(served: tuple[Env, str], keys: dict[str, Any]) -> None:
    env, base = served
    assert get(base + "/healthz") == (200, "alive\n")
    status = json.loads(get(base + "/status")[1])
    assert status["active_kid"] == "es-a" and status["last_error"] is None
    code, metrics = get(base + "/metrics")
    assert code == 200
    assert 'keysetd_keyset_info{active_kid="es-a"' in metrics
    assert 'keysetd_cycles_total{outcome="ok"}' in metrics
    assert "keysetd_last_known_good_age_seconds" in metrics
    assert 'keysetd_keys{state="active"} 1.0' in metrics
    env.write_source(jwks_doc({**keys["es-b"], "alg": "none"}, active="es-b"))
    wait_for(
        lambda: 'keysetd_validation_errors_total{rule="alg-none"} 1.0' in get(base + "/metrics")[1],
        what="the validation error counted",
    )
    assert get(base + "/readyz")[0] == 200  # the last good fetch is still fresh
    for text in (get(base + "/metrics")[1], get(base + "/status")[1]):
        for key in (keys["es-a"], keys["es-b"]):
            assert key["d"] not in text
    assert get(base + "/nope")[0] == 404


def test_readyz_turns_false_when_last_known_good_is_stale(served: tuple[Env, str]) -> None:
    env, base = served
    env.source.unlink()
    wait_for(lambda: get(base + "/readyz")[0] == 503, timeout=10, what="not ready when stale")
    assert "older than max_staleness" in get(base + "/readyz")[1]
    assert get(base + "/healthz")[0] == 200  # alive all the same
    _, metrics = get(base + "/metrics")
    assert 'keysetd_fetch_errors_total{reason="missing"}' in metrics


def test_alive_fails_only_for_a_stuck_cycle(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    daemon = Daemon(load_config(env.config()))
    try:
        assert daemon.alive()[0]
        daemon.cycle_started = time.monotonic() - 10_000
        ok, reason = daemon.alive()
        assert not ok and "running for over" in reason
    finally:
        daemon.pipeline.close()


def test_systemd_notify_protocol(env: Env, keys: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    received: list[str] = []

    def drain() -> list[str]:
        """What arrived so far; bounded, since watchdog pings never stop coming."""
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                break
        return received

    try:
        env.write_source(jwks_doc(keys["es-a"], active="es-a"))
        env.config()
        proc = env.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        wait_for(lambda: any("READY=1" in m for m in drain()), what="READY=1")
        ready = next(m for m in received if "READY=1" in m)
        assert "STATUS=publishing" in ready and "active es-a" in ready
        wait_for(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 3, what="watchdog pings")
        proc.terminate()
        proc.wait(timeout=10)
        assert any("STOPPING=1" in m for m in drain())
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("source file:/x: cannot read: No such file or directory", "missing"),
        ("source jwks_url:h: HTTP 503 Service Unavailable", "server_error"),
        ("source command:/bin/x: timed out after 10s", "timeout"),
        ("source jwks_url:h: connection refused", "unreachable"),
        ("something else entirely", "other"),
    ],
)
def test_fetch_reasons_are_a_small_fixed_set(message: str, reason: str) -> None:
    assert fetch_reason(message) == reason
