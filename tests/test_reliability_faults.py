"""Write failures on real filesystems: read-only remount, full disk, vanished parent.

Each fault hits one output (verifier or signer) of jwks + pem + keyset: the
cycle fails with an error naming the path, every output stays old (the cycle
stages every changed file before it replaces any) and the state consistent,
no temp file is left, and the next cycle succeeds once the fault is gone. The faults are real:
a tmpfs remounted read-only (root ignores chmod), a 64 KiB tmpfs filled up.
Mounting needs CAP_SYS_ADMIN; without it these tests skip and say so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysetd.audit_read import verify
from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.pemdir import check_pem_dir, visible

FAULTED = ("jwks", "pem", "keyset")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points to unmount at teardown; skips the test when mounting is not permitted."""
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {exc}")
    subprocess.run(["umount", str(probe)], check=True, timeout=10)
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False, timeout=10)


def tmpfs(mounted: list[Path], point: Path, size: str = "1m") -> Path:
    point.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point))
    mounted.append(point)
    return point


class Workspace:
    """jwks, pem and keyset outputs, each in its own directory (the faulted one on a tmpfs)."""

    def __init__(
        self, env: Env, faulted: str, mounted: list[Path] | None, size: str = "1m"
    ) -> None:
        self.env = env
        self.keys = [jwk("ES256", f"f{i}") for i in range(3)]
        self.dirs = {name: env.out / name for name in FAULTED}
        for name, directory in self.dirs.items():
            if name == faulted and mounted is not None:
                tmpfs(mounted, directory, size)
            else:
                directory.mkdir()
        self.paths = {
            "jwks": self.dirs["jwks"] / "jwks.json",
            "pem": self.dirs["pem"] / "pem",
            "keyset": self.dirs["keyset"] / "keyset.json",
        }
        self.faulted = faulted
        self.fault_dir = self.dirs[faulted]
        env.config(outputs=[{"type": n, "path": str(p)} for n, p in self.paths.items()])
        self.generation = 0
        self.write()
        self.pipeline = Pipeline.open(load_config(env.config_path, environ={}))

    def write(self) -> None:
        gen = self.generation
        current, previous = self.keys[gen % 3], self.keys[(gen - 1) % 3]
        self.env.write_source(jwks_doc(current, previous, active=current["kid"]))

    def next(self) -> None:
        self.generation += 1
        self.write()

    @property
    def expected_active(self) -> str:
        return str(self.keys[self.generation % 3]["kid"])

    def active(self) -> str:
        return str(json.loads(self.paths["keyset"].read_bytes())["active_kid"])

    def seen(self) -> dict[str, Any]:
        """Each output as its consumers read it now (None: not there)."""
        pem = self.paths["pem"]
        return {
            "jwks": self.paths["jwks"].read_bytes() if self.paths["jwks"].exists() else None,
            "pem": visible(pem) if pem.exists() else None,
            "keyset": self.paths["keyset"].read_bytes() if self.paths["keyset"].exists() else None,
        }

    def check_consistent(self) -> None:
        """Outputs parse, the signer's active kid is published; a vanished output is skipped."""
        verifier_kids: list[set[str]] = []
        if self.paths["jwks"].exists() or self.faulted != "jwks":
            doc = json.loads(self.paths["jwks"].read_bytes())
            verifier_kids.append({k["kid"] for k in doc["keys"]})
        if self.paths["pem"].exists() or self.faulted != "pem":
            verifier_kids.append(check_pem_dir(self.paths["pem"]))
        store = StateStore(self.env.state)
        if self.paths["keyset"].exists() or self.faulted != "keyset":
            active = self.active()
            assert all(active in kids for kids in verifier_kids), (active, verifier_kids)
            assert active in store.load_history()
        assert store.load_lkg() is not None
        assert verify(store.audit_path).ok
        leftovers = [p for p in self.env.out.rglob("*") if ".keysetd-" in p.name]
        assert leftovers == []


def fail_then_recover(ws: Workspace, fault_reason: str, clear: Any) -> None:
    """The faulted cycle fails naming the path; clearing the fault lets the next one succeed."""
    lkg_before = StateStore(ws.env.state).load_lkg()
    seen_before = ws.seen()
    ws.next()
    result = ws.pipeline.cycle()
    assert not result.ok and result.stage == "commit", result
    assert result.error is not None
    assert str(ws.fault_dir) in result.error and fault_reason in result.error, result.error
    status = StateStore(ws.env.state).load_status() or {}
    assert status["last_error"] == result.error
    lkg_after = StateStore(ws.env.state).load_lkg()
    assert lkg_before is not None and lkg_after is not None
    assert lkg_after.data == lkg_before.data, "a failed cycle must not move the last-known-good"
    seen_after = ws.seen()
    if not ws.fault_dir.exists():  # the vanished output is gone with its directory
        seen_before[ws.faulted] = seen_after[ws.faulted]
    assert seen_after == seen_before, "every output must stay old"
    ws.check_consistent()
    clear()
    result = ws.pipeline.cycle()
    assert result.ok, result
    assert ws.active() == ws.expected_active
    ws.check_consistent()


def publish_first(ws: Workspace) -> None:
    assert ws.pipeline.cycle().ok
    assert ws.active() == ws.expected_active


@pytest.mark.parametrize("faulted", FAULTED)
def test_output_directory_turns_read_only(env: Env, mounts: list[Path], faulted: str) -> None:
    ws = Workspace(env, faulted, mounts)
    publish_first(ws)
    _mount("-o", "remount,ro", str(ws.fault_dir))
    fail_then_recover(
        ws, "Read-only file system", lambda: _mount("-o", "remount,rw", str(ws.fault_dir))
    )


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 4096
        for _ in range(100_000):  # bounded: 400 MB, far over any tmpfs used here
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for _ in range(4096):  # the last partial page, byte by byte
            try:
                os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("faulted", FAULTED)
def test_full_disk(env: Env, mounts: list[Path], faulted: str) -> None:
    ws = Workspace(env, faulted, mounts, size="64k")
    publish_first(ws)
    filler = _fill(ws.fault_dir)
    if faulted == "pem":  # the old version stays whole while the new one cannot be written
        assert len(check_pem_dir(ws.paths["pem"])) == 2
    fail_then_recover(ws, "No space left on device", filler.unlink)


@pytest.mark.parametrize("faulted", FAULTED)
def test_parent_directory_vanishes(env: Env, faulted: str) -> None:
    ws = Workspace(env, faulted, None)
    publish_first(ws)
    shutil.rmtree(ws.fault_dir)
    fail_then_recover(ws, "No such file or directory", ws.fault_dir.mkdir)


def test_daemon_reports_and_recovers_from_read_only_output(env: Env, mounts: list[Path]) -> None:
    """A running daemon: status names the path while the fault lasts; backoff retries after."""
    keys = [jwk("ES256", "d0"), jwk("ES256", "d1")]
    fault_dir = tmpfs(mounts, env.out / "ro")
    jwks_path = fault_dir / "jwks.json"
    env.write_source(jwks_doc(keys[0], active="d0"))
    env.config(
        outputs=[
            {"type": "jwks", "path": str(jwks_path)},
            {"type": "keyset", "path": str(env.signer)},
        ]
    )
    env.start()
    wait_for(env.signer.exists, what="first publish")
    _mount("-o", "remount,ro", str(fault_dir))
    env.write_source(jwks_doc(keys[1], keys[0], active="d1"))
    store = StateStore(env.state)

    def failing() -> str | None:
        error = (store.load_status() or {}).get("last_error")
        return error if error and str(jwks_path) in error else None

    error = wait_for(failing, what="the read-only fault in status")
    assert "Read-only file system" in error
    assert json.loads(env.signer.read_bytes())["active_kid"] == "d0"  # never ahead of verifiers
    _mount("-o", "remount,rw", str(fault_dir))
    wait_for(
        lambda: json.loads(env.signer.read_bytes())["active_kid"] == "d1",
        timeout=15,
        what="the retry after the fault is gone",
    )
    assert {k["kid"] for k in json.loads(jwks_path.read_bytes())["keys"]} == {"d0", "d1"}
    assert env.procs[-1].poll() is None
    env.procs[-1].send_signal(signal.SIGTERM)
    assert env.procs[-1].wait(timeout=10) == 0
    assert verify(store.audit_path).ok


def test_full_state_dir_leaves_outputs_and_state_consistent(env: Env, mounts: list[Path]) -> None:
    """state_dir on a full disk: whatever the cycle does, no file is torn and nothing is lost."""
    keys = [jwk("ES256", "s0"), jwk("ES256", "s1")]
    tmpfs(mounts, env.state, size="64k")
    env.write_source(jwks_doc(keys[0], active="s0"))
    env.config()
    pipeline = Pipeline.open(load_config(env.config_path, environ={}))
    assert pipeline.cycle().ok
    filler = _fill(env.state)
    env.write_source(jwks_doc(keys[1], keys[0], active="s1"))
    outcome = pipeline.cycle()  # a failed state write fails the cycle; it never raises
    assert not outcome.ok and "state_dir" in (outcome.error or "")
    assert "No space left on device" in (outcome.error or "")
    store = StateStore(env.state)
    for name in ("history.json", "last-known-good.json", "status.json"):
        json.loads((env.state / name).read_bytes())
    assert store.load_lkg() is not None
    assert verify(store.audit_path).ok
    signer_active = json.loads(env.signer.read_bytes())["active_kid"]
    published = {k["kid"] for k in json.loads(env.jwks.read_bytes())["keys"]}
    assert signer_active in published
    assert [p for p in env.state.iterdir() if ".keysetd-" in p.name] == []
    filler.unlink()
    assert pipeline.cycle(force=True).ok  # the same process recovers once space is freed
    assert json.loads(env.signer.read_bytes())["active_kid"] == "s1"
    os.sync()


def test_daemon_full_disk_during_the_pem_switch_leaves_every_output_old(
    env: Env, mounts: list[Path]
) -> None:
    """The issue's case: jwks new, pem half written, status old. Now: all old, status true."""
    keys = [jwk("ES256", "e0"), jwk("ES256", "e1"), jwk("ES256", "e2")]
    pem_fs = tmpfs(mounts, env.out / "small", size="64k")
    outputs = env.outputs_with_pem()
    outputs[1]["path"] = str(pem_fs / "pem")
    env.write_source(jwks_doc(keys[0], keys[1], active="e0"))
    env.config(outputs=outputs)
    env.start()
    store = StateStore(env.state)
    wait_for(lambda: (store.load_status() or {}).get("active_kid") == "e0", what="first publish")
    before = {p: p.read_bytes() for p in (env.jwks, env.signer)}
    pem_before = visible(pem_fs / "pem")
    filler = _fill(pem_fs)
    env.write_source(jwks_doc(keys[2], keys[0], active="e2"))
    error = wait_for(lambda: (store.load_status() or {}).get("last_error"), what="the failure")
    assert str(pem_fs / "pem") in error and "No space left on device" in error, error
    assert {p: p.read_bytes() for p in before} == before, "jwks or keyset moved ahead"
    assert visible(pem_fs / "pem") == pem_before
    assert check_pem_dir(pem_fs / "pem") == {"e0", "e1"}
    status = store.load_status() or {}
    assert status["active_kid"] == "e0" and sorted(status["published_kids"]) == ["e0", "e1"]
    assert [p for p in env.out.rglob("*") if ".keysetd-" in p.name] == []
    assert env.procs[-1].poll() is None
    filler.unlink()
    env.procs[-1].send_signal(signal.SIGHUP)
    wait_for(
        lambda: (store.load_status() or {}).get("active_kid") == "e2",
        timeout=15,
        what="the publish once space is freed",
    )
    assert check_pem_dir(pem_fs / "pem") == {"e0", "e2"}
