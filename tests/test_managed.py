"""Managed rotation writes back only through the WritableSource capability.

``[rotation]`` and ``keysetd rotate`` share one write path (keysetd.managed);
a source without the capability is a ConfigError naming its type.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.errors import ConfigError
from keysetd.managed import writable_source, write_source
from keysetd.pipeline import Pipeline
from keysetd.plugin import WritableSource
from keysetd.sources.env import EnvSource, EnvSourceConfig
from keysetd.sources.file import FileSource, FileSourceConfig
from keysetd.state import StateStore
from keysetd.validate import check
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.test_daemon import events as log_events


def test_the_file_source_is_writable_and_writes_only_what_it_read(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    source = FileSource(FileSourceConfig(type="file", path=path))
    assert isinstance(source, WritableSource)
    assert source.missing()
    assert source.replace_if_unchanged(None, b"first") and path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o600
    assert not source.replace_if_unchanged(None, b"second"), "it exists now"
    path.write_bytes(b"edited by an operator")
    assert not source.replace_if_unchanged(b"first", b"second")
    assert path.read_bytes() == b"edited by an operator"
    assert source.replace_if_unchanged(b"edited by an operator", b"second")
    assert path.read_bytes() == b"second" and not source.missing()


def test_write_source_renders_the_keyset_the_source_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    source = FileSource(FileSourceConfig(type="file", path=path))
    key = jwk("ES256", "k1")
    assert write_source(source, None, check(jwks_doc(key, active="k1"), "jwks"))
    assert check(source.fetch().data, "auto").active_kid == "k1"


def env_source_config(env: Env, **extra: Any) -> Path:
    return env.config(source={"type": "env", "var": "KEYSETD_TEST_KEYSET"}, **extra)


def test_rotate_on_a_source_keysetd_cannot_write_names_its_type(env: Env) -> None:
    env_source_config(env)
    done = env.keysetd("rotate", "--alg", "ES256", "-c", str(env.config_path))
    assert done.returncode == 2, done.stdout
    assert "source type 'env' cannot be written by keysetd" in done.stderr


def test_rotation_on_a_source_keysetd_cannot_write_names_its_type(env: Env) -> None:
    """Whatever the config loader lets through, the pipeline needs the capability."""
    env.config(rotation={"every": "1h"})
    config = load_config(env.config_path, environ={})
    assert isinstance(writable_source(config), FileSource)
    unwritable = dataclasses.replace(
        config, source_class=EnvSource, source=EnvSourceConfig(type="env")
    )
    with pytest.raises(ConfigError, match="source type 'env' cannot be written by keysetd"):
        Pipeline(unwritable, StateStore(env.state))
    with pytest.raises(ConfigError, match="'env'"):
        writable_source(unwritable)
    assert not env.state.exists()


def test_rotate_writes_through_the_capability(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    done = env.keysetd("rotate", "--alg", "ES256", "--kid", "es-new", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert f"to file:{env.source} as active_kid" in done.stdout
    assert json.loads(env.source.read_text())["active_kid"] == "es-new"
    again = env.keysetd("rotate", "--kid", "es-new", "-c", str(env.config_path))
    assert again.returncode == 1 and "es-new is already in" in again.stderr
    env.source.unlink()
    gone = env.keysetd("rotate", "-c", str(env.config_path))
    assert gone.returncode == 1 and f"cannot read {env.source}" in gone.stderr
    assert not env.source.exists()


def test_a_managed_source_that_is_a_symlink_fails_the_step_without_spinning(env: Env) -> None:
    """The write would replace the link and the compare could never match: refuse, back off."""
    real = env.root / "real-keyset.json"
    real.write_bytes(jwks_doc(jwk("ES256", "es-1"), active="es-1"))
    env.source.parent.mkdir(parents=True, exist_ok=True)
    env.source.symlink_to(real)
    env.config(rotation={"every": "1s"}, policy={"activation_delay": "0s"})
    env.start()
    wait_for(lambda: "es-1" in env.jwks.read_text() if env.jwks.exists() else False)
    deadline = time.monotonic() + 2.5
    wait_for(lambda: time.monotonic() >= deadline, timeout=5, what="2.5 s of the daemon")
    failed = log_events(env, "rotation_failed")
    assert failed and "not a symlink" in failed[0]["error"]
    assert len(failed) <= 5, len(failed)  # the refresh schedule, not a 10 ms spin
    assert env.source.is_symlink() and real.read_bytes().count(b"es-1") >= 1
    assert env.procs[0].poll() is None
