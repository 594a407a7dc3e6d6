"""A verifier-only install (``pip install keysetd``) is cryptography and PyJWT; the daemon's
dependencies are the ``daemon`` extra. The offline commands and the Verifier run with every
module of that extra made unimportable; a daemon command says which extra it needs."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from keysetd.extras import DAEMON_MODULES
from tests.keys import jwk, jwks_doc, public

ROOT = Path(__file__).resolve().parent.parent

#: Runs keysetd's CLI with the daemon extra's modules (and pydantic) unimportable.
WITHOUT_DAEMON_EXTRA = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from keysetd.cli import main
code = main(sys.argv[2:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(code)
"""


def _without_daemon_extra(*args: str) -> subprocess.CompletedProcess[str]:
    blocked = ",".join(sorted(DAEMON_MODULES | {"nacl", "pydantic", "pydantic_settings"}))
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DAEMON_EXTRA, blocked, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_core_dependencies_are_the_verifiers() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].strip().lower() for dep in project["dependencies"]}
    assert names == {"cryptography", "pyjwt"}
    daemon = {
        dep.split(">")[0].strip().replace("-", "_")
        for dep in project["optional-dependencies"]["daemon"]
    }
    assert daemon == DAEMON_MODULES


def test_verify_and_validate_run_without_the_daemon_extra(tmp_path: Path) -> None:
    key = jwk("ES256", "es-1")
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(jwks_doc(public(key)))
    private = ec.derive_private_key(
        int.from_bytes(jwt.utils.base64url_decode(key["d"]), "big"), ec.SECP256R1()
    )
    token = jwt.encode({"sub": "alice"}, private, algorithm="ES256", headers={"kid": "es-1"})

    done = _without_daemon_extra("verify", "--jwks", str(jwks), token)
    assert done.returncode == 0, done.stderr
    assert '"sub": "alice"' in done.stdout

    done = _without_daemon_extra("validate", str(jwks))
    assert done.returncode == 0, done.stderr

    done = _without_daemon_extra("plugins")
    assert done.returncode == 0, done.stderr
    assert "jwks" in done.stdout

    done = _without_daemon_extra("keygen", "--alg", "EdDSA", "--kid", "ed-1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kid"] == "ed-1"


def test_a_daemon_command_names_the_extra_it_needs(tmp_path: Path) -> None:
    source = tmp_path / "keyset.json"
    source.write_bytes(jwks_doc(jwk("ES256", "es-1")))
    config = tmp_path / "keysetd.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[source]\ntype = "file"\npath = "{source}"\n'
        f'[[outputs]]\ntype = "jwks"\npath = "{tmp_path / "jwks.json"}"\n'
    )
    for command in ("once", "run", "status", "check-config"):
        done = _without_daemon_extra(command, "--config", str(config))
        assert done.returncode == 2, (command, done.stderr)
        assert f"keysetd: {command} needs the daemon's dependencies" in done.stderr
        assert "pip install 'keysetd[daemon]'" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "jwks.json").exists()
    assert not (tmp_path / "state").exists()
