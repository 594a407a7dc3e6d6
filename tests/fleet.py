"""The fleet harness: real ``keysetd run`` replicas on a real etcd cluster, loopback only.

Every replica reads its own copy of the managed source file, as pods read a mounted Secret:
the elected leader alone rotates its copy, and a propagator thread copies what it wrote to
the others, each after its own random lag (0.2-1.0 s, as a kubelet's volume refresh lags).
Each replica writes its own jwks (verifier) and keyset (signer) outputs; its verifier
consumer is a command notifier that loads a copy of the jwks 0-0.4 s after it is told.

A checker thread signs a token with each replica's signer keyset and verifies it against what
every replica's verifier consumer loaded, in a loop, as a fleet of issuers and verifiers
would: the count of failed verifications must stay 0 (planning from this replica's ack alone
fails it: the slow consumers lack the new kid). Bounded: each test has a rotation count and a
wall-clock limit; every process is stopped at the end (SIGCONT first).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.conftest import KEYSETD, render_toml, wait_for
from tests.etcd import EtcdCluster, running_cluster

LEASE_TTL = 2
POLICY = {"activation_delay": "300ms", "retention": "1500ms"}


@dataclass
class Replica:
    """One ``keysetd run`` with its own state and outputs, and the shared source."""

    name: str
    root: Path
    endpoints: tuple[str, ...]
    #: How long this replica's verifier consumer takes to load a new jwks once told.
    consumer_lag: float = 0.0
    policy: dict[str, str] = field(default_factory=lambda: dict(POLICY))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def source(self) -> Path:
        return self.root / "src" / "keyset.json"

    @property
    def jwks(self) -> Path:
        return self.root / "out" / "jwks.json"

    @property
    def consumer(self) -> Path:
        """What the verifier consumer loaded: a copy its reload makes, ``consumer_lag`` late."""
        return self.root / "out" / "consumer.json"

    @property
    def signer(self) -> Path:
        return self.root / "out" / "keyset.json"

    @property
    def config_path(self) -> Path:
        return self.root / "keysetd.toml"

    def write_config(self) -> None:
        (self.root / "out").mkdir(parents=True, exist_ok=True)
        self.source.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "state_dir": str(self.root / "state"),
            "log_format": "json",
            "source": {"type": "file", "path": str(self.source), "refresh_interval": "250ms"},
            "rotation": {"every": "1s", "alg": "ES256", "kid_prefix": "k-"},
            "policy": self.policy,
            "fleet": {
                "endpoints": list(self.endpoints),
                "prefix": "/fleet-test",
                "replica_id": self.name,
                "lease_ttl": f"{LEASE_TTL}s",
            },
            "outputs": [
                {"type": "jwks", "path": str(self.jwks)},
                {"type": "keyset", "path": str(self.signer)},
            ],
            "notify": [
                {
                    "type": "command",
                    "argv": [
                        "/bin/sh",
                        "-c",
                        f'sleep {self.consumer_lag}; cp "$1" "$2.tmp" && mv "$2.tmp" "$2"',
                        "reload",
                        str(self.jwks),
                        str(self.consumer),
                    ],
                    "outputs": ["jwks"],
                }
            ],
        }
        self.config_path.write_text(render_toml(config))

    def start(self) -> None:
        with (self.root / "keysetd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*KEYSETD, "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.root / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def log(self) -> str:
        path = self.root / "keysetd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # absent yet (atomic writes: never partial)
    return doc


@dataclass(kw_only=True)
class Background:
    """A thread running ``_run`` until ``stop``."""

    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Checker(Background):
    """Signs with every replica's signer output, verifies with every other replica's jwks."""

    replicas: list[Replica]
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    signed_kids: set[str] = field(default_factory=set)
    #: Replicas left out as issuers / as verifiers for a while (a test's stopped replica).
    not_signing: set[str] = field(default_factory=set)
    not_verifying: set[str] = field(default_factory=set)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.round()
            time.sleep(0.03)  # ~30 rounds a second: thousands of checks per test

    def round(self) -> None:
        tokens: list[tuple[str, str, str]] = []
        for replica in self.replicas:
            if replica.name in self.not_signing:
                continue
            signer = read_json(replica.signer)
            if signer is None or not signer.get("active_kid"):
                continue
            kid = signer["active_kid"]
            key = next(k for k in signer["keys"] if k["kid"] == kid)
            private = jwt.PyJWK(key).key
            token = jwt.encode({"sub": replica.name}, private, "ES256", headers={"kid": kid})
            tokens.append((replica.name, kid, token))
            self.signed_kids.add(kid)
        for verifier in self.replicas:
            if verifier.name in self.not_verifying:
                continue
            jwks = read_json(verifier.consumer)
            if jwks is None:
                continue
            published = {k["kid"]: k for k in jwks["keys"]}
            for issuer, kid, token in tokens:
                self.checked += 1
                if kid not in published:
                    self.failures.append(f"{issuer}'s {kid} missing from {verifier.name}'s jwks")
                    continue
                try:
                    jwt.decode(token, jwt.PyJWK(published[kid]).key, ["ES256"])
                except jwt.InvalidTokenError as exc:
                    self.failures.append(f"{issuer}'s {kid} refused by {verifier.name}: {exc}")


@dataclass
class Propagator(Background):
    """Copies a source a replica's leader wrote to every other replica, each after a lag."""

    replicas: list[Replica]
    lag: tuple[float, float] = (0.2, 1.0)
    seed: int = 7
    _written: dict[Path, bytes] = field(default_factory=dict)
    _due: list[tuple[float, Path, bytes]] = field(default_factory=list)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        while not self._stop.wait(0.02):
            now = time.monotonic()
            for replica in self.replicas:
                try:
                    data = replica.source.read_bytes()
                except OSError:
                    continue
                if data and data != self._written.get(replica.source):
                    self._written[replica.source] = data  # written by keysetd: an origin
                    for other in self.replicas:
                        if other is not replica:
                            self._due.append((now + rng.uniform(*self.lag), other.source, data))
            for item in sorted(d for d in self._due if d[0] <= now):
                self._due.remove(item)
                _, path, data = item
                temp = path.with_name(".propagating")
                temp.write_bytes(data)
                os.replace(temp, path)
                self._written[path] = data


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd", 3) as cluster:
        yield cluster


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., list[Replica]]]:
    """``make(cluster, count, policy=None)``: that many replicas started, each signing."""
    made: list[Replica] = []
    propagator = Propagator(made)

    def make(
        cluster: EtcdCluster, count: int, policy: dict[str, str] | None = None
    ) -> list[Replica]:
        for i in range(count):
            lag = 0.1 * i  # r4's consumer loads a new jwks 0.4 s after being told (> the delay)
            replica = Replica(f"r{i}", tmp_path / f"r{i}", cluster.endpoints, lag)
            replica.policy = dict(policy or POLICY)
            replica.write_config()
            made.append(replica)
        propagator.start()
        for replica in made:
            replica.start()
        wait_for(lambda: all(signing(r) for r in made), timeout=20, what="every replica signs")
        return list(made)

    yield make
    propagator.stop()
    for replica in made:
        replica.stop()


def signing(replica: Replica) -> str | None:
    doc = read_json(replica.signer)
    return None if doc is None else doc.get("active_kid")


def everyone_signs(replicas: list[Replica], kid: str) -> bool:
    return all(signing(r) == kid for r in replicas)


def rotate_and_check(
    replicas: list[Replica], rotations: int, limit: float, checker: Checker | None = None
) -> Checker:
    """Run the fleet through ``rotations`` more managed rotations while the checker signs."""
    if checker is None:
        checker = Checker(replicas)
        checker.start()
    target = len(checker.signed_kids) + rotations + (0 if checker.signed_kids else 1)
    try:
        deadline = time.monotonic() + limit
        while len(checker.signed_kids) < target:
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {r.name}\n{r.log()}" for r in replicas)
                raise AssertionError(f"{len(checker.signed_kids)} kids signed in {limit}s:\n{logs}")
            time.sleep(0.05)
    except BaseException:
        checker.stop()
        raise
    return checker


def cli(command: str, replica: Replica) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYSETD, command, "-c", str(replica.config_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def leader_of(replicas: list[Replica]) -> Replica:
    def find() -> Replica | None:
        names = {r.status().get("fleet", {}).get("leader") for r in replicas}
        names.discard(None)
        if len(names) != 1:
            return None
        return next((r for r in replicas if r.name in names), None)

    found: Replica = wait_for(find, timeout=10, what="one leader all replicas agree on")
    return found


def caught_up(replicas: list[Replica], replica: Replica) -> bool:
    """``replica``'s consumer holds every kid the other replicas sign with."""
    held = {k["kid"] for k in (read_json(replica.consumer) or {"keys": []})["keys"]}
    return all(signing(r) in held for r in replicas if r is not replica)


def acked_by_others(replicas: list[Replica], name: str) -> bool:
    """Every other replica sees ``name``'s ack (it committed and its consumer was told)."""
    return all(
        name in r.status().get("fleet", {}).get("replicas", {}) for r in replicas if r.name != name
    )
