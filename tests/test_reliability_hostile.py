"""A hostile filesystem: symlinks swapped in, squatted temp names, loose permissions.

keysetd never writes through a symlink it did not expect and never follows one
out of the directory it was configured with: a directory (or a parent) swapped
for a symlink after start-up is refused with an OutputError naming the path,
a symlink at an output's own name is replaced, not written through, and a taken
temp name is skipped, never opened. Strict mode refuses world-writable output
directories and a state_dir another user owns (``keysetd.fscheck``).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path

import pytest

from keysetd.atomic import open_directory, write_atomic
from keysetd.config import load_config
from keysetd.fscheck import filesystem_violations
from keysetd.pipeline import Pipeline
from tests.conftest import Env
from tests.keys import jwk, jwks_doc


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class Hostile:
    """jwks in out/pub/, pem in out/pub/pem/, keyset in out/sign/; a decoy dir elsewhere."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.keys = [jwk("ES256", f"h{i}") for i in range(3)]
        self.pub = env.out / "pub"
        self.sign = env.out / "sign"
        self.pub.mkdir()
        self.sign.mkdir()
        self.decoy = env.root / "decoy"
        self.decoy.mkdir()
        (self.decoy / "precious.pem").write_bytes(b"not keysetd's")
        (self.decoy / "keyset.json").write_bytes(b"not keysetd's")
        self.jwks = self.pub / "jwks.json"
        self.pem = self.pub / "pem"
        self.signer = self.sign / "keyset.json"
        env.config(
            outputs=[
                {"type": "jwks", "path": str(self.jwks)},
                {"type": "pem", "path": str(self.pem)},
                {"type": "keyset", "path": str(self.signer)},
            ]
        )
        self.generation = 0
        self.write()
        self.pipeline = Pipeline.open(load_config(env.config_path, environ={}))
        assert self.pipeline.cycle().ok

    def write(self) -> None:
        gen = self.generation
        current, previous = self.keys[gen % 3], self.keys[(gen - 1) % 3]
        self.env.write_source(jwks_doc(current, previous, active=current["kid"]))

    def next(self) -> None:
        self.generation += 1
        self.write()

    def swap_for_symlink(self, directory: Path, target: Path) -> Path:
        """Move ``directory`` aside and put a symlink to ``target`` at its name."""
        aside = directory.with_name(directory.name + ".moved")
        directory.rename(aside)
        directory.symlink_to(target, target_is_directory=True)
        return aside

    def restore(self, directory: Path, aside: Path) -> None:
        directory.unlink()
        aside.rename(directory)


def refused(hostile: Hostile, path: Path) -> str:
    result = hostile.pipeline.cycle()
    assert not result.ok and result.stage == "commit", result
    assert result.error is not None and str(path) in result.error, result.error
    assert "symlink" in result.error
    return result.error


@pytest.mark.parametrize("which", ["pub", "sign"])
def test_output_directory_swapped_for_a_symlink_is_refused(env: Env, which: str) -> None:
    hostile = Hostile(env)
    directory = hostile.pub if which == "pub" else hostile.sign
    decoy_before = tree(hostile.decoy)
    aside = hostile.swap_for_symlink(directory, hostile.decoy)
    hostile.next()
    refused(hostile, directory)
    assert tree(hostile.decoy) == decoy_before, "keysetd wrote through the symlink"
    hostile.restore(directory, aside)
    assert hostile.pipeline.cycle().ok
    active = json.loads(hostile.signer.read_bytes())["active_kid"]
    assert active == hostile.keys[1]["kid"]


def test_parent_of_output_directory_swapped_is_refused(env: Env) -> None:
    """A swap two levels up (out/ itself) is caught too: the directory resolves elsewhere."""
    hostile = Hostile(env)
    copy = env.root / "copy-of-out"
    copy.mkdir()
    (copy / "pub").mkdir()
    (copy / "sign").mkdir()
    before = tree(copy)
    aside = hostile.swap_for_symlink(env.out, copy)
    hostile.next()
    refused(hostile, hostile.pub)
    assert tree(copy) == before
    hostile.restore(env.out, aside)
    assert hostile.pipeline.cycle().ok


def test_pem_directory_swapped_keeps_foreign_pem_files(env: Env) -> None:
    """Stale-file removal must not delete *.pem files in the place a symlink points to."""
    hostile = Hostile(env)
    decoy_before = tree(hostile.decoy)
    aside = hostile.swap_for_symlink(hostile.pem, hostile.decoy)
    hostile.next()
    refused(hostile, hostile.pem)
    assert tree(hostile.decoy) == decoy_before
    assert (hostile.decoy / "precious.pem").exists()
    hostile.restore(hostile.pem, aside)
    assert hostile.pipeline.cycle().ok


def test_symlink_at_output_name_is_replaced_not_followed(env: Env) -> None:
    hostile = Hostile(env)
    decoy_before = tree(hostile.decoy)
    hostile.signer.unlink()
    hostile.signer.symlink_to(hostile.decoy / "keyset.json")
    kid_file = next(hostile.pem.glob("*.pem"))
    kid_file.unlink()
    kid_file.symlink_to(hostile.decoy / "precious.pem")
    result = hostile.pipeline.cycle()  # same source bytes: the drift is repaired
    assert result.ok, result
    assert not hostile.signer.is_symlink()
    # A pem name is keysetd's own link into the switched version (keysetd.atomicdir).
    assert os.readlink(kid_file) == f"..data/{kid_file.name}"
    assert kid_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert json.loads(hostile.signer.read_bytes())["active_kid"] == hostile.keys[0]["kid"]
    assert tree(hostile.decoy) == decoy_before


def test_directory_that_was_a_symlink_at_start_keeps_working(env: Env) -> None:
    """A symlink the operator configured (pinned at the first write) is not a hostile one."""
    real = env.root / "real-out"
    real.mkdir()
    linked = env.out / "linked"
    linked.symlink_to(real, target_is_directory=True)
    keys = [jwk("ES256", "l0"), jwk("ES256", "l1")]
    env.write_source(jwks_doc(keys[0], active="l0"))
    env.config(
        outputs=[
            {"type": "jwks", "path": str(linked / "jwks.json")},
            {"type": "keyset", "path": str(linked / "keyset.json")},
        ]
    )
    pipeline = Pipeline.open(load_config(env.config_path, environ={}))
    assert pipeline.cycle().ok
    env.write_source(jwks_doc(keys[1], keys[0], active="l1"))
    assert pipeline.cycle().ok
    assert json.loads((real / "keyset.json").read_bytes())["active_kid"] == "l1"
    # Re-pointed elsewhere after start: refused.
    other = env.root / "other-out"
    other.mkdir()
    linked.unlink()
    linked.symlink_to(other, target_is_directory=True)
    env.write_source(jwks_doc(keys[0], keys[1], active="l0"))
    result = pipeline.cycle()
    assert not result.ok and str(linked) in (result.error or "")
    assert list(other.iterdir()) == []


def test_squatted_temp_names_are_skipped_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    target = tmp_path / "jwks.json"
    target.write_bytes(b"old")
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(names))
    squat = tmp_path / ".jwks.json.keysetd-aaaaaaaaaaaa.keysetd.tmp"
    squat.symlink_to(victim)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert victim.read_bytes() == b"victim"
    assert squat.is_symlink()


def test_every_temp_name_squatted_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    target = tmp_path / "jwks.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(secrets, "token_hex", lambda _n: "cccccccccccc")
    (tmp_path / ".jwks.json.keysetd-cccccccccccc.keysetd.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert victim.read_bytes() == b"victim"


def test_open_directory_refuses_any_symlink_component(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    fd = open_directory(real / "sub")
    os.close(fd)
    for path in (tmp_path / "link" / "sub", tmp_path / "link"):
        with pytest.raises(OSError) as caught:
            open_directory(path)
        assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)


# -- strict mode: keysetd.fscheck ----------------------------------------------------------


def _config(env: Env) -> Path:
    env.write_source(jwks_doc(jwk("ES256", "s0"), active="s0"))
    return env.config(outputs=env.outputs_with_pem())


def test_fscheck_clean_config_has_no_violations(env: Env) -> None:
    _config(env)
    env.state.mkdir(mode=0o700)
    env.pem.mkdir()
    assert filesystem_violations(load_config(env.config_path, environ={})) == []


def test_fscheck_refuses_world_writable_output_directories(env: Env) -> None:
    _config(env)
    env.pem.mkdir()
    env.out.chmod(0o1777)  # even with the sticky bit, like /tmp
    env.pem.chmod(0o777)
    found = filesystem_violations(load_config(env.config_path, environ={}))
    assert any(str(env.out) in v and "world-writable" in v for v in found), found
    assert any(str(env.pem) in v and v.startswith("outputs.1.path") for v in found)


def test_fscheck_refuses_state_dir_of_another_user(env: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    _config(env)
    env.state.mkdir(mode=0o700)
    os.chown(env.state, 65534, 65534)
    found = filesystem_violations(load_config(env.config_path, environ={}))
    assert found == [
        f"state_dir: {env.state} is owned by uid 65534, not by keysetd's uid {os.geteuid()}"
    ]


def test_fscheck_refuses_group_writable_state_dir(env: Env) -> None:
    _config(env)
    env.state.mkdir()
    env.state.chmod(0o770)
    found = filesystem_violations(load_config(env.config_path, environ={}))
    assert len(found) == 1 and "group- or world-writable" in found[0], found
