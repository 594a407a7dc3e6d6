"""Deadlines through the real daemon: a dripping server or a hung command never holds keysetd.

A loopback server that drips its answer a byte per 0.5 s (an idle timeout never
fires) and a command source that sleeps 30 s: SIGTERM stops ``keysetd run`` at
once and leaves no child behind; ``keysetd once`` reports a dripped notifier
reply as the failure it is. The HTTP deadlines themselves are tested per caller
in test_httpclient, test_jwks_url, test_notifiers and test_vault_plugin.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, is_dead, wait_for
from tests.keys import jwks_doc
from tests.servers import HttpServer, Reply, http_server

#: Seconds between two bytes of a dripped answer.
DRIP = 0.5


@pytest.fixture
def dripping() -> Iterator[HttpServer]:
    """A server whose every answer drips its head a byte per 0.5 s (a minute or more in all)."""
    with http_server() as server:
        server.reply = Reply(200, b'{"keys": []}' * 8, drip_head=DRIP)
        yield server


def stop_and_time(env: Env) -> float:
    """SIGTERM the running keysetd; seconds until it exited (0)."""
    proc = env.procs[-1]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert code == 0, env.log()
    return elapsed


def test_sigterm_during_a_dripping_jwks_url_fetch_stops_at_once(
    env: Env, dripping: HttpServer
) -> None:
    env.config(
        source={"type": "jwks_url", "url": dripping.url("/certs"), "timeout": "30s"},
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    env.start()
    wait_for(lambda: dripping.requests, timeout=15, what="the fetch to start")
    assert stop_and_time(env) < 2.0, env.log()
    assert "cancelled: keysetd is stopping" in env.log()
    assert not env.jwks.exists()


def test_sigterm_during_a_command_fetch_kills_its_process_group(env: Env, tmp_path: Path) -> None:
    pid_file, child_file = tmp_path / "kms.pid", tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {child_file}; echo $$ > {pid_file}; wait"
    env.config(source={"type": "command", "argv": ["/bin/sh", "-c", script], "timeout": "60s"})
    env.start()
    pids = wait_for(
        lambda: (
            pid_file.exists()
            and (text := pid_file.read_text()).strip()
            and [int(text), int(child_file.read_text())]
        ),
        timeout=15,
        what="the command source to be running",
    )
    assert stop_and_time(env) < 1.5, env.log()
    for pid in pids:  # the shell and the sleep it started: the whole group is gone
        wait_for(lambda pid=pid: is_dead(pid), timeout=2, what=f"pid {pid} gone")
    assert "cancelled: keysetd is stopping (process group killed)" in env.log()


def test_once_fails_when_the_notifier_reply_drips(
    env: Env, dripping: HttpServer, keys: dict[str, dict[str, object]]
) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(
        notify=[{"type": "http", "url": dripping.url("/reload"), "timeout": "1s", "retries": 0}]
    )
    started = time.monotonic()
    done = env.keysetd("once", "--config", str(env.config_path))
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "timed out after 1s" in done.stderr
    assert [seen.path for seen in dripping.requests] == ["/reload"]
    assert env.jwks.exists()  # the outputs stand; only the consumer was not told
    assert elapsed < 15, elapsed  # start-up and the cycle, plus 1 s: not the minute of the drip
