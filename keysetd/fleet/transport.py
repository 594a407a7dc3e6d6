"""The one seam between the etcd store and HTTP: ``post_json(url, body, deadline) -> dict``.

The store speaks etcd's v3 JSON gateway (grpc-gateway, served under ``/v3/`` since etcd 3.4)
with the standard library: no grpcio in the daemon. ``HttpTransport`` sends through keysetd's
one HTTP client (:mod:`keysetd.httpclient`): a total deadline over connect, request and the
whole answer, no proxies, no redirects. Any callable of the ``PostJson`` shape can replace it.
A transport raises ``TransportError`` and nothing else; the store turns it into a
``StoreError``.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from keysetd import httpclient
from keysetd.fleet.state import MAX_DOCUMENT_BYTES

__all__ = ["MAX_ANSWER_BYTES", "HttpTransport", "PostJson", "TransportError", "tls_context"]

# etcd gRPC codes worth another endpoint: UNAVAILABLE (no leader, stopping, timed out) and
# DEADLINE_EXCEEDED. Every other code is etcd's verdict on the request itself.
_RETRY_CODES = frozenset({4, 14})
#: An etcd answer holds at most one document, base64 (4/3 of it), with a few small keys
#: (leader, acks) and JSON around it: twice the document limit is room enough.
MAX_ANSWER_BYTES = 2 * MAX_DOCUMENT_BYTES
_TIMED_OUT = "no answer before the deadline"


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
    """``PostJson`` over :func:`keysetd.httpclient.send`: one connection per call.

    ``deadline`` bounds the whole call (connect, TLS, request, every byte of the answer): a
    server that drips its answer cannot hold the store past it. An answer over
    ``MAX_ANSWER_BYTES`` is refused. No proxies from the environment (the store is reached
    directly), no redirects. Safe to share between threads.
    """

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._context = context

    def __call__(self, url: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("not an http(s) URL", retryable=False)
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise TransportError(_TIMED_OUT, retryable=True)
        request = httpclient.Request(
            "POST",
            url,
            timeout,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body, separators=(",", ":")).encode(),
            max_body=MAX_ANSWER_BYTES,
            tls=self._context,
        )
        try:
            response = httpclient.send(request)
        except httpclient.HttpTimeout:
            raise TransportError(_TIMED_OUT, retryable=True) from None
        except httpclient.HttpTooLarge:
            reason = f"answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
            raise TransportError(reason, retryable=False) from None
        except httpclient.HttpFailure as exc:
            raise TransportError(exc.reason, retryable=True) from None
        return _decode(response.status, response.body)


def _decode(status: int, raw: bytes) -> dict[str, Any]:
    """The JSON object of a 200; a ``TransportError`` with etcd's code for anything else."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
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
