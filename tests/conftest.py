"""Fixtures: real keysetd processes, configs on disk, and condition waits with deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.keys import jwk, jwks_doc, write_atomically

KEYSETD = [sys.executable, "-m", "keysetd"]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def is_dead(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (killed; our PID 1 may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(config: dict[str, Any]) -> str:
    lines: list[str] = []
    tables: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                tables.append(f"\n[[{key}]]")
                tables += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


class Env:
    """A workspace: source file, outputs, state dir and config under one tmp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "src" / "keyset.json"
        self.out = root / "out"
        self.state = root / "state"
        self.config_path = root / "keysetd.toml"
        self.source.parent.mkdir()
        self.out.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def jwks(self) -> Path:
        return self.out / "jwks.json"

    @property
    def signer(self) -> Path:
        return self.out / "keyset.json"

    @property
    def pem(self) -> Path:
        return self.out / "pem"

    def outputs_with_pem(self) -> list[dict[str, str]]:
        """The ``outputs`` of a verifier file, a verifier directory (pem) and the signer keyset."""
        return [
            {"type": "jwks", "path": str(self.jwks)},
            {"type": "pem", "path": str(self.pem)},
            {"type": "keyset", "path": str(self.signer)},
        ]

    def config(self, **extra: Any) -> Path:
        """Write a config: file source, jwks + keyset outputs, plus ``extra`` top-level keys."""
        config: dict[str, Any] = {
            "state_dir": str(self.state),
            "log_format": "json",
            "source": {"type": "file", "path": str(self.source), "refresh_interval": "30s"},
            "outputs": [
                {"type": "jwks", "path": str(self.jwks)},
                {"type": "keyset", "path": str(self.signer)},
            ],
        }
        for key, value in extra.items():
            if (
                isinstance(value, dict)
                and isinstance(config.get(key), dict)
                and "type" not in value
            ):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path.write_text(render_toml(config))
        return self.config_path

    def write_source(self, data: bytes) -> None:
        write_atomically(self.source, data)

    def snapshot_outputs(self) -> dict[str, bytes]:
        """Every output file's bytes; a write in flight (its temp file, an old pem version
        directory being removed) is not an output and may vanish while we list."""
        found: dict[str, bytes] = {}
        for path in sorted(self.out.rglob("*")):
            if path.name.endswith(".keysetd.tmp"):
                continue
            try:
                if path.is_file():
                    found[str(path.relative_to(self.out))] = path.read_bytes()
            except FileNotFoundError:
                continue
        return found

    def keysetd(
        self,
        *args: str,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KEYSETD, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=check,
        )

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / "keysetd.log").open("ab")
        proc = subprocess.Popen(
            [*KEYSETD, "run", "--config", str(self.config_path), *extra],
            stdout=log,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        path = self.root / "keysetd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self, wait: bool = True) -> None:
        """SIGTERM every daemon; ``wait=False`` leaves the reaping to ``reap_stopped`` (a
        test's teardown need not sit through a daemon's stop, up to its HTTP server's 0.5 s
        shutdown poll)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if wait:
                    reap(proc)
                else:
                    _STOPPING.append(proc)


#: Daemons sent SIGTERM by a teardown and not yet reaped.
_STOPPING: list[subprocess.Popen[bytes]] = []


def reap(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Wait for ``proc`` to exit; SIGKILL it after ``timeout``."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def reap_stopped() -> None:
    """Reap the daemons teardowns left stopping (they exit by themselves on SIGTERM): at the
    end of the session, so no process outlives it."""
    while _STOPPING:
        reap(_STOPPING.pop())


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    _STOPPING[:] = [p for p in _STOPPING if p.poll() is None]  # reap those that exited
    workspace = Env(tmp_path)
    yield workspace
    workspace.stop_all(wait=False)


@pytest.fixture(scope="session")
def keys() -> dict[str, dict[str, Any]]:
    """A few keys made once per session (RSA generation is slow)."""
    return {
        "es-a": jwk("ES256", "es-a"),
        "es-b": jwk("ES256", "es-b"),
        "es-c": jwk("ES256", "es-c"),
        "ed-a": jwk("EdDSA", "ed-a"),
        "rs-a": jwk("RS256", "rs-a"),
    }


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real moto_server (KMS on loopback) for the session; each test makes its own keys."""
    from tests.test_aws_kms_plugin import running_moto  # boto and moto only when asked for

    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


__all__ = ["Env", "is_dead", "jwk", "jwks_doc", "wait_for"]


#: The longest files, longest first (measured, `--durations=0` summed per file): ``--dist
#: loadfile`` hands files to workers in collection order, so a long file collected last
#: would run alone at the end; longest first, the short ones even the workers out.
LONGEST_FIRST = (
    "test_fleet_faults.py",
    "test_vault_rotation.py",
    "test_reliability_crash.py",
    "test_daemon.py",
    "test_fleet_e2e.py",
    "test_source_faults.py",
    "test_fleet_store.py",
    "test_fleet_partition.py",
    "test_cli.py",
    "test_rgs_compat.py",
    "test_vault_plugin.py",
    "test_consumer_interop.py",
    "test_nats_e2e.py",
    "test_state_encryption.py",
    "test_reliability_soak.py",
    "test_rotation_e2e.py",
)


def pytest_sessionfinish(session: pytest.Session) -> None:
    reap_stopped()


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist >= 3.6 reorders loadfile's work by test count, most first, which sends a
    # file of one long test (test_fleet_e2e.py) last; keep the collection order set below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
