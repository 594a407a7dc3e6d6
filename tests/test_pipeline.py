"""One cycle in-process: change detection, rewrite only what changed, retries, HMAC outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from keysetd.audit_read import verify
from keysetd.config import load_config
from keysetd.pipeline import Pipeline
from tests.conftest import Env
from tests.keys import jwks_doc


def pipeline(env: Env, **extra: Any) -> Pipeline:
    return Pipeline.open(load_config(env.config(**extra)))


def test_same_keyset_in_other_bytes_rewrites_nothing(env: Env, keys: dict[str, Any]) -> None:
    calls = env.root / "calls"
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(
        env, notify=[{"type": "command", "argv": ["/bin/sh", "-c", f"echo x >> {calls}"]}]
    )
    assert cycle.cycle().changed == ("jwks", "keyset")
    inode = os.stat(env.jwks).st_ino
    env.write_source(json.dumps(json.loads(jwks_doc(keys["es-a"], active="es-a"))).encode())
    result = cycle.cycle()
    assert result.ok and result.changed == () and not result.unchanged_source
    assert os.stat(env.jwks).st_ino == inode
    assert calls.read_text().count("x") == 1


def test_refresh_restores_an_output_deleted_behind_our_back(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(env)
    cycle.cycle()
    good = env.jwks.read_bytes()
    env.jwks.unlink()
    result = cycle.cycle()
    assert result.unchanged_source and result.changed == ("jwks",)
    assert env.jwks.read_bytes() == good


def test_mode_drift_is_repaired(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(env)
    cycle.cycle()
    env.signer.chmod(0o644)
    cycle.cycle()
    assert env.signer.stat().st_mode & 0o777 == 0o600


def test_notifier_retries_then_succeeds(env: Env, keys: dict[str, Any]) -> None:
    counter = env.root / "attempts"
    script = f'echo x >> {counter}; [ "$(wc -l < {counter})" -ge 3 ]'
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    result = pipeline(
        env, notify=[{"type": "command", "argv": ["/bin/sh", "-c", script], "retries": 3}]
    ).cycle()
    assert result.ok and result.notify_errors == ()
    assert counter.read_text().count("x") == 3


def test_notifier_failure_is_recorded_not_rolled_back(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    result = pipeline(
        env, notify=[{"type": "command", "argv": ["/bin/false"], "retries": 1}]
    ).cycle()
    assert result.ok and len(result.notify_errors) == 1
    assert "command" in result.notify_errors[0]
    assert env.signer.exists()


def test_notifier_filtered_by_outputs(env: Env, keys: dict[str, Any]) -> None:
    calls = env.root / "calls"
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(
        env,
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "keyset", "path": str(env.signer)},
            {"type": "jwks", "name": "other", "path": str(env.out / "other.json")},
        ],
        notify=[
            {
                "type": "command",
                "argv": ["/bin/sh", "-c", f"echo $KEYSETD_CHANGED_OUTPUTS >> {calls}"],
                "outputs": ["other"],
            }
        ],
    )
    cycle.cycle()
    (env.out / "other.json").unlink()
    cycle.cycle()
    assert calls.read_text().split() == ["jwks,other", "other"]


def test_hmac_keyset_to_rgs_and_env(env: Env) -> None:
    secret_a, secret_b = "a" * 32 + "-old-secret", "b" * 32 + "-new-secret"
    env.write_source(
        json.dumps({"active_kid": "k2", "keys": {"k1": secret_a, "k2": secret_b}}).encode()
    )
    rgs, envfile = env.out / "rgs.json", env.out / "keys.env"
    result = pipeline(
        env,
        outputs=[{"type": "rgs", "path": str(rgs)}, {"type": "env", "path": str(envfile)}],
    ).cycle()
    assert result.ok, result.error
    assert json.loads(rgs.read_text()) == {
        "active_kid": "k2",
        "keys": {"k1": secret_a, "k2": secret_b},
    }
    text = envfile.read_text()
    assert "RGS_JWT_ACTIVE_KID=k2" in text
    assert rgs.stat().st_mode & 0o777 == 0o600


def test_jwks_output_over_hmac_only_keyset_is_refused(env: Env) -> None:
    env.write_source(json.dumps({"active_kid": "k1", "keys": {"k1": "x" * 40}}).encode())
    result = pipeline(env).cycle()
    assert not result.ok and "only HMAC keys" in (result.error or "")
    assert not env.jwks.exists() and not env.signer.exists()


def test_pem_output_removes_files_of_unpublished_keys(env: Env, keys: dict[str, Any]) -> None:
    pem = env.out / "pem"
    env.write_source(jwks_doc(keys["es-a"], keys["ed-a"], active="es-a"))
    cycle = pipeline(env, outputs=[{"type": "pem", "path": str(pem), "private": True}])
    cycle.cycle()
    # Consumers' names; the versions behind them are dot entries (keysetd.atomicdir).
    assert sorted(p.name for p in pem.iterdir() if not p.name.startswith(".")) == [
        "active.key",
        "ed-a.pem",
        "es-a.pem",
    ]
    assert (pem / "active.key").stat().st_mode & 0o777 == 0o600
    assert (pem / "es-a.pem").stat().st_mode & 0o777 == 0o644
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle.cycle()
    assert sorted(p.name for p in pem.iterdir() if not p.name.startswith(".")) == [
        "active.key",
        "es-a.pem",
    ]
    assert len([p for p in pem.iterdir() if p.name.startswith("..")]) == 2  # ..data, one version


def test_state_files_are_private(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    pipeline(env).cycle()
    assert env.state.stat().st_mode & 0o777 == 0o700
    for path in Path(env.state).iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_kid_revoked_before_it_was_ever_seen_is_refused(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(env)
    assert cycle.cycle().ok
    cycle.state.update_revocations("es-b", {"at": 0, "reason": "pre-emptive"})
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    result = cycle.cycle()
    assert not result.ok and "revoked-kid" in (result.error or "")
    assert "es-b" not in env.jwks.read_text()


def test_a_failing_state_write_fails_the_cycle_not_the_daemon(
    env: Env, keys: dict[str, Any]
) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(env)
    assert cycle.cycle().ok
    history = env.state / "history.json"
    history.unlink()
    history.mkdir()  # os.replace onto a directory fails: a stand-in for a broken state_dir
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    result = cycle.cycle()
    assert not result.ok and "state_dir" in (result.error or "")
    assert str(history) in (result.error or "")
    history.rmdir()
    assert cycle.cycle(force=True).ok
    assert "es-b" in env.jwks.read_text()


def audit_lines(env: Env) -> list[dict[str, Any]]:
    text = (env.state / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_identical_failures_are_audited_once_then_counted(env: Env, keys: dict[str, Any]) -> None:
    """A long outage used to write one fsynced audit line per failed cycle."""
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = pipeline(env)
    assert cycle.cycle().ok
    published = len(audit_lines(env))
    env.source.unlink()
    for _ in range(5):
        assert cycle.cycle().stage == "fetch"
    assert [e["event"] for e in audit_lines(env)[published:]] == ["source_failed"]
    env.write_source(b"garbage")  # a different failure: the count, then its own line
    for _ in range(3):
        assert cycle.cycle().stage == "validate"
    lines = audit_lines(env)[published:]
    assert [e["event"] for e in lines] == ["source_failed", "failure_repeated", "refused"]
    assert lines[1]["repeats"] == 4 and lines[1]["failed"] == "source_failed"
    assert lines[1]["stage"] == "fetch" and lines[1]["first_at"] <= lines[1]["last_at"]
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    assert cycle.cycle().ok  # recovery: the count owed goes first, then what was published
    events = [e["event"] for e in audit_lines(env)[published:]]
    assert events[:4] == ["source_failed", "failure_repeated", "refused", "failure_repeated"]
    assert "published" in events[4:]
    env.write_source(b"garbage")  # after a recovery the same failure is news again
    cycle.cycle()
    assert audit_lines(env)[-1]["event"] == "refused"
    cycle.close()
    assert verify(env.state / "audit.jsonl").ok


def test_a_failure_that_lasts_is_counted_in_the_audit_log_every_hour(
    env: Env, keys: dict[str, Any]
) -> None:
    now = [1_800_000_000.0]
    env.write_source(b"garbage")
    cycle = Pipeline.open(load_config(env.config()), clock=lambda: now[0])
    for _ in range(1 + 3 * 60):  # three hours of failures, one a minute
        cycle.cycle()
        now[0] += 60
    lines = audit_lines(env)
    assert [e["event"] for e in lines] == ["refused"] + ["failure_repeated"] * 3
    assert [e["repeats"] for e in lines[1:]] == [60, 60, 60]
    cycle.close()  # nothing more owed
    assert len(audit_lines(env)) == 4
    assert verify(env.state / "audit.jsonl").ok


def test_a_replan_during_an_outage_keeps_the_sources_health(env: Env, keys: dict[str, Any]) -> None:
    """A planned change applied without a fetch must not make the last-known-good look fresh."""
    now = [1_800_000_000.0]
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    cycle = Pipeline.open(
        load_config(env.config(policy={"activation_delay": "1h"})), clock=lambda: now[0]
    )
    assert cycle.cycle().ok
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))  # waits 1 h
    first = cycle.cycle()
    assert first.ok and first.next_change_at == now[0] + 3600
    fetched_at = cycle.status["lkg_fetched_at"]
    env.source.unlink()  # the source goes away
    now[0] += 1800
    failed = cycle.cycle()
    assert not failed.ok and failed.stage == "fetch"
    now[0] += 1801  # the activation is due: applied by a re-plan, no fetch
    replanned = cycle.cycle(fetch=False)
    assert replanned.ok and not replanned.fetched
    assert cycle.status["active_kid"] == "es-b"
    assert cycle.status["lkg_fetched_at"] == fetched_at  # still 3601 s old
    assert cycle.status["last_error"] is not None  # the source is still down
    assert "failure_repeated" not in [e["event"] for e in audit_lines(env)]  # not "recovered"


def test_a_revocation_that_cannot_be_published_is_retried_not_forgotten(
    env: Env, keys: dict[str, Any]
) -> None:
    """The publish of a break-glass revocation fails: the kid must not come back."""
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    cycle = pipeline(env)
    assert cycle.cycle().ok
    env.keysetd("revoke", "es-a", "--reason", "leaked", "-c", str(env.config_path))
    away = env.out.with_name("out-away")
    env.out.rename(away)  # the output directory is gone: nothing can be written
    try:
        blocked = cycle.cycle()
    finally:
        away.rename(env.out)
    assert not blocked.ok
    assert "es-a" in [k["kid"] for k in json.loads(env.jwks.read_bytes())["keys"]]
    assert cycle.cycle().ok
    assert "es-a" not in [k["kid"] for k in json.loads(env.jwks.read_bytes())["keys"]]
