"""Helpers for tests that run real servers on loopback: ports, binaries, processes, TLS, and
the keysetd log events of the sources those tests drive in process."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import wait_for

S = TypeVar("S", bound=http.server.HTTPServer)


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


@contextmanager
def serving(httpd: S) -> Iterator[S]:
    """``httpd`` served from a thread for the block, then shut down and closed."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


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
