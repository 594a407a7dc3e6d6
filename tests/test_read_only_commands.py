"""``keysetd plan`` and ``keysetd evidence`` only read state_dir, and trust only a verified LKG.

The pipeline they build is given a StateStore over state_dir as it is: no
directory made, no lock, no file written. The read-only state_dir is real:
mode 0500 for an unprivileged user, a read-only bind mount in a private mount
namespace for root (who ignores modes); either way nothing may change.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysetd.model import canonical_json
from keysetd.state import StateStore
from tests.conftest import KEYSETD, Env
from tests.keys import jwk, jwks_doc


def tree(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``directory`` (itself included): mode, mtime and bytes."""
    found: dict[str, tuple[int, int, bytes]] = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        found[str(path.relative_to(directory))] = (info.st_mode, info.st_mtime_ns, data)
    return found


#: Run "$@" with the directory "$0" bind-mounted read-only over itself (private namespace).
_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'


def in_read_only_mount(directory: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", _READ_ONLY, str(directory), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def read_only(env: Env) -> Iterator[Any]:
    """A runner of ``keysetd <args>`` that sees ``env.state`` read-only."""
    if os.geteuid() != 0:
        env.state.chmod(0o500)
        try:
            yield env.keysetd
        finally:
            env.state.chmod(0o700)
        return
    namespaces = shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-m", "true"], check=False, timeout=10).returncode == 0
    )
    if not namespaces:
        pytest.skip("root without mount namespaces: cannot make state_dir read-only")
    probe = in_read_only_mount(env.state, ["touch", str(env.state / "probe")])
    assert probe.returncode != 0 and "Read-only" in probe.stderr, "the mount is really read-only"
    yield lambda *args: in_read_only_mount(env.state, [*KEYSETD, *args])


@pytest.fixture
def published(env: Env, keys: dict[str, Any]) -> Env:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(policy={"activation_delay": "1h"})
    env.keysetd("once", "-c", str(env.config_path), check=True)
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))  # es-b pending
    return env


def test_plan_and_evidence_leave_a_read_only_state_dir_untouched(
    published: Env, read_only: Any
) -> None:
    env = published
    before = tree(env.state)
    plan = read_only("plan", "-c", str(env.config_path))
    assert plan.returncode == 0, plan.stderr
    assert "signers use:   es-a" in plan.stdout and "pending" in plan.stdout
    work = env.root / "evidence"
    evidence = read_only(
        "evidence", "-c", str(env.config_path), "--event-id", "e1", "--workdir", str(work)
    )
    assert evidence.returncode == 0, evidence.stderr
    assert (work / "e1" / "summary.json").exists()
    env.source.unlink()  # plan falls back to the last-known-good, still reading only
    fallback = read_only("plan", "-c", str(env.config_path))
    assert fallback.returncode == 0, fallback.stderr
    assert "plan from the last-known-good" in fallback.stdout
    assert tree(env.state) == before


def test_plan_and_evidence_create_no_state_dir(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    plan = env.keysetd("plan", "-c", str(env.config_path))
    assert plan.returncode == 0, plan.stderr
    evidence = env.keysetd(
        "evidence", "-c", str(env.config_path), "--event-id", "e1", "--workdir", str(env.root)
    )
    assert evidence.returncode == 0, evidence.stderr  # of the live fetch: no state needed
    assert json.loads((env.root / "e1" / "summary.json").read_bytes())["fetched_live"] is True
    env.source.unlink()
    evidence = env.keysetd(
        "evidence", "-c", str(env.config_path), "--event-id", "e2", "--workdir", str(env.root)
    )
    assert evidence.returncode == 1 and "nothing published to fall back on" in evidence.stderr
    assert not env.state.exists()


def forge_last_known_good(env: Env) -> Path:
    """Swap the last-known-good for another valid keyset: well-formed, not the one recorded."""
    store = StateStore(env.state)
    genuine = store.load_lkg()
    assert genuine is not None
    other = jwks_doc(jwk("ES256", "intruder"), active="intruder")
    forged = {
        "data": base64.b64encode(other).decode(),
        "format": genuine.format,
        "origin": genuine.origin,
        "fetched_at": genuine.fetched_at,
        "fingerprint": genuine.fingerprint,
    }
    store.lkg_path.write_bytes(canonical_json(forged) + b"\n")
    return store.lkg_path


def test_evidence_refuses_an_untrusted_last_known_good_by_name(published: Env) -> None:
    env = published
    lkg_path = forge_last_known_good(env)
    work = env.root / "evidence"
    done = env.keysetd(
        "evidence", "-c", str(env.config_path), "--event-id", "e1", "--workdir", str(work)
    )
    assert done.returncode == 1, done.stdout
    assert f"last-known-good ({lkg_path}) does not match the digest recorded" in done.stderr
    assert not work.exists()
    assert "intruder" not in done.stdout + done.stderr


def test_plan_refuses_an_untrusted_last_known_good_by_name(published: Env) -> None:
    env = published
    lkg_path = forge_last_known_good(env)
    env.source.unlink()  # the source fails: plan would fall back to the last-known-good
    done = env.keysetd("plan", "-c", str(env.config_path))
    assert done.returncode == 1, done.stdout
    assert f"last-known-good ({lkg_path}) does not match the digest recorded" in done.stderr
    assert "intruder" not in done.stdout
