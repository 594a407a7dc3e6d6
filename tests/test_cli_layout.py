"""The command line is split by stage; the offline commands load none of the config or
daemon code, so ``keysetd verify`` and ``validate`` start light whatever config imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jwt

from tests.keys import jwk, jwks_doc, public

ROOT = Path(__file__).resolve().parent.parent

#: Runs each command in argv (JSON) in one fresh interpreter; prints the keysetd modules loaded.
LOADED_BY = """
import json, sys
from keysetd.cli import main
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0, argv
print(json.dumps(sorted(m for m in sys.modules if m.startswith("keysetd"))))
"""

#: Modules a command that takes no config has no business loading.
CONFIG_AND_DAEMON = {
    "keysetd.config",
    "keysetd.strict",
    "keysetd.registry",
    "keysetd.pipeline",
    "keysetd.daemon",
    "keysetd.state",
}


def test_offline_commands_load_no_config_or_daemon_code(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    key = jwk("ES256", "es-1")
    jwks.write_bytes(jwks_doc(public(key)))
    token = jwt.encode({"sub": "alice"}, jwt.PyJWK(key).key, "ES256", headers={"kid": "es-1"})
    commands = [
        ["validate", str(jwks)],
        ["verify", "--jwks", str(jwks), token],
        ["keygen", "--alg", "EdDSA"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", LOADED_BY, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "keysetd.validate" in loaded  # the probe sees lazy imports
    assert loaded & CONFIG_AND_DAEMON == set()


def test_python_m_keysetd_cli_is_the_same_command_line() -> None:
    helps = [
        subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        for module in ("keysetd", "keysetd.cli")
    ]
    assert [h.returncode for h in helps] == [0, 0]
    assert helps[0].stdout == helps[1].stdout
    assert "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error." in (
        helps[0].stdout
    )
