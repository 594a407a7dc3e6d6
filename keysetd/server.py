"""The optional HTTP listener: /healthz, /readyz, /status, /metrics (GET only).

Runs in its own thread and only reads: the status document from state_dir, the
daemon's liveness, and the metrics registry. Nothing it serves holds key material.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keysetd.errors import ConfigError

__all__ = ["Endpoints", "StatusServer", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; ConfigError naming server.listen otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"server.listen: {listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class Endpoints:
    """What the handler asks the daemon; plain callables keep the server testable alone."""

    def __init__(
        self,
        alive: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
        metrics_type: str,
    ) -> None:
        self.alive, self.ready, self.status = alive, ready, status
        self.metrics, self.metrics_type = metrics, metrics_type


class _Handler(BaseHTTPRequestHandler):
    endpoints: Endpoints
    server_version = "keysetd"
    sys_version = ""

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _probe(self, check: Callable[[], tuple[bool, str]]) -> None:
        ok, reason = check()
        self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._probe(self.endpoints.alive)
        elif path == "/readyz":
            self._probe(self.endpoints.ready)
        elif path == "/status":
            body = json.dumps(self.endpoints.status(), indent=2, sort_keys=True).encode()
            self._send(200, body + b"\n", "application/json")
        elif path == "/metrics":
            self._send(200, self.endpoints.metrics(), self.endpoints.metrics_type)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log; keysetd logs its own events."""


class StatusServer:
    """A ThreadingHTTPServer on ``listen`` serving ``endpoints`` from a daemon thread.

    socketserver notices a shutdown only when its select returns: at the next request or
    poll. The poll is long (idle wake-ups cost CPU) and ``stop`` wakes the loop with a
    connection of its own instead, so a SIGTERM does not wait out the poll.
    """

    #: Seconds between the serving loop's own checks for a shutdown; ``stop`` does not wait.
    POLL_INTERVAL = 5.0

    def __init__(self, listen: str, endpoints: Endpoints) -> None:
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"endpoints": endpoints})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"server.listen: cannot listen on {listen}: {exc.strerror}") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": self.POLL_INTERVAL},
            name="keysetd-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            stopper = threading.Thread(target=self.httpd.shutdown, name="keysetd-http-stop")
            stopper.start()
            # Poke until the loop has seen the request: a poke before shutdown() set its
            # flag is served like any client that sends nothing, and the loop selects again.
            while stopper.is_alive():
                self._poke()
                stopper.join(0.05)
        self.httpd.server_close()

    def _poke(self) -> None:
        """Connect and hang up at once: wakes the serving loop's select."""
        host, port = self.address
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=1.0).close()
