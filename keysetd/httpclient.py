"""The one HTTP client of keysetd: every exchange bounded by a total deadline.

Used by the ``jwks_url`` source, the ``http`` notifier and the vault plugin's
requests adapter. One request per connection (``Connection: close``), and:

- ``timeout`` bounds the whole exchange: name resolution, connect, TLS, request,
  headers and body. Each socket operation gets only the time left, and a timer
  shuts the socket down at the deadline, so a server that drips its answer a
  byte at a time cannot hold keysetd past ``timeout``;
- a 2xx body over ``max_body`` is an error; other answers keep only an excerpt;
- redirects are answers, never followed; no proxy is used (environment
  variables are not read);
- TLS is verified against the system store or ``ca_file`` (or a caller's own
  context, ``tls``: client certificates); there is no switch to turn that off;
- with ``cancellable``, SIGTERM (:mod:`keysetd.cancel`) ends the exchange at once.

Failures are :class:`HttpFailure`, whose ``reason`` is safe to show (never a
header value; at most a redacted excerpt of a body). Callers translate them into
their keysetd error (``raise SourceError(...) from exc``)::

    HttpFailure
    ├── HttpConnectError  no connection: the name did not resolve, the port refused
    ├── HttpTimeout     the deadline passed
    ├── HttpCancelled   keysetd is stopping
    ├── HttpTlsError    certificate or handshake refused, ca_file unreadable
    └── HttpTooLarge    a 2xx body over max_body

A request http.client cannot encode (a header value outside latin-1, a control
character in the url) and an answer it cannot make sense of are HttpFailures
with a fixed reason: the text of those errors quotes the header or the bytes.

The seam is :class:`Transport`, any ``(Request) -> Response`` callable;
:func:`send` is the real one.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from keysetd import cancel
from keysetd.proc import redact

__all__ = [
    "MAX_BODY",
    "HttpCancelled",
    "HttpConnectError",
    "HttpFailure",
    "HttpTimeout",
    "HttpTlsError",
    "HttpTooLarge",
    "Request",
    "Response",
    "Transport",
    "send",
]

#: Default cap on a 2xx body (the size limit of a keyset document).
MAX_BODY = 16 * 1024 * 1024
#: Bytes of a non-2xx body kept, of which ``_EXCERPT`` characters reach a message.
_EXCERPT_BYTES = 800
_EXCERPT = 200
_CHUNK = 65536
#: How often a wait for name resolution looks at the deadline and for a cancel.
_RESOLVE_POLL = 0.05
_UNSENDABLE = "the request cannot be sent: the url or a header holds characters HTTP does not allow"


class HttpFailure(Exception):
    """The exchange failed; ``reason`` is safe to show (redacted, no header values)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class HttpConnectError(HttpFailure):
    """No connection was made: the name did not resolve, or no address accepted it."""


class HttpTimeout(HttpFailure):
    """The total deadline passed before the answer was complete."""


class HttpCancelled(HttpFailure):
    """keysetd is stopping (SIGTERM) and cut the exchange short."""


class HttpTlsError(HttpFailure):
    """The server's certificate or the TLS handshake was refused, or ca_file is unusable."""


class HttpTooLarge(HttpFailure):
    """A success body over ``max_body``."""


@dataclass(frozen=True, slots=True)
class Request:
    """One exchange: ``timeout`` is the total deadline in seconds."""

    method: str
    url: str
    timeout: float
    # Not in the repr: they carry tokens (X-Vault-Token, Authorization) and secret ids.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)
    max_body: int = MAX_BODY
    ca_file: Path | None = None
    cancellable: bool = False
    #: A ready client context (one with a client certificate, say), used instead of ca_file.
    tls: ssl.SSLContext | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer; a non-2xx ``body`` holds at most an excerpt's worth of bytes."""

    status: int
    reason: str
    # Not in the repr: a login answer's body holds a client token.
    headers: http.client.HTTPMessage = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def problem(self) -> str:
        """Why this answer is not a success, for an error message (redacted, short)."""
        if 300 <= self.status < 400:
            try:
                location = urlsplit(self.headers.get("Location") or "").hostname
            except ValueError:  # "http://[x": not a URL, so no host to name
                location = None
            where = f" to {location}" if location else ""
            return f"HTTP {self.status} redirect{where} not followed (set url to the final address)"
        reason = redact(" ".join(self.reason.split()))[:60]
        text = redact(" ".join(self.body.decode("utf-8", errors="replace").split()))[:_EXCERPT]
        return f"HTTP {self.status} {reason}" + (f": {text}" if text else "")


class Transport(Protocol):
    """The seam: what sends a :class:`Request`. :func:`send` is the real one."""

    def __call__(self, request: Request, /) -> Response: ...


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: the system store, or only ``ca_file`` when given.

    Built per exchange so a rotated ``ca_file`` is picked up.
    """
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise HttpTlsError(f"cannot load ca_file {ca_file}: {exc}") from exc


def send(request: Request) -> Response:
    """Run one exchange within ``request.timeout``; :class:`HttpFailure` when it fails."""
    parts = urlsplit(request.url)
    try:
        port = parts.port
    except ValueError:
        raise HttpFailure("url has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpFailure("url must be an http:// or https:// URL with a host")
    https = parts.scheme == "https"
    address = (parts.hostname, port or (443 if https else 80))
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    context = None
    if https:
        context = request.tls if request.tls is not None else tls_context(request.ca_file)
    call = _Call(request.timeout)
    with contextlib.ExitStack() as stack:
        if request.cancellable:
            stack.enter_context(cancel.cancellable(call.cancel))
        stack.enter_context(call)
        try:
            return _exchange(call, request, address, target, context)
        except HttpFailure:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise call.failure(exc) from exc
        except ValueError:  # UnicodeError too; its text may quote a header or the answer
            if call.sent:
                raise HttpFailure("the server's answer is malformed") from None
            raise HttpFailure(_UNSENDABLE) from None


# --- one exchange ---------------------------------------------------------------------------


def _exchange(
    call: _Call,
    request: Request,
    address: tuple[str, int],
    target: str,
    context: ssl.SSLContext | None,
) -> Response:
    host, port = address
    sock: socket.socket = _connect(call, address)
    call.connected = True
    conn: http.client.HTTPConnection
    if context is not None:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        sock = call.own(tls)
        tls.settimeout(call.remaining())
        tls.do_handshake()
        conn = http.client.HTTPSConnection(host, port, context=context)
    else:
        conn = http.client.HTTPConnection(host, port)
    conn.sock = sock  # connected already: http.client only speaks HTTP over it
    sock.settimeout(call.remaining())
    try:
        conn.request(
            request.method,
            target,
            body=request.body,
            headers={**request.headers, "Connection": "close"},
        )
    except http.client.InvalidURL:  # its text quotes the url, which may hold a token
        raise HttpFailure(_UNSENDABLE) from None
    call.sent = True
    sock.settimeout(call.remaining())
    with contextlib.closing(conn.getresponse()) as response:  # it holds the socket open
        return _answer(call, sock, response, request.max_body)


def _answer(
    call: _Call, sock: socket.socket, response: http.client.HTTPResponse, max_body: int
) -> Response:
    """The response read within the deadline: a 2xx body up to ``max_body``, else an excerpt."""
    status = response.status
    success = 200 <= status < 300
    limit = max_body if success else _EXCERPT_BYTES
    declared = response.getheader("Content-Length")
    # isascii: "²".isdigit() is True and int("²") raises.
    if success and declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise HttpTooLarge(f"response of {int(declared)} bytes is over max_bytes ({limit})")
    body = _read(call, sock, response, limit)
    call.check()  # an end of body the deadline forced is a timeout, not an answer
    if success:
        if len(body) > limit:
            raise HttpTooLarge(f"response is over max_bytes ({limit})")
        if response.length:  # Content-Length promised more than came before the close
            raise HttpFailure(f"the response ended {response.length} bytes early")
    return Response(status, response.reason, response.headers, body[:limit])


def _read(
    call: _Call, sock: socket.socket, response: http.client.HTTPResponse, limit: int
) -> bytes:
    """Up to ``limit + 1`` body bytes; each read gets only the time left."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        sock.settimeout(call.remaining())
        chunk = response.read1(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _connect(call: _Call, address: tuple[str, int]) -> socket.socket:
    """A TCP connection to the first address of ``host`` that answers, within the deadline."""
    last: OSError = OSError(f"no address for {address[0]}")
    for family, kind, proto, _, where in _resolve(call, address):
        sock = call.own(socket.socket(family, kind, proto))
        call.watch(sock)
        try:
            sock.settimeout(call.remaining())
            sock.connect(where)
        except OSError as exc:
            last = exc
            continue
        return sock
    raise last


def _resolve(call: _Call, address: tuple[str, int]) -> list[Any]:
    """getaddrinfo, bounded: a name is resolved in a helper thread the deadline does not wait on."""
    host, port = address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    found: list[list[Any] | Exception] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)
        except Exception:  # UnicodeError: a name IDNA refuses ("a..b"); never die silently
            found.append(HttpConnectError("cannot resolve the host"))
        finally:
            done.set()

    threading.Thread(target=resolve, name="keysetd-resolve", daemon=True).start()
    while not done.wait(min(call.remaining(), _RESOLVE_POLL)):
        pass
    if not found:  # the thread died of something it could not catch
        raise HttpConnectError("cannot resolve the host")
    result = found[0]
    if isinstance(result, Exception):
        raise result
    return result


# --- the deadline ---------------------------------------------------------------------------


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Call:
    """The deadline of one exchange: a timer that shuts its socket down, and the sockets to close.

    The timer shuts down a duplicate of the connection's descriptor that only this
    object closes (after the timer is stopped, under the lock), so it can never
    hit a descriptor number http.client closed and the process reused.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self.cancelled = False
        self.connected = False
        self.sent = False
        self._lock = threading.Lock()
        self._watches: list[socket.socket] = []
        self._owned: list[socket.socket] = []
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.name = "keysetd-http-deadline"
        self._timer.daemon = True

    def __enter__(self) -> _Call:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            watches, self._watches = self._watches, []
        for sock in (*watches, *self._owned):
            sock.close()

    def own(self, sock: socket.socket) -> socket.socket:
        """Close ``sock`` when the exchange ends, whatever http.client did with it."""
        self._owned.append(sock)
        return sock

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock``'s connection down at the deadline or on a cancel."""
        with self._lock:
            self._watches.append(sock.dup())
            if self.expired or self.cancelled:
                _shutdown(self._watches[-1])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._watches:
                _shutdown(sock)

    def cancel(self) -> None:
        """From the SIGTERM handler: no lock (the thread it interrupted may hold it)."""
        self.cancelled = True
        for sock in list(self._watches):
            _shutdown(sock)

    def check(self) -> None:
        """Raise if the exchange was cancelled or its deadline passed."""
        if self.cancelled:
            raise HttpCancelled("cancelled: keysetd is stopping")
        if self.expired or time.monotonic() >= self.deadline:
            raise HttpTimeout(f"timed out after {self.timeout:g}s")

    def remaining(self) -> float:
        """Seconds left for the next socket operation; raises once none are."""
        self.check()
        return max(self.deadline - time.monotonic(), 0.001)

    def failure(self, exc: OSError | http.client.HTTPException) -> HttpFailure:
        """``exc`` in a few safe words; any error after the deadline or a cancel is that."""
        if self.cancelled:
            return HttpCancelled("cancelled: keysetd is stopping")
        if self.expired or isinstance(exc, TimeoutError) or time.monotonic() >= self.deadline:
            return HttpTimeout(f"timed out after {self.timeout:g}s")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return HttpTlsError(f"TLS verification failed: {exc.verify_message}")
        if isinstance(exc, ssl.SSLError):
            return HttpTlsError(f"TLS handshake failed: {exc.reason or exc}")
        if isinstance(exc, socket.gaierror):
            return HttpConnectError(f"cannot resolve the host: {exc.strerror}")
        if not self.connected and isinstance(exc, OSError):
            return HttpConnectError(exc.strerror or redact(str(exc))[:_EXCERPT])
        if isinstance(exc, OSError) and exc.strerror:
            return HttpFailure(exc.strerror)
        return HttpFailure(redact(f"{type(exc).__name__}: {exc}")[:_EXCERPT])
