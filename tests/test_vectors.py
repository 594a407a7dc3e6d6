"""Known-answer vectors: valid keysets pass, each invalid one trips the rule it is named for."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from keysetd.errors import InvalidKeyset
from keysetd.formats import MAX_DOCUMENT, MAX_KEYS, decode, detect
from keysetd.validate import RULES, check

VECTORS = Path(__file__).parent / "vectors"
VALID = sorted(p for p in (VECTORS / "valid").iterdir() if p.suffix in {".json", ".pem"})
INVALID = sorted(p for p in (VECTORS / "invalid").iterdir() if not p.name.endswith(".options.json"))
# Rules about the document as a whole: their problems name no kid.
DOCUMENT_RULES = {"malformed", "too-large", "empty-keyset", "missing-active-kid"}
MEMBER_NAMES = {"d", "p", "q", "dp", "dq", "qi", "k", "x", "y", "n"}


def rule_of(path: Path) -> str:
    return path.name.split("--", 1)[0]


def options_of(path: Path) -> dict[str, Any]:
    sidecar = path.with_name(path.name.split(".", 1)[0] + ".options.json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def material_of(data: bytes) -> set[str]:
    """Every key member or secret in a vector (at least 8 characters long)."""
    found: set[str] = set()
    doc = _json(data)
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        for jwk in doc["keys"]:
            if isinstance(jwk, dict):
                found |= {v for k, v in jwk.items() if k in MEMBER_NAMES and isinstance(v, str)}
    elif isinstance(doc, dict) and isinstance(doc.get("keys"), dict):
        found |= {v for v in doc["keys"].values() if isinstance(v, str)}
    for line in data.splitlines():
        if re.fullmatch(rb"[A-Za-z0-9+/=]{16,}", line.strip()):
            found.add(line.strip().decode())
    return {value for value in found if len(value) >= 8}


def kids_of(data: bytes) -> set[str] | None:
    """The kids a JSON vector names, or None when some key has no kid (or it is not JSON)."""
    doc = _json(data)
    if not isinstance(doc, dict):
        return None
    kids: set[str] = {doc["active_kid"]} if isinstance(doc.get("active_kid"), str) else set()
    keys = doc.get("keys")
    if isinstance(keys, dict):
        return kids | set(keys)
    if not isinstance(keys, list):
        return None
    for jwk in keys:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            return None
        kids.add(jwk["kid"])
    return kids


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_vector_passes(path: Path) -> None:
    data = path.read_bytes()
    keyset = check(data, where=path.name)
    assert len(keyset) >= 1
    assert detect(data) in {"jwks", "rgs", "pem"}
    if not any(key.has_private for key in keyset):
        check(data, declared_public=True)
    else:
        assert check(data, require_active=True).active_kid is not None


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_vector_trips_its_rule(path: Path) -> None:
    data, rule = path.read_bytes(), rule_of(path)
    with pytest.raises(InvalidKeyset) as caught:
        check(data, where=path.name, **options_of(path))
    error = caught.value
    text = f"{error}\n{error!r}\n" + "\n".join(p.detail for p in error.problems)
    assert rule in error.rules, text
    assert path.name in str(error)
    for value in material_of(data):
        assert value[:8] not in text, f"key material leaked into: {text}"
    if rule in DOCUMENT_RULES:
        return
    named = [p.kid for p in error.problems if p.rule == rule]
    kids = kids_of(data)
    if kids is not None:
        assert set(named) & kids, f"{rule} names none of {kids}: {text}"
    for kid in named:
        if kid != "-":
            assert repr(kid) in str(error)


def test_every_rule_has_a_vector() -> None:
    covered = {rule_of(path) for path in INVALID} | {"too-large"}  # too-large: built below
    assert covered == set(RULES)


def test_twenty_mib_document_is_too_large_before_parsing() -> None:
    data = b'{"keys": [' + b" " * (20 * 1024 * 1024) + b"]}"
    with pytest.raises(InvalidKeyset) as caught:
        check(data, where="big.json")
    assert caught.value.rules == {"too-large"}
    with pytest.raises(InvalidKeyset):
        detect(data)


def test_size_limit_is_inclusive() -> None:
    body = b'{"keys": []}'
    at_limit = body + b" " * (MAX_DOCUMENT - len(body))
    with pytest.raises(InvalidKeyset) as caught:
        check(at_limit)
    assert caught.value.rules == {"empty-keyset"}
    with pytest.raises(InvalidKeyset) as caught:
        decode(at_limit + b" ")
    assert caught.value.rules == {"too-large"}


def test_too_many_keys_is_too_large() -> None:
    doc = {"keys": {f"k{i}": "s" * 32 for i in range(MAX_KEYS + 1)}}
    with pytest.raises(InvalidKeyset) as caught:
        check(json.dumps(doc).encode())
    assert caught.value.rules == {"too-large"}


def test_every_problem_is_reported_at_once() -> None:
    doc = json.loads((VECTORS / "valid" / "mixed-private.json").read_bytes())
    doc["keys"][0]["alg"] = "none"
    doc["keys"][1]["use"] = "enc"
    doc["keys"][2]["x"] += "="
    doc["keys"].append(dict(doc["keys"][0]))
    doc["active_kid"] = "nope"
    with pytest.raises(InvalidKeyset) as caught:
        check(json.dumps(doc).encode())
    assert {
        "alg-none",
        "unsupported-use",
        "bad-member",
        "duplicate-kid",
        "active-kid-unknown",
    } <= caught.value.rules


def test_decode_problems_and_validation_problems_together() -> None:
    doc = json.loads((VECTORS / "valid" / "mixed-private.json").read_bytes())
    doc["keys"][0]["kty"] = "DSA"
    doc["keys"][1]["alg"] = "none"
    with pytest.raises(InvalidKeyset) as caught:
        check(json.dumps(doc).encode())
    assert caught.value.rules == {"unknown-kty", "alg-none"}


def test_decode_errors_name_where() -> None:
    with pytest.raises(InvalidKeyset) as caught:
        decode(b"\x00\x01", where="/etc/keysetd/keyset.json")
    assert "/etc/keysetd/keyset.json" in str(caught.value)
    assert caught.value.where == "/etc/keysetd/keyset.json"


def test_secret_prefix_never_appears_in_problem_details() -> None:
    secret = "Zm9vYmFyYmF6cXV4cXV1eA"
    doc = {"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": secret + "="}]}
    with pytest.raises(InvalidKeyset) as caught:
        check(json.dumps(doc).encode())
    assert secret[:6] not in str(caught.value)
    assert base64.urlsafe_b64decode(secret + "==").decode()[:6] not in str(caught.value)
