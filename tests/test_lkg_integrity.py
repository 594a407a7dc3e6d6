"""The last-known-good is published again only if it is the file history recorded.

History keeps the SHA-256 of ``last-known-good.json``; a restart with a failing
source refuses, by name, a last-known-good that is corrupt or was swapped for
another valid keyset, and leaves every output as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keysetd.audit_read import verify
from keysetd.model import canonical_json
from keysetd.state import KeyRecord, LastKnownGood, StateStore, UntrustedLastKnownGood
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.test_daemon import events as log_events
from tests.test_read_only_commands import forge_last_known_good

# -- StateStore ------------------------------------------------------------------


def lkg(data: bytes, at: float = 1.0) -> LastKnownGood:
    return LastKnownGood(data, "jwks", "file /src", at, "f" * 64)


RECORDS = {"a": KeyRecord(kid="a", material="m", first_seen=1.0)}


def test_the_digest_lives_in_history_and_survives_history_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_lkg(lkg(b'{"keys": []}'), RECORDS)
    recorded = json.loads(store.history_path.read_bytes())["lkg_sha256"]
    assert len(recorded) == 64
    store.save_history({})  # a later transition keeps it
    assert json.loads(store.history_path.read_bytes())["lkg_sha256"] == recorded
    fresh = StateStore(tmp_path)  # a new process, history not loaded yet, keeps it too
    fresh.save_history(RECORDS)
    assert json.loads(fresh.history_path.read_bytes())["lkg_sha256"] == recorded
    assert fresh.load_history().keys() == RECORDS.keys()
    assert fresh.verified_lkg() == lkg(b'{"keys": []}')


def test_a_history_without_a_digest_trusts_the_file_as_before(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_lkg(lkg(b"old"), RECORDS)
    doc = json.loads(store.history_path.read_bytes())
    del doc["lkg_sha256"]
    store.history_path.write_bytes(canonical_json(doc))
    assert StateStore(tmp_path).verified_lkg() == lkg(b"old")


def test_no_last_known_good_yet(tmp_path: Path) -> None:
    assert StateStore(tmp_path).verified_lkg() is None


def test_a_crash_between_history_and_file_leaves_the_old_file_refused(tmp_path: Path) -> None:
    """Republishing the older file would take outputs back behind what they hold."""
    store = StateStore(tmp_path)
    store.save_lkg(lkg(b"first"), RECORDS)
    older = store.lkg_path.read_bytes()
    store.save_lkg(lkg(b"second", 2.0), RECORDS)
    store.lkg_path.write_bytes(older)
    with pytest.raises(UntrustedLastKnownGood, match="does not match the digest recorded"):
        StateStore(tmp_path).verified_lkg()
    store.lkg_path.unlink()  # or the very first one never written
    with pytest.raises(UntrustedLastKnownGood, match=r"is missing, though history\.json records"):
        StateStore(tmp_path).verified_lkg()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"data": "AA=="}', "no format, origin, fetched_at, fingerprint"),
        (b'{"data": "!!", "format": 1, "origin": 1, "fetched_at": 1, "fingerprint": 1}', "base64"),
    ],
    ids=["empty", "array", "fields", "base64"],
)
def test_a_corrupt_file_is_named_with_what_is_wrong(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = StateStore(tmp_path)
    store.save_lkg(lkg(b"x"), RECORDS)
    store.lkg_path.write_bytes(content)
    with pytest.raises(UntrustedLastKnownGood) as caught:
        StateStore(tmp_path).verified_lkg()
    assert str(caught.value).startswith(f"last-known-good ({store.lkg_path}) is corrupt: ")
    assert reason in str(caught.value)
    assert StateStore(tmp_path).load_lkg() is None  # the unchecked reader stays lenient


# -- through a real `keysetd run` ------------------------------------------------


def status(env: Env) -> dict[str, Any]:
    return StateStore(env.state).load_status() or {}


def audit_events(env: Env, name: str) -> list[dict[str, Any]]:
    path = StateStore(env.state).audit_path
    return [e for e in map(json.loads, path.read_bytes().splitlines()) if e["event"] == name]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.fixture
def published(env: Env) -> Env:
    """A daemon that published es-a (and recorded its last-known-good), then stopped."""
    env.write_source(jwks_doc(jwk("ES256", "es-a"), active="es-a"))
    env.config()
    proc = env.start()
    wait_for(lambda: status(env).get("active_kid") == "es-a", what="the first publish")
    recorded = json.loads((env.state / "history.json").read_bytes()).get("lkg_sha256")
    assert recorded is not None
    stop(proc)
    return env


def restart_with_source_down(env: Env) -> subprocess.Popen[bytes]:
    env.source.unlink()
    return env.start()


def flip_inside_data(path: Path) -> None:
    """One base64 character of the snapshot changed: still JSON, still base64."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"data":"') + len(b'"data":"') + 40
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")
    path.write_bytes(bytes(raw))


def cut_in_half(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    ("damage", "says"),
    [(flip_inside_data, "does not match the digest recorded"), (cut_in_half, "is corrupt: ")],
    ids=["byte-flipped", "truncated"],
)
def test_a_damaged_last_known_good_is_named_and_not_published(
    published: Env, damage: Any, says: str
) -> None:
    env = published
    before = env.snapshot_outputs()
    lkg_path = StateStore(env.state).lkg_path
    damage(lkg_path)
    proc = restart_with_source_down(env)
    wait_for(lambda: "lkg_error" in status(env), what="the refusal in status.json")
    message = status(env)["lkg_error"]
    assert message.startswith(f"last-known-good ({lkg_path}) {says}"), message
    assert "no such file" in status(env)["last_error"].lower()
    refused = log_events(env, "lkg_unusable")
    assert refused and refused[0]["path"] == str(lkg_path) and says in refused[0]["error"]
    assert not log_events(env, "published_last_known_good")
    assert env.snapshot_outputs() == before
    assert proc.poll() is None
    cli = json.loads(env.keysetd("status", "--json", "-c", str(env.config_path)).stdout)
    assert cli["lkg_error"] == message


def test_a_last_known_good_swapped_for_another_valid_keyset_is_refused(published: Env) -> None:
    env = published
    before = env.snapshot_outputs()
    store = StateStore(env.state)
    forge_last_known_good(env)
    assert store.load_lkg() is not None  # well-formed: only the digest tells it apart

    proc = restart_with_source_down(env)
    wait_for(lambda: "lkg_error" in status(env), what="the refusal in status.json")
    assert "does not match the digest recorded in" in status(env)["lkg_error"]
    assert str(store.lkg_path) in status(env)["lkg_error"]
    assert env.snapshot_outputs() == before
    assert b"intruder" not in b"".join(env.snapshot_outputs().values())
    (entry,) = audit_events(env, "lkg_refused")
    assert entry["path"] == str(store.lkg_path)
    assert proc.poll() is None

    # The daemon is alive and well: the source comes back, the refusal clears.
    env.write_source(jwks_doc(jwk("ES256", "es-b"), active="es-b"))
    wait_for(lambda: status(env).get("active_kid") == "es-b", what="the source's return")
    assert status(env).get("last_error") is None and "lkg_error" not in status(env)
    assert StateStore(env.state).verified_lkg() is not None
    assert verify(store.audit_path).ok


def test_a_good_last_known_good_is_published_after_a_restart(published: Env) -> None:
    env = published
    before = env.snapshot_outputs()
    for path in env.out.iterdir():
        path.unlink()
    restart_with_source_down(env)
    wait_for(lambda: env.snapshot_outputs() == before, what="republish from last-known-good")
    wait_for(lambda: status(env).get("last_error"), what="the source failure in status.json")
    assert "lkg_error" not in status(env)
    assert log_events(env, "published_last_known_good")
    assert not log_events(env, "lkg_unusable")


def test_a_crash_before_the_new_file_is_written_never_rolls_outputs_back(published: Env) -> None:
    """History names the new file's digest first: killed before the file is written, the
    older last-known-good is refused after a restart instead of taking outputs back to it."""
    env = published
    env.write_source(jwks_doc(jwk("ES256", "es-b"), active="es-b"))
    armed = env.start(env={"_KEYSETD_FAILPOINT": "write.before-temp@last-known-good.json"})
    assert armed.wait(timeout=20) == -signal.SIGKILL
    after_crash = env.snapshot_outputs()
    assert b"es-b" in after_crash["keyset.json"]
    store = StateStore(env.state)
    older = store.load_lkg()
    assert older is not None and b"es-a" in older.data

    proc = restart_with_source_down(env)
    wait_for(lambda: "lkg_error" in status(env), what="the refusal in status.json")
    assert "does not match the digest recorded" in status(env)["lkg_error"]
    assert env.snapshot_outputs() == after_crash
    assert proc.poll() is None


@pytest.mark.timeout(20)
def test_a_fifo_in_place_of_the_file_is_refused_without_hanging(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_lkg(lkg(b"x"), RECORDS)
    store.lkg_path.unlink()
    os.mkfifo(store.lkg_path)
    with pytest.raises(UntrustedLastKnownGood, match="cannot be read: not a regular file"):
        StateStore(tmp_path).verified_lkg()
    assert store.load_lkg() is None
