"""CLI paths that name a FIFO are refused by name at once, as the file source does (issue 12).

Each command runs as a real process with a deadline: before the fix, opening the
FIFO blocked until a writer came, so every one of these hung.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEYSETD, Env
from tests.keys import jwks_doc

DEADLINE = 20.0


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def keysetd(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYSETD, *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_validate_refuses_a_fifo(fifo: Path) -> None:
    done = keysetd("validate", str(fifo))
    assert done.returncode == 1, done.stderr
    assert f"cannot read {fifo}: not a regular file (a FIFO)" in done.stderr


def test_validate_still_reads_stdin(keys: dict[str, Any]) -> None:
    done = keysetd("validate", "-", stdin=jwks_doc(keys["es-a"], active="es-a"))
    assert done.returncode == 0, done.stderr
    assert "stdin: valid keyset" in done.stdout


def test_verify_refuses_a_fifo_as_jwks(fifo: Path) -> None:
    done = keysetd("verify", "--jwks", str(fifo), "a.b.c")
    assert done.returncode == 2, done.stderr
    assert f"verifier keyset {fifo}: cannot read the file: not a regular file (a FIFO)" in (
        done.stderr
    )


@pytest.mark.parametrize("command", ["run", "once", "check-config", "status", "plan"])
def test_a_fifo_as_config_is_refused(fifo: Path, command: str) -> None:
    done = keysetd(command, "--config", str(fifo))
    assert done.returncode == 2, done.stderr
    assert f"cannot read config {fifo}: not a regular file (a FIFO)" in done.stderr


def test_a_fifo_as_config_from_the_environment_is_refused(fifo: Path) -> None:
    done = subprocess.run(
        [*KEYSETD, "check-config"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        env={**os.environ, "KEYSETD_CONFIG": str(fifo)},
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot read config {fifo}" in done.stderr


def test_rotate_and_evidence_refuse_fifos(env: Env, keys: dict[str, Any], fifo: Path) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    env.keysetd("once", "--config", str(env.config_path), check=True)
    done = env.keysetd(
        "evidence",
        "--config",
        str(env.config_path),
        "--event-id",
        "e1",
        "--workdir",
        str(env.root / "evidence"),
        "--previous-summary",
        str(fifo),
        timeout=DEADLINE,
    )
    assert done.returncode == 1, done.stderr
    assert f"cannot read {fifo}: not a regular file (a FIFO)" in done.stderr

    env.source.unlink()
    os.mkfifo(env.source)
    done = env.keysetd("rotate", "--config", str(env.config_path), timeout=DEADLINE)
    assert done.returncode == 1, done.stderr
    assert f"cannot read {env.source}: not a regular file (a FIFO)" in done.stderr
