"""Real ``keysetd run``: revocation within a second, managed rotation under live signing."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import jwt
import pytest

from tests.conftest import Env, wait_for
from tests.keys import jwks_doc


def kids(env: Env) -> list[str]:
    try:
        return [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]]
    except (OSError, ValueError):
        return []


def left_source(env: Env, kid: str) -> bool:
    try:
        history = json.loads((env.state / "history.json").read_text())
    except (OSError, ValueError):
        return False
    return history["keys"].get(kid, {}).get("left_source_at") is not None


def audit_events(env: Env) -> list[str]:
    path = env.state / "audit.jsonl"
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_revoke_removes_a_retained_kid_within_a_second(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    env.config(policy={"retention": "1h"})
    env.start()
    wait_for(lambda: kids(env) == ["es-a", "es-b"], what="first publish")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))  # es-b leaves, retained for 1h
    wait_for(lambda: left_source(env, "es-b"), what="es-b seen leaving the source")
    assert kids(env) == ["es-a", "es-b"]
    started = time.monotonic()
    done = env.keysetd("revoke", "es-b", "--reason", "leaked", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: kids(env) == ["es-a"], timeout=1.0, what="revocation within a second")
    assert time.monotonic() - started < 1.5
    wait_for(lambda: "revocation_applied" in audit_events(env), what="audit of the revocation")
    assert "revoked" in audit_events(env)
    # The source brings it back: refused, outputs stay.
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    wait_for(lambda: "refused" in audit_events(env), what="refusal")
    assert kids(env) == ["es-a"]
    status = json.loads(env.keysetd("status", "--json", "-c", str(env.config_path)).stdout)
    assert "revoked-kid" in status["last_error"]
    # Lifted explicitly: the same source is accepted.
    assert env.keysetd("unrevoke", "es-b", "-c", str(env.config_path)).returncode == 0
    wait_for(lambda: kids(env) == ["es-a", "es-b"], timeout=2, what="accepted after unrevoke")
    verdict = env.keysetd("audit", "verify", "-c", str(env.config_path))
    assert verdict.returncode == 0 and "intact" in verdict.stdout


def test_revoking_the_signing_key_withdraws_signer_outputs(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    env.start()
    wait_for(env.signer.exists, what="first publish")
    env.keysetd("revoke", "es-a", "-c", str(env.config_path), check=True)
    wait_for(lambda: not env.signer.exists(), timeout=1.0, what="signer output withdrawn")
    assert "es-a" not in env.jwks.read_text()
    env.write_source(jwks_doc(keys["es-b"], active="es-b"))
    wait_for(env.signer.exists, timeout=2, what="a new key restores signing")
    assert json.loads(env.signer.read_text())["active_kid"] == "es-b"


def test_plan_explains_a_pending_activation(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(policy={"activation_delay": "1h", "retention": "1d"})
    env.keysetd("once", "-c", str(env.config_path), check=True)
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    done = env.keysetd("plan", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert "signers use:   es-a" in done.stdout
    assert "es-b" in done.stdout and "pending" in done.stdout and "until" in done.stdout
    env.keysetd("once", "-c", str(env.config_path), check=True)
    assert json.loads(env.signer.read_text())["active_kid"] == "es-a"
    assert kids(env) == ["es-a", "es-b"]


def test_rotate_command_adds_an_active_key(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    done = env.keysetd("rotate", "--alg", "EdDSA", "--kid", "ed-new", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    source = json.loads(env.source.read_text())
    assert source["active_kid"] == "ed-new" and len(source["keys"]) == 2
    assert env.source.stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(90)
def test_managed_rotation_under_live_signing_loses_no_token(env: Env) -> None:
    """A signer thread signs with the signer output, a verifier thread checks the jwks output."""
    env.config(
        policy={"activation_delay": "300ms", "retention": "1s"},
        rotation={"every": "1s", "alg": "ES256"},
    )
    env.start()
    wait_for(env.signer.exists, what="first managed key")
    tokens: queue.Queue[tuple[str, str] | None] = queue.Queue()
    failures: list[str] = []
    used: set[str] = set()
    verified = [0]
    stop = threading.Event()

    def signer() -> None:
        while not stop.is_set():
            doc = json.loads(env.signer.read_text())
            key = next(k for k in doc["keys"] if k["kid"] == doc["active_kid"])
            private = jwt.PyJWK(key).key
            token = jwt.encode(
                {"sub": "x", "n": len(used)},
                private,
                algorithm="ES256",
                headers={"kid": key["kid"]},
            )
            used.add(key["kid"])
            tokens.put((key["kid"], token))
            time.sleep(0.002)
        tokens.put(None)

    def verifier() -> None:
        while (item := tokens.get()) is not None:
            kid, token = item
            jwks = jwt.PyJWKSet.from_json(env.jwks.read_text())
            try:
                jwt.decode(token, jwks[kid].key, algorithms=["ES256"])
                verified[0] += 1
            except (KeyError, jwt.PyJWTError) as exc:
                failures.append(f"{kid}: {exc!r}")

    threads = [threading.Thread(target=signer), threading.Thread(target=verifier)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    wait_for(
        lambda: len(used) >= 5 or time.monotonic() > deadline, timeout=40, what="five signing keys"
    )
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    assert failures == [], failures[:5]
    assert len(used) >= 4, used
    assert verified[0] >= 1000, verified[0]
    print(f"rotation under live signing: {len(used)} keys, {verified[0]} tokens verified")


def test_evidence_after_a_rotation(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    env.keysetd("once", "-c", str(env.config_path), check=True)
    work = env.root / "evidence"
    first = env.keysetd(
        "evidence", "-c", str(env.config_path), "--event-id", "r1", "--workdir", str(work)
    )
    assert first.returncode == 0, first.stderr
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    env.keysetd("once", "-c", str(env.config_path), check=True)
    second = env.keysetd(
        "evidence",
        "-c",
        str(env.config_path),
        "--event-id",
        "r2",
        "--workdir",
        str(work),
        "--previous-summary",
        str(work / "r1" / "summary.json"),
    )
    assert second.returncode == 0, second.stderr
    summary = json.loads((work / "r2" / "summary.json").read_text())
    assert summary["active_kid"] == "es-b" and summary["previous_active_kid"] == "es-a"
    assert summary["active_kid_changed"] is True and summary["key_count"] == 2
    assert sorted(summary["kids"]) == ["es-a", "es-b"]
    text = (work / "r2" / "keyset.json").read_text()
    assert keys["es-b"]["d"] not in text and keys["es-a"]["d"] not in text
    assert (work / "r2" / "fingerprint.sha256").exists()
    bad = env.keysetd("evidence", "-c", str(env.config_path), "--event-id", "../x")
    assert bad.returncode == 2
