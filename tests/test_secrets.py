"""Key material never reaches a log line, an error, a repr, status or a public output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keysetd.errors import InvalidKeyset
from keysetd.formats import decode
from keysetd.validate import check
from tests.conftest import Env, wait_for
from tests.keys import assert_clean, b64u, jwk, jwks_doc, secrets_of
from tests.servers import free_port
from tests.test_operations import get


def bad_documents(keys: dict[str, dict[str, Any]]) -> list[bytes]:
    es, rs, oct_ = keys["es-b"], keys["rs-a"], jwk("HS256", "h1")
    short = {**oct_, "kid": "short", "k": b64u(b"0123456789abcdef")}
    return [
        jwks_doc({**es, "alg": "RS256"}, active="es-b"),
        jwks_doc({**es, "d": keys["es-c"]["d"]}, active="es-b"),
        jwks_doc({**rs, "d": rs["d"][:-4] + "AAAA"}, active="rs-a"),
        jwks_doc({**es, "kid": "es-a"}, active="es-a"),
        jwks_doc(es, es, active="es-b"),
        jwks_doc({**es, "x": "!!" + es["d"]}, active="es-b"),
        jwks_doc(short, active="short"),
        jwks_doc({**oct_, "alg": "ES256"}, active="h1"),
        b'{"active_kid": "zz", "keys": {"k1": "' + es["d"].encode() + b'"}}',
        jwks_doc(es, active="es-b")[:-30],
    ]


def test_errors_and_reprs_carry_no_key_material(keys: dict[str, dict[str, Any]]) -> None:
    secrets = [*secrets_of(keys["es-b"], keys["es-c"], keys["rs-a"]), keys["es-b"]["d"]]
    history = {"es-a": "0" * 64}
    for document in bad_documents(keys):
        with pytest.raises(InvalidKeyset) as info:
            check(document, history=history, require_active=True)
        assert_clean(str(info.value) + repr(info.value.problems), secrets, "an InvalidKeyset")
    keyset = decode(jwks_doc(keys["es-b"], keys["rs-a"], active="es-b"))
    assert_clean(repr(keyset) + repr(list(keyset)) + str(keyset.keys[0]), secrets, "a repr")


def test_daemon_logs_status_and_public_outputs_stay_clean(
    env: Env, keys: dict[str, dict[str, Any]]
) -> None:
    secrets = secrets_of(keys["es-a"], keys["es-b"], keys["es-c"], keys["rs-a"])
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    pem_dir = env.pem
    port = free_port()
    env.config(server={"listen": f"127.0.0.1:{port}"}, outputs=env.outputs_with_pem())
    env.start()
    wait_for(env.signer.exists, what="first publish")
    for number, document in enumerate(bad_documents(keys), start=1):
        env.write_source(document)
        wait_for(lambda n=number: env.log().count('"cycle_failed"') >= n, what=f"failure {number}")
    served = get(f"http://127.0.0.1:{port}/metrics")[1] + get(f"http://127.0.0.1:{port}/status")[1]
    assert "keysetd_validation_errors_total" in served
    status = env.keysetd("status", "--json", "-c", str(env.config_path))
    once = env.keysetd("once", "-c", str(env.config_path))
    validate = env.keysetd("validate", str(env.source))
    public = env.jwks.read_text() + "".join(p.read_text() for p in pem_dir.glob("*.pem"))
    for text, where in [
        (env.log(), "the daemon log"),
        (served, "/metrics and /status"),
        ((env.state / "audit.jsonl").read_text(), "the audit log"),
        (status.stdout + status.stderr, "status"),
        (once.stdout + once.stderr, "once"),
        (validate.stdout + validate.stderr, "validate"),
        (public, "public outputs"),
        (_state_texts(env.state), "state files other than last-known-good"),
    ]:
        assert_clean(text, secrets, where)
    assert keys["es-a"]["d"] in env.signer.read_text()  # the signer output does hold it


#: State files that must hold private keys (to republish and to hold back a signer key).
SECRET_STATE = {"last-known-good.json", "signer-keyset.json"}


def _state_texts(state: Path) -> str:
    """Every state file except the two that hold keys by design (and those are 0600)."""
    for name in SECRET_STATE:
        assert (state / name).stat().st_mode & 0o777 == 0o600
    return "".join(
        p.read_text() for p in state.iterdir() if p.is_file() and p.name not in SECRET_STATE
    )


def test_command_source_stderr_is_redacted(env: Env, keys: dict[str, dict[str, Any]]) -> None:
    leaked = json.dumps(keys["rs-a"])
    env.config(
        source={
            "type": "command",
            "argv": ["/bin/sh", "-c", f"echo '{leaked}' >&2; exit 3"],
        }
    )
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 1
    assert "exit" in done.stderr.lower()
    assert_clean(done.stderr, secrets_of(keys["rs-a"]), "a command source error")
