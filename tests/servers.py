"""Helpers for tests that run real servers on loopback: ports, binaries, processes, TLS, one
configurable HTTP(S) server, and the keysetd log events of the sources tests drive in process."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import wait_for


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary(name: str, package: str) -> str:
    """The ``name`` executable a dev dependency installs beside the interpreter, else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install '{package}'")
    return found


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still running after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10) -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``; its log if it never does."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(listening, timeout, f"a listener on port {port}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log:\n{log.read_text(errors='replace')}") from None


# --- one configurable HTTP(S) server ----------------------------------------------------------


@dataclass
class Reply:
    """What the server answers: status, headers, body, and how slowly.

    ``delay`` holds the answer back that long (nothing is sent); ``drip_head`` and
    ``drip_body`` send the head (status line and headers) or the body one byte per
    that many seconds. A held or dripping answer ends at once when the server stops.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip_head: float = 0.0
    drip_body: float = 0.0
    content_length: bool = True


@dataclass
class Seen:
    """One request as the server read it; ``at`` is its time.monotonic() on arrival,
    ``status`` the status it was answered (0 until the server chose its reply)."""

    method: str
    path: str
    headers: Any  # http.client.HTTPMessage: case-insensitive names
    body: bytes
    at: float
    status: int = 0


class HttpServer:
    """A real HTTP(S) server on 127.0.0.1 that records requests and answers ``reply``.

    ``tls`` serves HTTPS with that server context; ``port`` 0 binds a free port.
    ``routes`` answers by path (the query dropped), ``respond`` (when set) decides
    from the request; the reply may be changed between requests. ``requests`` holds
    every request, with the status it got. ``stop`` and ``start`` again keep the
    port, as a provider that goes down and comes back.
    """

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.tls = tls
        self.reply = Reply()
        self.routes: dict[str, Reply] = {}
        self.respond: Callable[[Seen], Reply] | None = None
        self.requests: list[Seen] = []
        self.port = port
        self._release = threading.Event()
        self._httpd: _Httpd | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> HttpServer:
        httpd = _Httpd(("127.0.0.1", self.port), _Handler)
        httpd.owner = self
        if self.tls is not None:
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._release = threading.Event()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Free held answers, stop accepting, close the listener."""
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def hits(self, since: float = 0.0, path: str | None = None) -> list[Seen]:
        """The requests since ``since`` (monotonic), of ``path`` when given."""
        return [r for r in list(self.requests) if r.at >= since and path in (None, r.path)]

    def answer(self, seen: Seen) -> Reply:
        if self.respond is not None:
            return self.respond(seen)
        return self.routes.get(seen.path, self.reply)

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the server stops first (then True: give up the answer)."""
        return self._release.wait(seconds)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Httpd(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpServer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Httpd

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        seen = Seen(self.command, path, self.headers, body, time.monotonic())
        owner = self.server.owner
        owner.requests.append(seen)
        reply = owner.answer(seen)
        seen.status = reply.status
        if reply.delay and owner.pause(reply.delay):
            return
        lines = [f"HTTP/1.1 {reply.status} {_phrase(reply.status)}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        if reply.content_length:
            lines.append(f"Content-Length: {len(reply.body)}")
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.close_connection = True
        try:
            self._send(head, reply.drip_head)
            if self.command != "HEAD":
                self._send(reply.body, reply.drip_body)
        except OSError:
            pass  # the client gave up (the timeout tests)

    def _send(self, data: bytes, drip: float) -> None:
        if not drip:
            self.wfile.write(data)
            return
        for index in range(len(data)):
            if self.server.owner.pause(drip):
                return
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_LIST = _handle


@contextmanager
def http_server(tls: ssl.SSLContext | None = None) -> Iterator[HttpServer]:
    """An :class:`HttpServer` running for the block."""
    with HttpServer(tls) as server:
        yield server


# --- TLS on loopback -------------------------------------------------------------------------


def certificate(
    subject: str,
    public_key: Any,
    signer: CertificateIssuerPrivateKeyTypes,
    issuer: str | None = None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    """A certificate of ``public_key`` signed by ``signer``: a CA's, a server's for ``ip``, or
    (neither) a plain self-signed one."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class LoopbackTls:
    """A server context for a 127.0.0.1 certificate, and the CA that signed it (PEM, file)."""

    context: ssl.SSLContext
    ca_pem: str
    ca_file: Path


def loopback_tls(workdir: Path) -> LoopbackTls:
    """A fresh test CA and a 127.0.0.1 server certificate of it, with their files in ``workdir``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("keysetd test CA", ca_key.public_key(), ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate(
        "127.0.0.1", leaf_key.public_key(), ca_key, issuer="keysetd test CA", ip="127.0.0.1"
    )
    ca_file, cert_file, key_file = workdir / "ca.pem", workdir / "tls.pem", workdir / "tls.key"
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    ca_file.write_bytes(ca_pem)
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return LoopbackTls(context, ca_pem.decode(), ca_file)


# --- keysetd log events ----------------------------------------------------------------------


class Events(list[tuple[str, dict[str, Any]]]):
    """The keysetd log events emitted in this process, as (name, fields)."""

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self if event == name]


@contextmanager
def keysetd_events() -> Iterator[Events]:
    """Collect the ``keysetd`` logger's events (INFO and up) for the block."""
    seen = Events()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), dict(getattr(record, "fields", {}))))

    logger = logging.getLogger("keysetd")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
