"""The HTTP listener on its own: it serves, and ``stop`` ends it without waiting out a poll."""

from __future__ import annotations

import urllib.request

import pytest

from keysetd.server import Endpoints, StatusServer


def endpoints() -> Endpoints:
    return Endpoints(
        alive=lambda: (True, "alive"),
        ready=lambda: (True, "ready"),
        status=lambda: {"state": "ok"},
        metrics=lambda: b"# metrics\n",
        metrics_type="text/plain; version=0.0.4",
    )


@pytest.mark.timeout(30)
def test_stop_wakes_the_serving_loop_instead_of_waiting_for_its_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An hour between the loop's own checks: only stop's wake-up can end it within the
    # test's timeout.
    monkeypatch.setattr(StatusServer, "POLL_INTERVAL", 3600.0)
    server = StatusServer("127.0.0.1:0", endpoints())
    server.start()
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200 and reply.read() == b"alive\n"
    server.stop()
    assert not server.thread.is_alive()


def test_stop_of_a_server_never_started_returns() -> None:
    server = StatusServer("127.0.0.1:0", endpoints())
    server.stop()
