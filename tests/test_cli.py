"""The CLI contract: commands, output and exit codes (0 ok, 1 runtime failure, 2 config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import KEYSETD, Env
from tests.keys import jwk, jwks_doc, public


def test_once_publishes_and_exits_0(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert "outputs current" in done.stdout
    assert json.loads(env.signer.read_bytes())["active_kid"] == "es-a"


def test_once_with_bad_source_exits_1_and_keeps_outputs(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    assert env.keysetd("once", "-c", str(env.config_path)).returncode == 0
    before = env.snapshot_outputs()
    env.write_source(jwks_doc({**keys["es-b"], "alg": "none"}, active="es-b"))
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 1
    assert "es-b" in done.stderr and "alg-none" in done.stderr
    assert env.snapshot_outputs() == before


def test_config_errors_exit_2(env: Env) -> None:
    env.config_path.write_text('[source]\ntype = "file"\npath = "/x"\nfoo = 1\n')
    for command in ("once", "check-config", "run", "status"):
        done = env.keysetd(command, "-c", str(env.config_path))
        assert done.returncode == 2, (command, done.stderr)
        assert "source.foo: unknown key" in done.stderr
    assert env.keysetd("once").returncode == 2  # no config at all


def test_keysetd_config_variable(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    done = env.keysetd("check-config", env={"KEYSETD_CONFIG": str(env.config_path)})
    assert done.returncode == 0, done.stderr
    assert "output keyset: keyset" in done.stdout and "mode 0600" in done.stdout


def test_validate_file_and_stdin(env: Env, keys: dict[str, Any]) -> None:
    env.source.write_bytes(jwks_doc(keys["es-a"], keys["ed-a"], active="es-a"))
    done = env.keysetd("validate", str(env.source))
    assert done.returncode == 0, done.stderr
    assert "2 key(s)" in done.stdout and "es-a" in done.stdout
    assert keys["es-a"]["d"] not in done.stdout
    bad = jwks_doc({**keys["es-a"], "alg": "none"}, {**keys["ed-a"], "kid": "es-a"})
    piped = subprocess.run(
        [*KEYSETD, "validate", "-"], input=bad, capture_output=True, timeout=30, check=False
    )
    assert piped.returncode == 1
    out = piped.stdout.decode()
    assert "alg-none" in out and "duplicate-kid" in out
    assert keys["es-a"]["d"] not in out and keys["ed-a"]["d"] not in out


def test_status_json_fields(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], keys["ed-a"], active="es-a"))
    env.config()
    env.keysetd("once", "-c", str(env.config_path), check=True)
    done = env.keysetd("status", "--json", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["active_kid"] == "es-a"
    assert doc["published_kids"] == ["es-a", "ed-a"]
    assert doc["last_error"] is None
    assert 0 <= doc["lkg_age_seconds"] < 60
    assert len(doc["fingerprint"]) == 64
    env.write_source(b"{")
    env.keysetd("once", "-c", str(env.config_path))
    doc = json.loads(env.keysetd("status", "--json", "-c", str(env.config_path)).stdout)
    assert "malformed" in doc["last_error"]
    assert doc["active_kid"] == "es-a"


def test_plugins_lists_builtins_with_their_distribution() -> None:
    done = subprocess.run(
        [*KEYSETD, "plugins"], capture_output=True, text=True, timeout=30, check=True
    )
    for name in ("file", "command", "env", "jwks", "keyset", "rgs", "pem", "signal", "http"):
        assert f" {name} " in done.stdout
    assert "keysetd 0.1.0" in done.stdout


def test_keygen_prints_a_private_jwk_that_validates(env: Env) -> None:
    done = env.keysetd("keygen", "--alg", "EdDSA", "--kid", "fresh", check=True)
    key = json.loads(done.stdout)
    assert key["kid"] == "fresh" and key["crv"] == "Ed25519" and "d" in key
    env.source.write_text(json.dumps({"keys": [key]}))
    assert env.keysetd("validate", str(env.source)).returncode == 0


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "keysetd"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    assert "usage: keysetd" in done.stdout and "check-config" in done.stdout


def test_a_reader_that_closes_the_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`keysetd validate big.json | head -1` (or `status | head`): quiet, as cat is."""
    one = public(jwk("ES256", "k"))
    doc = {"keys": [{**one, "kid": f"key-{i:05d}-{'x' * 60}"} for i in range(3000)]}
    big = tmp_path / "big.json"
    big.write_text(json.dumps(doc))  # ~100 lines of output per 64 KiB pipe buffer: it fills
    done = subprocess.run(
        f"{sys.executable} -m keysetd validate {big} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.startswith(str(big)), done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
