"""The cryptography seam: base64url, thumbprints, members <-> key objects, and PyJWT interop."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x448, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from keysetd import crypto
from keysetd.crypto import (
    HMAC_MIN_BYTES,
    KeyMaterialError,
    b64u_decode,
    b64u_encode,
    generate,
    key_from_private,
    key_from_public,
    load_private,
    load_public,
    pkcs8_pem,
    spki_pem,
    thumbprint,
)
from keysetd.errors import InvalidKeyset
from keysetd.formats import decode
from keysetd.model import Key
from keysetd.validate import check
from tests.keys import b64u_int

VALID = Path(__file__).parent / "vectors" / "valid"
ASYMMETRIC = ["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"]


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_b64u_round_trip(data: bytes) -> None:
    text = b64u_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64u_decode(text) == data


@pytest.mark.parametrize("text", ["AQAB=", "AQ==", "a+b/", "A", "AB", "AR", "é", "AQ AB", "AQ\n"])
def test_b64u_decode_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        b64u_decode(text)


def test_rfc8037_thumbprint_known_answer() -> None:
    key = Key(
        kid="x",
        kty="OKP",
        alg="EdDSA",
        public=(("crv", "Ed25519"), ("x", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")),
    )
    assert thumbprint(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc8037_private_key_matches_its_public_key() -> None:
    [key] = decode((VALID / "rfc8037-ed25519.json").read_bytes()).keys
    private = load_private(key)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_ignores_optional_members_and_needs_required_ones() -> None:
    key = generate("ES256", "a")
    renamed = Key(kid="b", kty=key.kty, alg="ES256", public=key.public, use="sig")
    assert thumbprint(key) == thumbprint(renamed)
    with pytest.raises(ValueError):
        thumbprint(Key(kid="c", kty="EC", alg="ES256", public=(("crv", "P-256"),)))


@pytest.mark.parametrize("alg", [*ASYMMETRIC, "HS256", "HS384", "HS512"])
def test_generate(alg: str) -> None:
    key = generate(alg)
    assert key.alg == alg and key.has_private and key.kid == thumbprint(key)
    assert generate(alg, "named").kid == "named"
    if alg.startswith("HS"):
        secret = b64u_decode(key.member("k") or "")
        assert len(secret) >= HMAC_MIN_BYTES[alg]
        secret.decode("utf-8")  # rgs and env can carry it
    else:
        assert key_from_private(load_private(key), kid=key.kid, alg=alg) == key
        assert key_from_public(load_public(key), kid=key.kid, alg=alg) == key.without_private()


def test_generate_refuses_unknown_alg() -> None:
    with pytest.raises(ValueError, match="unknown alg"):
        generate("none")


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_pyjwt_accepts_our_jwks_and_pem(alg: str) -> None:
    """Tokens signed with our PKCS#8 verify with our public JWK and SPKI: members are right."""
    key = generate(alg, "k")
    private = serialization.load_pem_private_key(pkcs8_pem(key), None)
    assert isinstance(
        private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    )
    token = jwt.encode({"sub": "x"}, private, alg)
    jwk = jwt.PyJWK.from_json(json.dumps(key.public_jwk()))
    assert jwt.decode(token, jwk.key, algorithms=[alg]) == {"sub": "x"}
    public = serialization.load_pem_public_key(spki_pem(key))
    assert isinstance(
        public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    )
    assert jwt.decode(token, public, algorithms=[alg]) == {"sub": "x"}


def test_key_from_public_infers_alg_and_refuses_other_types() -> None:
    assert (
        key_from_public(
            ec.generate_private_key(ec.SECP384R1()).public_key(), kid=None, alg=None
        ).alg
        == "ES384"
    )
    with pytest.raises(ValueError, match="unsupported EC curve"):
        key_from_public(ec.generate_private_key(ec.SECP256K1()).public_key(), kid=None, alg=None)
    with pytest.raises(ValueError, match="unsupported key type"):
        key_from_public(x25519.X25519PrivateKey.generate().public_key(), kid=None, alg=None)
    # A key-agreement private key (DSA was the example until cryptography 51 deprecated it).
    with pytest.raises(ValueError, match="unsupported key type"):
        key_from_private(x448.X448PrivateKey.generate(), kid=None, alg=None)


def test_ed25519_points_of_real_keys_load() -> None:
    for _ in range(50):
        key = key_from_public(ed25519.Ed25519PrivateKey.generate().public_key(), kid="k", alg=None)
        load_public(key)


def test_load_errors_carry_a_rule_and_no_material() -> None:
    key = generate("ES256", "k")
    other = generate("ES256", "o")
    mixed = Key(kid="k", kty="EC", alg="ES256", public=key.public, private=other.private)
    with pytest.raises(KeyMaterialError) as caught:
        load_private(mixed)
    assert caught.value.rule == "private-mismatch"
    for _, value in (*key.public, *other.private):
        assert value[:8] not in str(caught.value)
    short = Key(
        kid="k", kty="EC", alg="ES256", public=(("crv", "P-256"), ("x", "AQAB"), ("y", "AQAB"))
    )
    with pytest.raises(KeyMaterialError) as caught:
        load_public(short)
    assert caught.value.rule == "bad-member"
    with pytest.raises(KeyMaterialError) as caught:
        load_public(Key(kid="h", kty="oct", alg="HS256", public=(), private=(("k", "AQAB"),)))
    assert caught.value.rule == "invalid-key"


def _with_member(key: Key, name: str, value: int) -> Key:
    private = tuple((n, b64u_int(value) if n == name else v) for n, v in key.private)
    return Key(kid=key.kid, kty=key.kty, alg=key.alg, public=key.public, private=private)


def _openssl_accepts(key: Key) -> bool:
    """OpenSSL's own RSA key check (primality of p and q included) on the same members."""
    numbers = {n: int.from_bytes(b64u_decode(v), "big") for n, v in (*key.public, *key.private)}
    public = rsa.RSAPublicNumbers(numbers["e"], numbers["n"])
    members = (numbers[n] for n in ("p", "q", "d", "dp", "dq", "qi"))
    try:
        rsa.RSAPrivateNumbers(*members, public).private_key()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("member", ["d", "dp", "dq", "qi"])
def test_rsa_member_check_agrees_with_openssl(member: str) -> None:
    """keysetd checks d and the CRT members against n and e itself (OpenSSL's check adds a
    primality test costing ~40 ms a key at every start): whatever OpenSSL refuses for a
    changed member, keysetd refuses as private-mismatch, and the untouched key passes both."""
    key = generate("RS256", "r")
    assert _openssl_accepts(key)
    load_private(key)
    value = int.from_bytes(b64u_decode(key.member(member) or ""), "big")
    other = int.from_bytes(b64u_decode(generate("RS256", "o").member(member) or ""), "big")
    for changed in (value + 1, value - 1, value + 2, other, 1):
        bent = _with_member(key, member, changed)
        assert not _openssl_accepts(bent)
        with pytest.raises(KeyMaterialError) as caught:
            load_private(bent)
        assert caught.value.rule == "private-mismatch"


def test_rsa_key_with_a_composite_factor_is_refused() -> None:
    """p = a * b (not prime) with d, dp, dq, qi computed from it: the arithmetic fits, but
    the key does not sign what its public half verifies, which keysetd checks instead of
    OpenSSL's primality test."""
    first = rsa.generate_private_key(65537, 1024).private_numbers()
    second = rsa.generate_private_key(65537, 1024).private_numbers()
    p, q, e = first.p * first.q, second.p, 65537
    lcm = math.lcm(p - 1, q - 1)
    d = pow(e, -1, lcm)
    members = {"n": p * q, "e": e, "d": d, "p": p, "q": q}
    members |= {"dp": d % (p - 1), "dq": d % (q - 1), "qi": pow(q, -1, p)}
    key = Key(
        kid="c",
        kty="RSA",
        alg="RS256",
        public=(("n", b64u_int(members["n"])), ("e", b64u_int(e))),
        private=tuple(
            (name, b64u_int(members[name])) for name in ("d", "p", "q", "dp", "dq", "qi")
        ),
    )
    assert not _openssl_accepts(key)
    with pytest.raises(KeyMaterialError) as caught:
        load_private(key)
    assert caught.value.rule == "private-mismatch"


def test_rsa_pem_with_a_wrong_crt_member_is_refused() -> None:
    """A PEM private key is loaded without OpenSSL's check, then validated like a JWK."""
    good = rsa.generate_private_key(65537, 2048).private_numbers()
    bent = rsa.RSAPrivateNumbers(
        good.p, good.q, good.d, good.dmp1, good.dmq1, good.iqmp + 1, good.public_numbers
    ).private_key(unsafe_skip_rsa_key_validation=True)
    pem = bent.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidKeyset, match="private-mismatch"):
        check(pem, "pem")


#: RFC 8032 section 7.1, TEST 1-3 and TEST SHA(abc): published Ed25519 public keys.
RFC8032_PUBLIC_KEYS = (
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
)
_P = 2**255 - 19


def test_ed25519_point_check_accepts_the_rfc_8032_keys() -> None:
    for text in RFC8032_PUBLIC_KEYS:
        assert crypto._ed25519_on_curve(bytes.fromhex(text)), text


def test_ed25519_point_check_refuses_what_rfc_8032_decoding_refuses() -> None:
    """y >= p (non-canonical), and x = 0 with the sign bit set (5.1.3 step 4)."""
    for y in (_P, _P + 1, 2**255 - 1):
        assert not crypto._ed25519_on_curve(y.to_bytes(32, "little"))
    one = (1).to_bytes(32, "little")  # y = 1 is the identity (x = 0): valid, sign 0 only
    assert crypto._ed25519_on_curve(one)
    assert not crypto._ed25519_on_curve(one[:31] + bytes([0x80]))


def test_ed25519_point_check_agrees_with_libsodium() -> None:
    """libsodium (PyNaCl) is stricter: it also wants the prime-order subgroup. So every point
    it accepts must decode here, and nothing refused here may pass there."""
    import nacl.bindings

    rng = random.Random(8032)
    agreed = 0
    for _ in range(3000):
        raw = rng.randbytes(32)
        ours = crypto._ed25519_on_curve(raw)
        theirs = nacl.bindings.crypto_core_ed25519_is_valid_point(raw)
        assert ours or not theirs, raw.hex()
        agreed += ours == theirs
    assert agreed > 1000
