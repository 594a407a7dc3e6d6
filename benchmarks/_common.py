"""Shared by the benchmarks: result rows, key pools, keyset documents, a daemon workspace."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from benchmarks._install import keysetd_command
from keysetd.crypto import key_from_private
from keysetd.model import Key

__all__ = [
    "Row",
    "Workspace",
    "binary",
    "document",
    "free_port",
    "key_pool",
    "machine",
    "percentile",
    "proc_status",
    "wait_for",
]


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; ``ok`` is None for a figure reported without a target."""

    name: str
    figure: str
    target: str = "-"
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        if self.ok is None:
            return "-"
        return "ok" if self.ok else "MISS"


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.001
) -> T:
    """Poll ``condition`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str:
    """The ``name`` executable a dev dependency installs beside the interpreter, else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- keys --------------------------------------------------------------------------------


def _private_key(kind: str) -> PrivateKeyTypes:
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


_ALGS = {"EC": "ES256", "OKP": "EdDSA", "RSA": "RS256"}


def key_pool(kinds: Sequence[str], prefix: str = "bench") -> list[Key]:
    """Fresh private keys, one per entry of ``kinds`` (EC P-256, OKP Ed25519, RSA-2048)."""
    return [
        key_from_private(_private_key(kind), kid=f"{prefix}-{index:05d}", alg=_ALGS[kind])
        for index, kind in enumerate(kinds)
    ]


def document(keys: Sequence[tuple[Key, bool]], active_kid: str) -> bytes:
    """A native jwks document; each key with (True) or without (False) its private members."""
    jwks = [key.private_jwk() if private else key.public_jwk() for key, private in keys]
    return json.dumps({"active_kid": active_kid, "keys": jwks}, indent=2).encode()


# -- a daemon on disk ------------------------------------------------------------------------


def _toml(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


class Workspace:
    """Source file, outputs, state and config of one daemon under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "src" / "keyset.json"
        self.out = root / "out"
        self.state = root / "state"
        self.config_path = root / "keysetd.toml"
        self.log_path = root / "keysetd.log"
        self.source.parent.mkdir(parents=True)
        self.out.mkdir()
        self._temp = self.source.with_name(".keyset.json.new")

    def write_config(
        self, outputs: Sequence[dict[str, Any]], notify: Sequence[dict[str, Any]] = ()
    ) -> None:
        lines = [
            f"state_dir = {_toml(str(self.state))}",
            'log_format = "json"',
            "",
            "[source]",
            'type = "file"',
            f"path = {_toml(str(self.source))}",
            'refresh_interval = "1h"',
        ]
        for kind, tables in (("outputs", outputs), ("notify", notify)):
            for table in tables:
                lines += ["", f"[[{kind}]]"]
                lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def four_outputs(self) -> list[dict[str, Any]]:
        """jwks, a second jwks, pem and keyset, under ``out``."""
        return [
            {"type": "jwks", "path": str(self.out / "jwks.json")},
            {"type": "jwks", "name": "jwks-gateway", "path": str(self.out / "gateway.json")},
            {"type": "pem", "path": str(self.out / "pem")},
            {"type": "keyset", "path": str(self.out / "keyset.json")},
        ]

    def stage(self, data: bytes) -> None:
        """Write the next source next to it (the first half of an atomic replace)."""
        self._temp.write_bytes(data)

    def publish(self) -> int:
        """Rename the staged source into place; returns ``time.time_ns()`` taken just before."""
        started = time.time_ns()
        os.replace(self._temp, self.source)
        return started

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [*keysetd_command(), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(rest.split()[0])
    return found


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }
