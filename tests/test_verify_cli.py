"""``keysetd verify TOKEN --jwks FILE``: header, matching key and claims, or why not; exit codes."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from keysetd.cli import main
from tests.conftest import KEYSETD
from tests.keys import jwk, jwks_doc, public, write_atomically


def sign(key: dict[str, Any], claims: dict[str, Any] | None = None, kid: str | None = None) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 600, **(claims or {})}
    headers = {"kid": kid or key["kid"]}
    return jwt.encode(payload, jwt.PyJWK(key).key, algorithm=key["alg"], headers=headers)


@pytest.fixture
def signer() -> dict[str, Any]:
    return jwk("ES256", "k1")


@pytest.fixture
def jwks(tmp_path: Path, signer: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    other = jwk("EdDSA", "k2")
    write_atomically(path, jwks_doc(public(signer), public(other)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_token(
    jwks: Path, signer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = sign(signer, {"aud": "api", "role": "admin"})
    code, out, err = run(capsys, token, "--jwks", str(jwks), "--audience", "api")
    assert code == 0, err
    header_line, key_line = out.splitlines()[:2]
    assert json.loads(header_line.removeprefix("header: "))["kid"] == "k1"
    assert key_line == f"key:    k1 (EC ES256) from {jwks}"
    claims = json.loads(out.split("claims: ", 1)[1].rsplit("\nvalid", 1)[0])
    assert claims["role"] == "admin" and claims["aud"] == "api"
    assert out.rstrip().endswith("valid: signature and claims check out")


def test_expired_token(
    jwks: Path, signer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = sign(signer, {"exp": int(time.time()) - 120})
    code, out, err = run(capsys, token, "--jwks", str(jwks))
    assert code == 1
    assert "key:    k1" in out
    assert "claims (NOT verified)" in out  # what the token says, for the operator
    assert "ExpiredSignatureError: Signature has expired" in err
    assert run(capsys, token, "--jwks", str(jwks), "--leeway", "300")[0] == 0


def test_bad_signature(jwks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    impostor = jwk("ES256", "k1")  # same kid, other key
    code, _, err = run(capsys, sign(impostor), "--jwks", str(jwks))
    assert code == 1
    assert "InvalidSignatureError" in err


def test_unknown_kid_lists_the_kids(
    jwks: Path, signer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, sign(signer, kid="k9"), "--jwks", str(jwks))
    assert code == 1
    assert '"kid": "k9"' in out
    assert "UnknownKidError: kid 'k9' is not in the keyset" in err
    assert "the keyset has kids k1, k2" in err


def test_wrong_audience_and_disallowed_alg(
    jwks: Path, signer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = sign(signer, {"aud": "api"})
    code, _, err = run(capsys, token, "--jwks", str(jwks), "--audience", "other")
    assert code == 1 and "InvalidAudienceError" in err
    code, _, err = run(capsys, token, "--jwks", str(jwks), "--alg", "EdDSA")
    assert code == 1 and "UnusableKeyError" in err and "ES256 is not among" in err


def test_not_a_token(jwks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "garbage", "--jwks", str(jwks))
    assert code == 1 and "not a JWT" in err


def test_missing_or_invalid_file_is_a_usage_error(
    tmp_path: Path, signer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = sign(signer)
    code, _, err = run(capsys, token, "--jwks", str(tmp_path / "absent.json"))
    assert code == 2 and "cannot read the file" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, _, err = run(capsys, token, "--jwks", str(bad))
    assert code == 2 and "invalid keyset" in err


def test_rgs_file_and_stdin_in_a_real_process(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    path = tmp_path / "rgs.json"
    write_atomically(path, json.dumps({"active_kid": "s1", "keys": {"s1": secret}}).encode())
    token = jwt.encode({"sub": "svc"}, secret.encode(), algorithm="HS256", headers={"kid": "s1"})
    done = subprocess.run(
        [*KEYSETD, "verify", "-", "--jwks", str(path)],
        input=token + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "key:    s1 (oct HS256)" in done.stdout
    assert '"sub": "svc"' in done.stdout
    assert secret not in done.stdout + done.stderr  # never print key material
    forged = jwt.encode({"sub": "x"}, secrets.token_bytes(32), "HS256", headers={"kid": "s1"})
    done = subprocess.run(
        [*KEYSETD, "verify", forged, "--jwks", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "InvalidSignatureError" in done.stderr
    assert secret not in done.stdout + done.stderr
