"""Real etcd for tests: a member or a cluster on free loopback ports, data in tmp_path.

Each member is Debian's ``etcd`` (``make system-deps`` installs it). Helpers kill -9, stop
(SIGSTOP), resume and restart a member, and find the current leader through the maintenance
status API. ``EtcdCluster.close`` leaves no process behind: SIGCONT, SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.servers import certificate, free_port

_READY_TIMEOUT = 15.0


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        pytest.fail("etcd not found: make system-deps (Debian etcd-server)")
    return found


def _post(url: str, body: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


class EtcdMember:
    """One etcd process; its data dir survives ``kill9``/``restart``."""

    def __init__(self, name: str, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.scheme = "https" if "--cert-file" in " ".join(extra) else "http"
        self.client_url = f"{self.scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.data_dir = root / f"{name}.etcd"
        self.log_path = root / f"{name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.initial_cluster = f"{name}={self.peer_url}"
        self.stopped = False

    def start(self) -> None:
        """Start (or restart on the same data dir: etcd then ignores the initial-* flags)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        args = [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=keysetd-test",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-level=warn",
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        self.stopped = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def sigstop(self) -> None:
        """SIGSTOP, and wait until every thread is stopped (delivery is asynchronous)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd {self.name} did not stop within 5 s")
            time.sleep(0.01)

    def _all_threads_stopped(self) -> bool:
        states = []
        for stat in Path(f"/proc/{self.pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, IndexError):
                continue
        return bool(states) and all(state in ("T", "t") for state in states)

    def sigcont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def restart(self) -> None:
        if self.alive():
            self.kill9()
        self.start()

    def close(self) -> None:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, then SIGKILL."""
        if not self.alive():
            return
        assert self.proc is not None
        if self.stopped:
            self.sigcont()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """The maintenance status of this member (its id, the leader's id, ...)."""
        return _post(f"{self.client_url}/v3/maintenance/status", {}, timeout)

    def healthy(self) -> bool:
        """True when the member answers /health with a leader elected."""
        if not self.alive():
            raise AssertionError(f"etcd {self.name} exited: {self.log()}")
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"{self.client_url}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class EtcdCluster:
    """``size`` members started together; ``endpoints`` are their client URLs."""

    def __init__(self, root: Path, size: int, extra: tuple[str, ...] = ()) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(f"m{i}", root, extra) for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def start(self) -> None:
        for member in self.members:
            member.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = _READY_TIMEOUT) -> None:
        """Every running member healthy (a leader elected, reads served), or fail with the logs."""
        deadline = time.monotonic() + timeout
        pending = [m for m in self.members if m.alive() and not m.stopped]
        while pending:
            pending = [m for m in pending if not m.healthy()]
            if pending and time.monotonic() > deadline:
                logs = "\n".join(f"--- {m.name}:\n{m.log()}" for m in pending)
                raise AssertionError(f"etcd not healthy within {timeout}s:\n{logs}")
            if pending:
                time.sleep(0.05)

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """The member the running members agree leads (maintenance status API)."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[str, EtcdMember] = {}
            leaders: set[str] = set()
            for member in self.members:
                if not member.alive() or member.stopped:
                    continue
                try:
                    status = member.status()
                except (OSError, ValueError):
                    continue
                ids[status["header"]["member_id"]] = member
                if status.get("leader"):
                    leaders.add(status["leader"])
            if len(leaders) == 1 and (lead := leaders.pop()) in ids:
                return ids[lead]
            if time.monotonic() > deadline:
                raise AssertionError(f"no agreed etcd leader within {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        for member in self.members:
            member.close()


@contextlib.contextmanager
def running_cluster(root: Path, size: int) -> Iterator[EtcdCluster]:
    """``size`` members started and healthy; every process gone afterwards."""
    cluster = EtcdCluster(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
    assert not any(m.alive() for m in cluster.members)


@dataclass(frozen=True)
class EtcdTls:
    """PEM files of a test CA, an etcd server certificate and a client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_flags(self) -> tuple[str, ...]:
        """etcd flags for TLS on the client URLs, client certificates required."""
        return (
            f"--cert-file={self.server_cert}",
            f"--key-file={self.server_key}",
            f"--trusted-ca-file={self.ca_file}",
            "--client-cert-auth",
        )


def etcd_tls(workdir: Path) -> EtcdTls:
    """Fresh TLS files in ``workdir``. The server certificate serves clients *and* is one:
    etcd's JSON gateway dials its own gRPC port with it, so it needs both key usages."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("etcd test CA", ca_key.public_key(), ca_key, ca=True)
    now = datetime.datetime.now(datetime.UTC)

    def leaf(name: str, key: ec.EllipticCurvePrivateKey, server: bool) -> x509.Certificate:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd test CA")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    files = EtcdTls(
        workdir / "ca.pem",
        workdir / "server.pem",
        workdir / "server.key",
        workdir / "client.pem",
        workdir / "client.key",
    )
    pem = serialization.Encoding.PEM
    files.ca_file.write_bytes(ca.public_bytes(pem))
    for name, cert_path, key_path, server in (
        ("127.0.0.1", files.server_cert, files.server_key, True),
        ("keysetd", files.client_cert, files.client_key, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert_path.write_bytes(leaf(name, key, server).public_bytes(pem))
        key_path.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return files
