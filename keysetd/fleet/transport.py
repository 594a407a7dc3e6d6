"""The one seam between the etcd store and HTTP: ``post_json(url, body, deadline) -> dict``.

The store speaks etcd's v3 JSON gateway (grpc-gateway, served under ``/v3/`` since etcd 3.4)
with the standard library: no grpcio in the daemon. Any callable of the ``PostJson`` shape
can replace ``HttpTransport`` (keysetd's own HTTP client, once there is one). A transport
raises ``TransportError`` and nothing else; the store turns it into a ``StoreError``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["HttpTransport", "PostJson", "TransportError", "tls_context"]

# etcd gRPC codes worth another endpoint: UNAVAILABLE (no leader, stopping, timed out) and
# DEADLINE_EXCEEDED. Every other code is etcd's verdict on the request itself.
_RETRY_CODES = frozenset({4, 14})
_MAX_BODY = 32 * 1024 * 1024
_CHUNK = 64 * 1024


class PostJson(Protocol):
    """POST ``body`` as JSON to ``url``; the decoded JSON object, before ``deadline``."""

    def __call__(self, url: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        """``deadline`` is a ``time.monotonic()`` instant; raises ``TransportError``."""
        ...


class TransportError(Exception):
    """No usable answer. ``retryable``: another endpoint (or a later try) may do better.

    ``status`` and ``code`` are the HTTP status and etcd's gRPC code when etcd answered.
    The reason never holds request or response bodies (they carry keyset state).
    """

    def __init__(
        self, reason: str, *, retryable: bool, status: int | None = None, code: int | None = None
    ) -> None:
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.code = code
        super().__init__(reason)


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A client context: the system CAs or ``ca_file``; a client certificate if given.

    Raises ``OSError``/``ssl.SSLError`` for unreadable files; the caller names the setting.
    """
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _etcd_reason(message: object) -> str:
    """etcd's own message when it is one of etcd's (``etcdserver: ...``), else nothing.

    The gateway echoes parts of a malformed body in its parse errors; those stay out.
    """
    if isinstance(message, str) and message.startswith(("etcdserver: ", "mvcc: ")):
        return message[:200]
    return ""


class HttpTransport:
    """``PostJson`` over ``http.client``: kept-alive connections, a total deadline, TLS.

    No proxies from the environment (the store is reached directly), no redirects. Safe to
    share between threads: each call takes its own connection.
    """

    def __init__(self, context: ssl.SSLContext | None = None, max_idle: int = 4) -> None:
        self._context = context
        self._max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("not an http(s) URL", retryable=False)
        where = (
            parts.scheme,
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        data = json.dumps(body, separators=(",", ":")).encode()
        conn, reused = self._take(where)
        try:
            status, raw, keep = self._exchange(conn, parts.path, data, deadline)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not reused:
                raise TransportError(
                    "connection closed without an answer", retryable=True
                ) from None
            # A kept-alive connection the server had closed: once more on a fresh one.
            conn, _ = self._take(where, fresh=True)
            try:
                status, raw, keep = self._exchange(conn, parts.path, data, deadline)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give(where, conn)
        else:
            conn.close()
        return _decode(status, raw)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _take(
        self, where: tuple[str, str, int], fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                pool = self._idle.get(where)
                if pool:
                    return pool.pop(), True
        scheme, host, port = where
        if scheme == "https":
            context = self._context or ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, context=context), False
        return http.client.HTTPConnection(host, port), False

    def _give(self, where: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            pool = self._idle.setdefault(where, [])
            if len(pool) < self._max_idle:
                pool.append(conn)
                return
        conn.close()

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection, path: str, data: bytes, deadline: float
    ) -> tuple[int, bytes, bool]:
        """One request; (status, body, keep the connection). Every socket wait is bounded."""

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        try:
            conn.timeout = remaining()
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            if conn.sock is not None:
                conn.sock.settimeout(remaining())
            response = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                if conn.sock is not None:
                    conn.sock.settimeout(remaining())
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > _MAX_BODY:
                    raise TransportError(
                        f"answer larger than {_MAX_BODY // (1024 * 1024)} MiB", retryable=False
                    )
                chunks.append(chunk)
        except TimeoutError:
            raise TransportError("no answer before the deadline", retryable=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"TLS: certificate verify failed: {exc.verify_message}", retryable=True
            ) from None
        except ssl.SSLEOFError:
            raise TransportError(
                "TLS: the server closed the connection (is a client certificate required?)",
                retryable=True,
            ) from None
        except ssl.SSLError as exc:
            reason = (exc.reason or "handshake failed").lower().replace("_", " ")
            raise TransportError(f"TLS: {reason}", retryable=True) from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            raise
        except (OSError, http.client.HTTPException) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            raise TransportError(reason, retryable=True) from None
        return response.status, b"".join(chunks), not response.will_close


def _decode(status: int, raw: bytes) -> dict[str, Any]:
    """The JSON object of a 200; a ``TransportError`` with etcd's code for anything else."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise TransportError(
            f"HTTP {status} without a JSON object", retryable=status >= 500, status=status
        )
    if status == 200 and "error" not in doc:
        return doc
    error = doc.get("error")
    if isinstance(error, dict):  # a streaming endpoint's error frame
        doc = error
    code = doc.get("code")
    code = code if isinstance(code, int) else None
    detail = _etcd_reason(doc.get("message") or doc.get("error"))
    reason = f"HTTP {status}, code {code}" + (f": {detail}" if detail else "")
    return_retry = code in _RETRY_CODES or (code is None and status >= 500)
    raise TransportError(reason, retryable=return_retry, status=status, code=code)
