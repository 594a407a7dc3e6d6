"""The keyed audit chain (HMAC under a key kept sealed in state_dir), rotation and export."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from keysetd.audit import CHAIN_KEYED, GENESIS, AuditLog, Head, rotated_files
from keysetd.audit_read import export, verify
from keysetd.state import AuditKey, StateStore
from tests.conftest import Env
from tests.keys import jwks_doc
from tests.test_state_encryption import encrypted_env, make_key, sealer

KEY = AuditKey(os.urandom(32), 1)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def rewrite_unkeyed(path: Path, edit: dict[str, Any]) -> None:
    """What an intruder without the key can do: rewrite every line and the head, SHA-256 chained."""
    prev, out = GENESIS, []
    for raw in lines_of(path):
        entry = json.loads(raw)
        entry.pop("chain", None)
        entry.update(edit if entry["seq"] == 2 else {})
        entry["prev"] = prev
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    path.write_bytes(b"\n".join(out) + b"\n")
    path.with_suffix(".head").write_bytes(Head(len(out), prev).render())


def test_keyed_lines_verify_with_the_key_only(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", key=lambda _seq: KEY)
    for n in range(4):
        log.append("published", n=n)
    assert all(json.loads(raw)["chain"] == CHAIN_KEYED for raw in lines_of(log.path))
    verdict = verify(log.path, key=KEY)
    assert verdict.ok and verdict.keyed and verdict.lines == 4
    assert not verify(log.path).ok  # keyed lines, no key to check them
    assert "no audit key" in verify(log.path).reason
    other = AuditKey(os.urandom(32), 1)
    assert verify(log.path, key=other).broken_line == 2


def test_a_full_rewrite_is_detected_when_keyed_and_not_without_a_key(tmp_path: Path) -> None:
    keyed = AuditLog(tmp_path / "k" / "audit.jsonl", key=lambda _seq: KEY)
    plain = AuditLog(tmp_path / "p" / "audit.jsonl")
    for log in (keyed, plain):
        log.path.parent.mkdir()
        for n in range(3):
            log.append("published", n=n)
        rewrite_unkeyed(log.path, {"n": 99})
    assert verify(plain.path).ok  # what the unkeyed chain cannot show
    verdict = verify(keyed.path, key=KEY)
    assert not verdict.ok and verdict.broken_line == 1
    assert "not keyed though the chain is keyed from seq 1" in verdict.reason


def test_keying_starts_mid_log_and_unkeyed_lines_are_covered_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append("published", n=0)  # before encryption was configured
    key = AuditKey(os.urandom(32), 2)
    available = [True]
    log = AuditLog(path, key=lambda seq: key if available[0] else None)
    log.append("published", n=1)
    available[0] = False  # the key provider is down: chained unkeyed meanwhile
    log.append("source_failed", n=2)
    broken = verify(path, key=key)
    assert not broken.ok and "seq 3 not keyed" in broken.reason
    available[0] = True
    log.append("published", n=3)
    verdict = verify(path, key=key)
    assert verdict.ok, verdict.reason
    assert "1 line(s) written while the key provider was down" in verdict.reason
    # Editing the covered unkeyed line breaks the keyed link after it.
    lines = lines_of(path)
    lines[2] = lines[2].replace(b"source_failed", b"source_fine__")
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert verify(path, key=key).broken_line == 4


def test_rotation_keeps_the_chain_across_files_and_export_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=lambda _seq: KEY, max_bytes=600, keep=50)
    for n in range(30):
        log.append("published", n=n)
    rotated = rotated_files(path)
    assert len(rotated) >= 3
    assert verify(path, key=KEY).ok and verify(path, key=KEY).lines == 30
    exported = list(export(path, 25))
    assert [json.loads(line)["seq"] for line in exported] == [25, 26, 27, 28, 29, 30]
    # A line edited in a rotated file is named with the file.
    lines = lines_of(rotated[1])
    lines[0] = lines[0].replace(b'"published"', b'"publishex"')
    rotated[1].write_bytes(b"\n".join(lines) + b"\n")
    verdict = verify(path, key=KEY)
    assert not verdict.ok and rotated[1].name in verdict.reason


def test_rotation_is_bounded_and_the_chain_starts_at_the_oldest_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=lambda _seq: KEY, max_bytes=400, keep=2)
    for n in range(40):
        log.append("published", n=n)
    assert len(rotated_files(path)) == 2
    verdict = verify(path, key=KEY)
    assert verdict.ok, verdict.reason
    assert "older files rotated away" in verdict.reason


# -- through the CLI, with [state] encryption -----------------------------------------------


def test_cli_verify_and_export_of_a_keyed_daemon_log(env: Env, keys: dict[str, Any]) -> None:
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    encrypted_env(env, key)
    config = ["--config", str(env.config_path)]
    assert env.keysetd("once", *config).returncode == 0
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    assert env.keysetd("once", *config).returncode == 0
    assert env.keysetd("revoke", "es-c", *config).returncode == 0
    state = StateStore(env.state, sealer(key))
    audit_key = state.audit_key()
    assert audit_key is not None and audit_key.since == 1
    raw_key = state.audit_key_path.read_bytes()
    assert audit_key.key not in raw_key and b"since" not in raw_key  # sealed
    done = env.keysetd("audit", "verify", *config)
    assert done.returncode == 0, done.stdout
    assert "keyed chain (HMAC-SHA256 under the audit key)" in done.stdout
    exported = env.keysetd("audit", "export", "--from", "2", *config)
    assert exported.returncode == 0
    seqs = [json.loads(line)["seq"] for line in exported.stdout.splitlines()]
    assert seqs and seqs[0] == 2 and seqs == list(range(2, 2 + len(seqs)))
    assert "revoked" in exported.stdout
    rewrite_unkeyed(state.audit_path, {"event": "nothing_happened"})
    done = env.keysetd("audit", "verify", *config)
    assert done.returncode == 1 and "not keyed though the chain is keyed" in done.stdout
    state.audit_key_path.write_bytes(AuditKey(os.urandom(32), 1).render())  # planted plaintext
    done = env.keysetd("audit", "verify", *config)
    assert done.returncode == 1 and "audit.key: is plaintext" in done.stderr
    state.audit_key_path.unlink()
    done = env.keysetd("audit", "verify", *config)
    assert done.returncode == 1 and "audit.key is missing" in done.stdout


def test_a_removed_audit_key_is_not_made_anew(env: Env, keys: dict[str, Any]) -> None:
    """A removed audit.key is an error the daemon names, not a fresh key from the next seq
    (the chain would restart keyed after lines nobody can check). A full reset of
    state_dir (log, head and key) still reads as a new install: only a copy shipped off the
    host with ``keysetd audit export`` shows it."""
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    encrypted_env(env, key)
    config = ["--config", str(env.config_path)]
    assert env.keysetd("once", *config).returncode == 0
    state = StateStore(env.state, sealer(key))
    state.audit_key_path.unlink()
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    done = env.keysetd("once", *config)
    assert "audit.key: is missing, but the audit log was keyed" in done.stderr
    assert not state.audit_key_path.exists()
    assert env.keysetd("audit", "verify", *config).returncode == 1


def test_the_last_line_edited_with_its_head_rewritten_is_caught_when_keyed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=lambda _seq: KEY)
    for n in range(3):
        log.append("published", n=n)
    lines = lines_of(path)
    lines[-1] = lines[-1].replace(b'"n":2', b'"n":7')
    path.write_bytes(b"\n".join(lines) + b"\n")
    forged = Head(3, hashlib.sha256(lines[-1]).hexdigest())
    path.with_suffix(".head").write_bytes(forged.render())
    verdict = verify(path, key=KEY)
    assert not verdict.ok and "audit.head is not signed by the audit key" in verdict.reason


def test_cli_verify_and_export_across_the_files_of_a_bounded_log(
    env: Env, keys: dict[str, Any]
) -> None:
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    encrypted_env(env, key, audit={"max_bytes": 300, "keep": 100})
    config = ["--config", str(env.config_path)]
    assert env.keysetd("once", *config).returncode == 0
    for n in range(6):
        assert env.keysetd("revoke", f"gone-{n}", *config).returncode == 0
    state = StateStore(env.state)
    assert len(rotated_files(state.audit_path)) >= 3
    done = env.keysetd("audit", "verify", *config)
    assert done.returncode == 0, done.stdout
    assert "keyed chain" in done.stdout
    exported = env.keysetd("audit", "export", *config).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in exported] == list(range(1, len(exported) + 1))
    assert sum(1 for line in exported if '"revoked"' in line) == 6


def test_a_keyed_log_cut_short_with_its_head_removed_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, key=lambda _seq: KEY)
    for n in range(5):
        log.append("published", n=n)
    path.write_bytes(b"\n".join(lines_of(path)[:3]) + b"\n")
    path.with_suffix(".head").unlink()
    verdict = verify(path, key=KEY)
    assert not verdict.ok and "no audit.head signed by the audit key" in verdict.reason
    # An unkeyed head (from before the key, or forged) is no better.
    path.with_suffix(".head").write_bytes(Head(1, "0" * 64).render())
    assert not verify(path, key=KEY).ok


def test_export_while_the_log_rotates_misses_no_line(tmp_path: Path) -> None:
    """Every file is opened under the writers' lock: a rotation cannot slip between."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=400, keep=1000)
    log.append("published", n=0)
    done = threading.Event()

    def write() -> None:
        for n in range(2000):  # bounded: stops by count or when the exports are done
            if done.is_set():
                return
            log.append("published", n=n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(100):
            seqs = [json.loads(line)["seq"] for line in export(path)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        done.set()
        writer.join(timeout=30)


def test_a_first_line_longer_than_a_read_window_still_rotates(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=100_000, keep=10)
    log.append("published", kids=[f"kid-{n:06d}" for n in range(8000)])  # ~100 KiB
    for n in range(3):
        log.append("published", n=n)
    assert rotated_files(path), "the log was never rotated"
    assert verify(path).ok
