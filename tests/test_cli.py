"""The CLI contract: commands, output and exit codes (0 ok, 1 runtime failure, 2 config)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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


#: Runs keysetd's CLI with the daemon extra's modules unimportable; reports what it loaded.
_BLOCKED_RUN = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from keysetd.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _cli_without_daemon_extra(*args: str) -> tuple[str, int, set[str]]:
    """stdout, exit code and loaded modules of ``keysetd ARGS`` in a verifier-only install."""
    from keysetd.extras import DAEMON_MODULES

    blocked = ",".join(sorted(DAEMON_MODULES | {"nacl", "pydantic", "pydantic_settings"}))
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, blocked, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return done.stdout, report["code"], set(report["modules"])


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    done = subprocess.run(
        [*KEYSETD, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"keysetd {version('keysetd')}\n"
    out, code, modules = _cli_without_daemon_extra("--version")
    assert (out, code) == (done.stdout, 0)
    assert not {m for m in modules if m.split(".")[0] in ("nkeys", "tenacity", "watchfiles")}
    assert "keysetd.config" not in modules and "keysetd.pipeline" not in modules


def test_help_stays_light_without_importlib_metadata() -> None:
    """Only ``--version`` loads importlib.metadata: ``--help`` and every command start as before."""
    out, code, modules = _cli_without_daemon_extra("--help")
    assert code == 0 and "--version" in out
    assert "importlib.metadata" not in modules
    assert "keysetd.config" not in modules


def _plan(env: Env, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    done = env.keysetd("plan", "--json", "-c", str(env.config_path), *args)
    return done, json.loads(done.stdout) if done.returncode == 0 else None


def test_plan_json_is_the_text_plan_as_one_object(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(policy={"activation_delay": "1h", "retention": "1d"})
    env.keysetd("once", "-c", str(env.config_path), check=True)
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))  # es-b pending
    done, doc = _plan(env)
    assert done.returncode == 0, done.stderr
    text = env.keysetd("plan", "-c", str(env.config_path), check=True).stdout
    assert doc["from"] == "source" and abs(doc["at"] - time.time()) < 60
    assert doc["active_kid"] == "es-a" and f"signers use:   {doc['active_kid']}" in text
    assert doc["published_kids"] == ["es-a", "es-b"]
    assert f"verifiers get: {', '.join(doc['published_kids'])}" in text
    assert len(doc["fingerprint"]) == 64 and f"fingerprint:   {doc['fingerprint']}" in text
    decisions = {d["kid"]: d for d in doc["decisions"]}
    assert set(decisions) == {"es-a", "es-b"}
    assert set(decisions["es-b"]) == {"kid", "state", "reason", "until"}
    assert decisions["es-b"]["state"] == "pending"
    assert 3500 < decisions["es-b"]["until"] - doc["at"] <= 3600
    for d in doc["decisions"]:
        assert f"{d['kid']:24} {d['state']:10} {d['reason']}" in text
    assert doc["next_change_at"] == decisions["es-b"]["until"]
    assert "next change:" in text
    assert doc["fleet"] is None
    assert not (env.state / "history.json").read_text().count("es-b")  # plan wrote nothing

    env.source.unlink()  # planned from the last-known-good, as the text form is
    done, doc = _plan(env)
    assert done.returncode == 0, done.stderr
    assert doc["from"] == "last-known-good" and "planning from the last-known-good" in done.stderr
    assert doc["published_kids"] == ["es-a"]


def test_plan_json_exit_codes_are_the_text_forms(env: Env, keys: dict[str, Any]) -> None:
    env.config()  # the source does not exist and nothing was published: 1, as in text
    for args in (["--json"], []):
        done = env.keysetd("plan", *args, "-c", str(env.config_path))
        assert done.returncode == 1, (args, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr
    env.config_path.write_text('[source]\ntype = "file"\npath = "/x"\nfoo = 1\n')
    for args in (["--json"], []):
        done = env.keysetd("plan", *args, "-c", str(env.config_path))
        assert done.returncode == 2 and "source.foo: unknown key" in done.stderr


def test_plan_json_in_fleet_mode_names_the_fleet(env: Env, keys: dict[str, Any]) -> None:
    """etcd unreachable: the plan comes from the last snapshot, and the JSON says so."""
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    fleet = {
        "endpoints": ["http://127.0.0.1:1"],  # nothing listens on port 1
        "prefix": "/keysetd/cli-test",
        "replica_id": "r-cli",
        "lease_ttl": "2s",  # one store call may take 1 s
    }
    env.config(fleet=fleet)
    done, doc = _plan(env)
    assert done.returncode == 0, done.stderr
    text = env.keysetd("plan", "-c", str(env.config_path), check=True).stdout
    shown = doc["fleet"]
    assert shown["replica_id"] == "r-cli" and "replica r-cli, from the last snapshot" in text
    assert shown["planned_from"] == "last snapshot" and shown["store"] == "unreachable"
    assert "127.0.0.1:1" in shown["error"]
    assert shown["live_replicas"] == [] and "live replicas: -" in text
    assert shown["waiting_for"] == [] and shown["leader"] is None
    assert doc["published_kids"] == ["es-a"]


@pytest.mark.parametrize("command", ["status --json", "plan --json", "plan"])
def test_a_reader_that_closes_the_pipe_of_status_or_plan(env: Env, command: str) -> None:
    """`keysetd plan --json | head -1`: quiet, exit as the pipe's reader sees fit."""
    one = public(jwk("ES256", "k"))
    keyset = {"keys": [{**one, "kid": f"key-{i:05d}-{'x' * 40}"} for i in range(2000)]}
    env.write_source(json.dumps(keyset).encode())
    env.config(outputs=[{"type": "jwks", "path": str(env.jwks)}])
    if command.startswith("status"):
        env.keysetd("once", "-c", str(env.config_path), check=True, timeout=120)
    done = subprocess.run(
        f"{' '.join(KEYSETD)} {command} -c {env.config_path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    first = "{" if "--json" in command else "plan from the source at "
    assert done.stdout.startswith(first) and done.stdout.count("\n") == 1, done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
