"""Any bytes give a Keyset or an InvalidKeyset, never another exception (Hypothesis).

Anything that passes must also survive a render and re-check unchanged.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysetd.errors import InvalidKeyset
from keysetd.formats import decode
from keysetd.formats.jwks import render_keyset
from keysetd.model import Keyset
from keysetd.validate import check

VECTORS = Path(__file__).parent / "vectors"
SEEDS = [p.read_bytes() for p in sorted((VECTORS / "valid").iterdir())]
SEEDS += [
    p.read_bytes()
    for p in sorted((VECTORS / "invalid").iterdir())
    if p.stat().st_size < 64 * 1024 and not p.name.endswith(".options.json")
]
JSON_SEEDS = [json.loads(p.read_bytes()) for p in sorted((VECTORS / "valid").glob("*.json"))]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_CHEAP = settings(FUZZ, max_examples=500)

NAMES = ["keys", "active_kid", "kty", "kid", "alg", "use", "crv", "x", "y", "d", "n", "e", "k"]
NAMES += ["p", "q", "dp", "dq", "qi", "oth", "x5c"]
WORDS = ["EC", "RSA", "OKP", "oct", "P-256", "P-384", "P-521", "Ed25519", "Ed448", "ES256"]
WORDS += ["EdDSA", "RS256", "HS256", "none", "sig", "enc", "AQAB", "", "=", "k1"]
b64u_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from(WORDS),
    b64u_text,
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=5)), inner, max_size=6),
    ),
    max_leaves=25,
)
jwk_like = st.dictionaries(st.sampled_from(NAMES), st.one_of(st.sampled_from(WORDS), scalars))
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"keys": st.one_of(st.lists(jwk_like, max_size=4), st.dictionaries(st.text(), scalars))},
        optional={"active_kid": st.one_of(st.sampled_from(WORDS), scalars)},
    ),
)


def outcome(data: bytes, **kwargs: Any) -> Keyset | None:
    """check() on the bytes: the Keyset, or None for InvalidKeyset; anything else fails."""
    try:
        keyset = check(data, **kwargs)
    except InvalidKeyset as exc:
        assert exc.problems and all(p.rule for p in exc.problems)
        str(exc)
        return None
    assert isinstance(keyset, Keyset)
    again = check(render_keyset(keyset))
    assert again.active_kid == keyset.active_kid and again.ordered() == keyset.ordered()
    return keyset


@FUZZ_CHEAP
@given(st.binary(max_size=4096), st.sampled_from(["auto", "jwks", "rgs", "pem"]))
def test_arbitrary_bytes(data: bytes, fmt: str) -> None:
    outcome(data, fmt=fmt)
    with contextlib.suppress(InvalidKeyset):
        decode(data, fmt)


@FUZZ
@given(documents)
def test_json_like_structures(doc: object) -> None:
    outcome(json.dumps(doc).encode())
    outcome(json.dumps(doc).encode(), declared_public=True, require_active=True)


@FUZZ_CHEAP
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_vector_bytes(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate", "repeat"]))
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "delete":
            del buf[at : at + data.draw(st.integers(1, 16))]
        elif op == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del buf[at:]
        else:
            buf[at:at] = buf[at : at + data.draw(st.integers(1, 64))]
    outcome(bytes(buf))


@FUZZ
@given(st.sampled_from(JSON_SEEDS), st.data())
def test_mutated_vector_members(seed: dict[str, Any], data: st.DataObject) -> None:
    doc = json.loads(json.dumps(seed))
    keys = doc["keys"]
    for _ in range(data.draw(st.integers(1, 3))):
        if isinstance(keys, list) and keys:
            jwk = keys[data.draw(st.integers(0, len(keys) - 1))]
            name = data.draw(st.sampled_from(NAMES))
            if data.draw(st.booleans()) and name in jwk:
                del jwk[name]
            else:
                jwk[name] = data.draw(st.one_of(st.sampled_from(WORDS), b64u_text, json_values))
        elif isinstance(keys, dict) and keys:
            kid = data.draw(st.sampled_from(sorted(keys)))
            keys[kid] = data.draw(st.one_of(st.text(), json_values))
        if data.draw(st.booleans()):
            doc["active_kid"] = data.draw(st.one_of(st.sampled_from(WORDS), scalars))
    outcome(json.dumps(doc).encode())
