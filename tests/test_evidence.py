"""``keysetd evidence``: public-only, reproducible files that ``sha256sum -c`` accepts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keysetd.crypto import b64u_decode
from keysetd.evidence import build_evidence, write_evidence
from keysetd.formats import decode
from keysetd.plan import Plan, plan
from tests.keys import PRIVATE, assert_clean, jwk, jwks_doc, secrets_of

NAMES = {"keyset.json", "summary.json", "fingerprint.sha256"}


@pytest.fixture(scope="module")
def keys() -> dict[str, dict[str, Any]]:
    return {
        "es-b": jwk("ES256", "es-b"),
        "rs-a": jwk("RS256", "rs-a"),
        "ed-c": jwk("EdDSA", "ed-c"),
        "hs-d": jwk("HS256", "hs-d"),
        "hs-e": jwk("HS512", "hs-e"),
    }


def plan_of(*keys: dict[str, Any], active: str | None) -> Plan:
    return plan(decode(jwks_doc(*keys, active=active)))


def assert_no_secret(files: dict[str, bytes], *keys: dict[str, Any]) -> None:
    for name, data in files.items():
        text = data.decode("ascii")
        assert_clean(text, secrets_of(*keys), name)
        if name.endswith(".json"):
            for obj in _objects(json.loads(text)):
                assert not set(obj) & set(PRIVATE), f"private member in {name}"


def _objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value, *(o for v in value.values() for o in _objects(v))]
    if isinstance(value, list):
        return [o for v in value for o in _objects(v)]
    return []


def test_keyset_json_is_the_public_verifier_keyset(keys: dict[str, dict[str, Any]]) -> None:
    every = list(keys.values())
    files = build_evidence(plan_of(*every, active="rs-a"), "CHG-1", None)
    assert set(files) == NAMES
    doc = json.loads(files["keyset.json"])
    assert doc["active_kid"] == "rs-a"
    assert [k["kid"] for k in doc["keys"]] == ["rs-a", "ed-c", "es-b", "hs-d", "hs-e"]
    by_kid = {k["kid"]: k for k in doc["keys"]}
    assert by_kid["rs-a"] == {
        name: keys["rs-a"][name] for name in ("kty", "kid", "alg", "use", "n", "e")
    }
    assert by_kid["es-b"] == {
        name: keys["es-b"][name] for name in ("kty", "kid", "alg", "use", "crv", "x", "y")
    }
    assert set(by_kid["ed-c"]) == {"kty", "kid", "alg", "use", "crv", "x"}
    for kid in ("hs-d", "hs-e"):
        raw = b64u_decode(keys[kid]["k"])
        assert by_kid[kid] == {
            "kty": "oct",
            "kid": kid,
            "alg": keys[kid]["alg"],
            "use": "sig",
            "k_sha256": hashlib.sha256(raw).hexdigest(),
        }
    assert files["keyset.json"].endswith(b"}\n")
    assert files["keyset.json"].startswith(b'{\n  "active_kid"')
    assert_no_secret(files, *every)


def test_hmac_only_keyset(keys: dict[str, dict[str, Any]]) -> None:
    files = build_evidence(plan_of(keys["hs-d"], keys["hs-e"], active="hs-e"), "hmac", None)
    doc = json.loads(files["keyset.json"])
    assert [k["kid"] for k in doc["keys"]] == ["hs-e", "hs-d"]
    assert all(len(k["k_sha256"]) == 64 for k in doc["keys"])
    summary = json.loads(files["summary.json"])
    assert summary["kids"] == ["hs-d", "hs-e"]
    assert summary["key_count"] == 2
    assert_no_secret(files, keys["hs-d"], keys["hs-e"])


def test_summary(keys: dict[str, dict[str, Any]]) -> None:
    planned = plan_of(keys["rs-a"], keys["es-b"], keys["hs-d"], active="es-b")
    files = build_evidence(planned, "CHG-2024.11_a", None)
    summary = json.loads(files["summary.json"])
    assert summary == {
        "event_id": "CHG-2024.11_a",
        "active_kid": "es-b",
        "kids": ["es-b", "hs-d", "rs-a"],
        "key_count": 3,
        "fingerprint": planned.fingerprint,
        "keyset_sha256": hashlib.sha256(files["keyset.json"]).hexdigest(),
        "previous_active_kid": None,
        "active_kid_changed": False,
    }
    assert "generated_at" not in files["summary.json"].decode()
    assert files["fingerprint.sha256"] == (f"{summary['keyset_sha256']}  keyset.json\n".encode())


def test_previous_summary(keys: dict[str, dict[str, Any]]) -> None:
    before = build_evidence(plan_of(keys["rs-a"], keys["es-b"], active="rs-a"), "one", None)
    previous = json.loads(before["summary.json"])

    rotated = plan_of(keys["rs-a"], keys["es-b"], active="es-b")
    summary = json.loads(build_evidence(rotated, "two", previous)["summary.json"])
    assert summary["previous_active_kid"] == "rs-a"
    assert summary["active_kid_changed"] is True

    same = plan_of(keys["rs-a"], keys["es-b"], active="rs-a")
    summary = json.loads(build_evidence(same, "three", previous)["summary.json"])
    assert summary["previous_active_kid"] == "rs-a"
    assert summary["active_kid_changed"] is False

    # A previous summary with no active key: a key appearing is a change.
    summary = json.loads(build_evidence(rotated, "four", {"active_kid": None})["summary.json"])
    assert summary["previous_active_kid"] is None
    assert summary["active_kid_changed"] is True


@pytest.mark.parametrize(
    "previous",
    [{}, {"active_kid": 3}, {"active_kid": ["rs-a"]}, ["active_kid"], "active_kid", 7],
    ids=["missing", "number", "list", "not-an-object", "string", "int"],
)
def test_malformed_previous_summary_refused(keys: dict[str, dict[str, Any]], previous: Any) -> None:
    with pytest.raises(ValueError, match="previous summary"):
        build_evidence(plan_of(keys["rs-a"], active="rs-a"), "x", previous)


def test_reproducible_byte_for_byte(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    every = list(keys.values())
    first = build_evidence(plan_of(*every, active="ed-c"), "CHG-9", {"active_kid": "rs-a"})
    # Same state from a document with the keys in another order: the same bytes.
    second = build_evidence(
        plan_of(*reversed(every), active="ed-c"), "CHG-9", {"active_kid": "rs-a"}
    )
    assert first == second
    one = write_evidence(tmp_path / "a", "CHG-9", first)
    two = write_evidence(tmp_path / "b", "CHG-9", second)
    for name in NAMES:
        assert (one / name).read_bytes() == (two / name).read_bytes() == first[name]


def test_a_different_key_changes_every_hash(keys: dict[str, dict[str, Any]]) -> None:
    base = build_evidence(plan_of(keys["hs-d"], active="hs-d"), "e", None)
    other_secret = {**keys["hs-d"], "k": jwk("HS256")["k"]}
    changed = build_evidence(plan_of(other_secret, active="hs-d"), "e", None)
    assert base["keyset.json"] != changed["keyset.json"]
    assert (
        json.loads(base["summary.json"])["fingerprint"]
        != json.loads(changed["summary.json"])["fingerprint"]
    )
    assert base["fingerprint.sha256"] != changed["fingerprint.sha256"]


def test_private_material_never_written(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    every = list(keys.values())
    assert all(secrets_of(k) for k in every)  # every test key has private members
    directory = write_evidence(
        tmp_path, "leak", build_evidence(plan_of(*every, active="es-b"), "leak", None)
    )
    on_disk = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert set(on_disk) == NAMES
    assert_no_secret(on_disk, *every)


def test_write_evidence_files_and_modes(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    files = build_evidence(plan_of(keys["es-b"], active="es-b"), "CHG-7", None)
    old = os.umask(0o077)
    try:
        directory = write_evidence(tmp_path / "work" / "dir", "CHG-7", files)
    finally:
        os.umask(old)
    assert directory == tmp_path / "work" / "dir" / "CHG-7"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert sorted(p.name for p in directory.iterdir()) == sorted(NAMES)  # no temp files left
    for name, data in files.items():
        path = directory / name
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_rewrite_replaces_the_files(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    first = build_evidence(plan_of(keys["es-b"], active="es-b"), "again", None)
    write_evidence(tmp_path, "again", first)
    second = build_evidence(plan_of(keys["rs-a"], active="rs-a"), "again", None)
    directory = write_evidence(tmp_path, "again", second)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == second


def test_event_directory_symlink_refused(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "CHG-1").symlink_to(elsewhere)
    files = build_evidence(plan_of(keys["es-b"], active="es-b"), "CHG-1", None)
    with pytest.raises(NotADirectoryError):
        write_evidence(tmp_path / "work", "CHG-1", files)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_sha256sum_check_passes(keys: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    every = list(keys.values())
    directory = write_evidence(
        tmp_path, "CHG-1", build_evidence(plan_of(*every, active="hs-e"), "CHG-1", None)
    )

    def sha256sum_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sha256sum", "-c", "fingerprint.sha256"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    ok = sha256sum_check()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "keyset.json: OK\n"

    (directory / "keyset.json").write_bytes(b"{}\n")
    bad = sha256sum_check()
    assert bad.returncode == 1
    assert "keyset.json: FAILED" in bad.stdout


UNSAFE = [
    "",
    ".",
    "..",
    "a/b",
    "../x",
    "/abs",
    "a\\b",
    "a b",
    "x\n",
    "a\x00b",
    "é",
    "a" * 129,
    "~root",
    "$HOME",
]


@pytest.mark.parametrize("event_id", UNSAFE)
def test_unsafe_event_id_refused(
    keys: dict[str, dict[str, Any]], tmp_path: Path, event_id: str
) -> None:
    planned = plan_of(keys["es-b"], active="es-b")
    with pytest.raises(ValueError, match="event id"):
        build_evidence(planned, event_id, None)
    files = build_evidence(planned, "fine", None)
    with pytest.raises(ValueError, match="event id"):
        write_evidence(tmp_path / "work", event_id, files)
    assert not (tmp_path / "work").exists()  # refused before anything was created


@pytest.mark.parametrize("event_id", ["a", "...", "a" * 128, "CHG-2024.11_09", "-x", ".hidden"])
def test_safe_event_ids_accepted(
    keys: dict[str, dict[str, Any]], tmp_path: Path, event_id: str
) -> None:
    files = build_evidence(plan_of(keys["es-b"], active="es-b"), event_id, None)
    assert write_evidence(tmp_path, event_id, files) == tmp_path / event_id


def test_unsafe_file_name_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file name"):
        write_evidence(tmp_path, "ok", {"../escape": b"x"})
    assert not (tmp_path / "ok").exists()
