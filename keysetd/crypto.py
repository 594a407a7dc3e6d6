"""The seam to ``cryptography``: JWK members <-> key objects, thumbprints, generation.

Every failure is a ``KeyMaterialError`` (a ``ValueError``) whose ``rule`` names the
validation rule it breaks and whose message names members, never their values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InternalError, InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from keysetd.model import Key

__all__ = [
    "ALGORITHMS",
    "HMAC_MIN_BYTES",
    "RSA_MIN_BITS",
    "KeyMaterialError",
    "b64u_decode",
    "b64u_encode",
    "check_x509",
    "generate",
    "is_b64u",
    "key_from_private",
    "key_from_public",
    "load_private",
    "load_public",
    "pkcs8_pem",
    "spki_pem",
    "thumbprint",
]

#: Every alg keysetd accepts -> (kty, crv or None when any crv/size fits).
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
    # RFC 9864's fully-specified name for EdDSA over Ed25519 (kept as the source wrote it).
    "Ed25519": ("OKP", "Ed25519"),
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
    **{f"HS{bits}": ("oct", None) for bits in (256, 384, 512)},
}
#: RFC 7518 3.2: an HMAC key is at least as long as the hash output.
HMAC_MIN_BYTES: Mapping[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
#: The smallest RSA modulus keysetd publishes or verifies with.
RSA_MIN_BITS = 2048

_CURVES: Mapping[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_OKP_SIZES = {"Ed25519": 32, "Ed448": 57}
_RSA_MAX_BITS = 16384
_RSA_CRT = ("p", "q", "dp", "dq", "qi")
#: What an RSA private key signs to show that its public half verifies it.
_PROBE = b"keysetd: does this private key sign for its public key?"
_B64U = re.compile(r"[A-Za-z0-9_-]*")
_THUMBPRINT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}
# Foreign exceptions cryptography raises for material it refuses.
_REFUSED = (ValueError, TypeError, OverflowError, UnsupportedAlgorithm)


class KeyMaterialError(ValueError):
    """Members that do not form a usable key; ``rule`` is the validation rule broken."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


# --- base64url -----------------------------------------------------------------------------


def b64u_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict unpadded base64url: no padding, no other alphabet, no stray trailing bits."""
    if not _B64U.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not strict base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not strict base64url") from exc
    if b64u_encode(data) != text:
        raise ValueError("not strict base64url (non-canonical trailing bits)")
    return data


def is_b64u(text: str) -> bool:
    try:
        b64u_decode(text)
    except ValueError:
        return False
    return True


def _int_b64u(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64u_encode(value.to_bytes(size, "big"))


# --- members -> key objects ---------------------------------------------------------------


def _raw(key: Key, name: str) -> bytes:
    value = key.member(name)
    if value is None:
        raise KeyMaterialError("missing-member", f"{name} is missing")
    try:
        return b64u_decode(value)
    except ValueError:
        raise KeyMaterialError("bad-member", f"{name} is not strict base64url") from None


def _int(key: Key, name: str) -> int:
    return int.from_bytes(_raw(key, name), "big")


def _fixed(key: Key, name: str, size: int, what: str) -> bytes:
    data = _raw(key, name)
    if len(data) != size:
        raise KeyMaterialError("bad-member", f"{name} must be {size} bytes for {what}")
    return data


def _ec_curve(key: Key) -> tuple[str, ec.EllipticCurve]:
    crv = key.member("crv")
    if crv is None:
        raise KeyMaterialError("missing-member", "crv is missing")
    curve = _CURVES.get(crv)
    if curve is None:
        raise KeyMaterialError("invalid-key", "unsupported EC curve (P-256, P-384, P-521)")
    return crv, curve


def _okp_crv(key: Key) -> str:
    crv = key.member("crv")
    if crv is None:
        raise KeyMaterialError("missing-member", "crv is missing")
    if crv not in _OKP_SIZES:
        raise KeyMaterialError("invalid-key", "unsupported OKP curve (Ed25519, Ed448)")
    return crv


_ED_P = 2**255 - 19
_ED_D = (-121665 * pow(121666, _ED_P - 2, _ED_P)) % _ED_P
_ED_SQRT_M1 = pow(2, (_ED_P - 1) // 4, _ED_P)


def _ed25519_on_curve(encoded: bytes) -> bool:
    """RFC 8032 5.1.3 point decoding (one exponentiation): True when it names a curve point.

    Written here because cryptography loads any 32 bytes as a public key, and the
    maintained check (libsodium through PyNaCl) is not a dependency of the verifier-only
    install. Pinned by the RFC 8032 vectors and cross-checked against libsodium in
    tests/test_crypto.py.
    """
    p = _ED_P
    y = int.from_bytes(encoded, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= p:
        return False
    u, v = (y * y - 1) % p, (_ED_D * y * y + 1) % p
    x = u * pow(v, 3, p) * pow(u * pow(v, 7, p), (p - 5) // 8, p) % p
    vx2 = v * x * x % p
    if vx2 == (-u) % p:
        x = x * _ED_SQRT_M1 % p
    elif vx2 != u:
        return False
    return not (x == 0 and sign == 1)


def _rsa_public(key: Key) -> rsa.RSAPublicNumbers:
    n, e = _int(key, "n"), _int(key, "e")
    if n.bit_length() > _RSA_MAX_BITS:
        raise KeyMaterialError("invalid-key", f"RSA modulus over {_RSA_MAX_BITS} bits")
    if n % 2 == 0:  # a product of two odd primes is odd; cryptography accepts an even n
        raise KeyMaterialError("invalid-key", "RSA modulus n is even")
    return rsa.RSAPublicNumbers(e, n)


def load_public(key: Key) -> PublicKeyTypes:
    """The public key the members describe; oct keys have none."""
    try:
        if key.kty == "RSA":
            return _rsa_public(key).public_key()
        if key.kty == "EC":
            crv, curve = _ec_curve(key)
            size = (curve.key_size + 7) // 8
            x = int.from_bytes(_fixed(key, "x", size, crv), "big")
            y = int.from_bytes(_fixed(key, "y", size, crv), "big")
            try:
                return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            except _REFUSED:
                raise KeyMaterialError(
                    "point-not-on-curve", f"(x, y) is not a {crv} point"
                ) from None
        if key.kty == "OKP":
            crv = _okp_crv(key)
            x_raw = _fixed(key, "x", _OKP_SIZES[crv], crv)
            if crv == "Ed25519":
                if not _ed25519_on_curve(x_raw):
                    raise KeyMaterialError("point-not-on-curve", "x is not an Ed25519 point")
                return ed25519.Ed25519PublicKey.from_public_bytes(x_raw)
            return ed448.Ed448PublicKey.from_public_bytes(x_raw)
    except KeyMaterialError:
        raise
    except _REFUSED:
        raise KeyMaterialError("invalid-key", f"cryptography refuses the {key.kty} key") from None
    raise KeyMaterialError("invalid-key", f"kty {key.kty!r} has no public key")


def _rsa_private(key: Key, public: rsa.RSAPublicNumbers) -> rsa.RSAPrivateKey:
    present = [name for name in _RSA_CRT if key.member(name) is not None]
    if len(present) != len(_RSA_CRT):
        raise KeyMaterialError("missing-member", "an RSA private key needs d, p, q, dp, dq and qi")
    d, p, q, dp, dq, qi = (_int(key, name) for name in ("d", *_RSA_CRT))
    if p * q != public.n:
        raise KeyMaterialError("private-mismatch", "p * q is not the public modulus n")
    numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, public)
    if not _rsa_crt_fits(numbers):
        raise KeyMaterialError("private-mismatch", "d, dp, dq or qi do not fit n and e")
    try:
        # The members are checked against n and e above, exactly, and the key must sign
        # what its public half verifies. OpenSSL's own check would add a primality test
        # of p and q: ~40 ms per RSA-2048 key and ~250 ms per RSA-4096 key at every start.
        private = numbers.private_key(unsafe_skip_rsa_key_validation=True)
        signature = private.sign(_PROBE, padding.PKCS1v15(), hashes.SHA256())
        private.public_key().verify(signature, _PROBE, padding.PKCS1v15(), hashes.SHA256())
    except (*_REFUSED, InvalidSignature, InternalError):
        raise KeyMaterialError("private-mismatch", "d, dp, dq or qi do not fit n and e") from None
    return private


def _rsa_crt_fits(numbers: rsa.RSAPrivateNumbers) -> bool:
    """Whether d and the CRT members are the ones n = p * q and e call for (RFC 8017 3.2)."""
    p, q, d = numbers.p, numbers.q, numbers.d
    if p < 3 or q < 3 or p == q:
        return False
    p1, q1 = p - 1, q - 1
    lcm = math.lcm(p1, q1)
    return (
        0 < d < p * q
        and (d * numbers.public_numbers.e) % lcm == 1
        and numbers.dmp1 == d % p1
        and numbers.dmq1 == d % q1
        and 0 < numbers.iqmp < p
        and (numbers.iqmp * q) % p == 1
    )


def load_private(key: Key) -> PrivateKeyTypes:
    """The private key, checked against the public members it comes with."""
    if key.member("d") is None:
        raise KeyMaterialError("missing-member", "d (the private key) is missing")
    public = load_public(key)
    try:
        if key.kty == "RSA":
            return _rsa_private(key, _rsa_public(key))
        if key.kty == "EC":
            crv, curve = _ec_curve(key)
            d_raw = _fixed(key, "d", (curve.key_size + 7) // 8, crv)
            try:
                private_ec = ec.derive_private_key(int.from_bytes(d_raw, "big"), curve)
            except _REFUSED:
                raise KeyMaterialError("invalid-key", f"d is out of range for {crv}") from None
            assert isinstance(public, ec.EllipticCurvePublicKey)
            if private_ec.public_key().public_numbers() != public.public_numbers():
                raise KeyMaterialError("private-mismatch", "d does not match x and y")
            return private_ec
        if key.kty == "OKP":
            crv = _okp_crv(key)
            d_raw = _fixed(key, "d", _OKP_SIZES[crv], crv)
            private_okp: ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
            if crv == "Ed25519":
                private_okp = ed25519.Ed25519PrivateKey.from_private_bytes(d_raw)
            else:
                private_okp = ed448.Ed448PrivateKey.from_private_bytes(d_raw)
            raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
            if private_okp.public_key().public_bytes(*raw) != public.public_bytes(*raw):
                raise KeyMaterialError("private-mismatch", "d does not match x")
            return private_okp
    except KeyMaterialError:
        raise
    except _REFUSED:
        raise KeyMaterialError("invalid-key", f"cryptography refuses the {key.kty} key") from None
    raise KeyMaterialError("invalid-key", f"kty {key.kty!r} has no private key object")


# --- X.509 members ------------------------------------------------------------------------

#: Certificates in one x5c chain keysetd reads; providers publish one, or a short chain.
X5C_MAX = 10


def check_x509(key: Key) -> None:
    """The key's ``x5c``/``x5t``/``x5t#S256`` are consistent with it, else KeyMaterialError.

    Every x5c entry must be standard base64 (RFC 7517 4.7) of a DER certificate; the
    first one must hold this very public key; x5t and x5t#S256 must be the base64url
    SHA-1 and SHA-256 of that first certificate's DER. Only the binding is checked, not
    a chain, issuer or expiry: Keycloak and ADFS publish self-signed certificates nobody
    renews, and the trust in the key comes from where it was fetched. Rule: x5c-mismatch.
    """
    if not key.x5c and not key.x5t and not key.x5t_s256:
        return
    from cryptography import x509  # only for keys with certificates: ~6 MB, ~20 ms at start

    if not key.x5c:
        raise KeyMaterialError("x5c-mismatch", "x5t/x5t#S256 without the x5c they hash")
    if len(key.x5c) > X5C_MAX:
        raise KeyMaterialError("x5c-mismatch", f"x5c holds more than {X5C_MAX} certificates")
    ders: list[bytes] = []
    for index, entry in enumerate(key.x5c):
        try:
            der = base64.b64decode(entry, validate=True)
            x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError):
            raise KeyMaterialError(
                "x5c-mismatch", f"x5c[{index}] is not a base64 DER certificate"
            ) from None
        ders.append(der)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        leaf = x509.load_der_x509_certificate(ders[0]).public_key()
        same = leaf.public_bytes(*spki) == load_public(key).public_bytes(*spki)
    except (*_REFUSED, KeyMaterialError):
        same = False
    if not same:
        raise KeyMaterialError("x5c-mismatch", "the x5c[0] certificate does not hold this key")
    if key.x5t and key.x5t != b64u_encode(hashlib.sha1(ders[0]).digest()):  # noqa: S324
        raise KeyMaterialError("x5c-mismatch", "x5t is not the SHA-1 of the x5c[0] certificate")
    if key.x5t_s256 and key.x5t_s256 != b64u_encode(hashlib.sha256(ders[0]).digest()):
        raise KeyMaterialError(
            "x5c-mismatch", "x5t#S256 is not the SHA-256 of the x5c[0] certificate"
        )


# --- key objects -> members ---------------------------------------------------------------


def _public_members(public_key: PublicKeyTypes) -> tuple[str, dict[str, str], str]:
    """(kty, members, default alg) for a cryptography public key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(public_key.curve.name)
        if crv is None:
            raise ValueError(f"unsupported EC curve {public_key.curve.name}")
        numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        members = {"crv": crv, "x": _int_b64u(numbers.x, size), "y": _int_b64u(numbers.y, size)}
        return "EC", members, _CURVE_ALGS[crv]
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "OKP", {"crv": "Ed25519", "x": b64u_encode(public_key.public_bytes(*raw))}, "EdDSA"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "OKP", {"crv": "Ed448", "x": b64u_encode(public_key.public_bytes(*raw))}, "EdDSA"
    if isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        return "RSA", {"n": _int_b64u(rsa_numbers.n), "e": _int_b64u(rsa_numbers.e)}, "RS256"
    raise ValueError(f"unsupported key type {type(public_key).__name__}")


def _private_members(private_key: PrivateKeyTypes) -> dict[str, str]:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        size = (private_key.curve.key_size + 7) // 8
        return {"d": _int_b64u(private_key.private_numbers().private_value, size)}
    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        data = private_key.private_bytes(*raw, serialization.NoEncryption())
        return {"d": b64u_encode(data)}
    if isinstance(private_key, rsa.RSAPrivateKey):
        n = private_key.private_numbers()
        values = {"d": n.d, "p": n.p, "q": n.q, "dp": n.dmp1, "dq": n.dmq1, "qi": n.iqmp}
        return {name: _int_b64u(value) for name, value in values.items()}
    raise ValueError(f"unsupported key type {type(private_key).__name__}")


def _build(
    kty: str,
    public: Mapping[str, str],
    private: Mapping[str, str],
    *,
    kid: str | None,
    alg: str,
) -> Key:
    key = Key(
        kid=kid or "",
        kty=kty,
        alg=alg,
        public=tuple(sorted(public.items())),
        private=tuple(sorted(private.items())),
    )
    if kid is None:
        key = Key(kid=thumbprint(key), kty=kty, alg=alg, public=key.public, private=key.private)
    return key


def key_from_public(public_key: PublicKeyTypes, *, kid: str | None, alg: str | None) -> Key:
    """A public Key; kid defaults to the RFC 7638 thumbprint, alg to the key's natural one."""
    kty, members, default_alg = _public_members(public_key)
    return _build(kty, members, {}, kid=kid, alg=alg or default_alg)


def key_from_private(private_key: PrivateKeyTypes, *, kid: str | None, alg: str | None) -> Key:
    """A Key with private members; kid and alg default as for ``key_from_public``."""
    private = _private_members(private_key)
    kty, members, default_alg = _public_members(private_key.public_key())
    return _build(kty, members, private, kid=kid, alg=alg or default_alg)


def thumbprint(key: Key) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members."""
    names = _THUMBPRINT_MEMBERS.get(key.kty)
    if names is None:
        raise ValueError(f"no thumbprint for kty {key.kty!r}")
    members: dict[str, str] = {}
    for name in names:
        value = key.kty if name == "kty" else key.member(name)
        if value is None:
            raise ValueError(f"no thumbprint: {name} is missing")
        members[name] = value
    body = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64u_encode(hashlib.sha256(body.encode("utf-8")).digest())


def spki_pem(key: Key) -> bytes:
    """SubjectPublicKeyInfo PEM of an asymmetric key."""
    return load_public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pkcs8_pem(key: Key) -> bytes:
    """Unencrypted PKCS#8 PEM of a key with private members (the file mode protects it)."""
    return load_private(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- generation ---------------------------------------------------------------------------

_RSA_GENERATED_BITS = 3072


def generate(alg: str, kid: str | None = None) -> Key:
    """A new private key for ``alg``; kid defaults to its RFC 7638 thumbprint.

    HMAC secrets are ``secrets.token_urlsafe(hash length)``: as much entropy as the
    hash output, longer than it in bytes, and valid UTF-8 so the rgs and env formats
    can carry them.
    """
    family = ALGORITHMS.get(alg)
    if family is None:
        raise ValueError(f"unknown alg {alg!r}; use one of {', '.join(ALGORITHMS)}")
    kty, crv = family
    private_key: PrivateKeyTypes
    if kty == "oct":
        secret = secrets.token_urlsafe(HMAC_MIN_BYTES[alg]).encode("ascii")
        return _build("oct", {}, {"k": b64u_encode(secret)}, kid=kid, alg=alg)
    if kty == "EC":
        assert crv is not None
        private_key = ec.generate_private_key(_CURVES[crv])
    elif kty == "OKP":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_GENERATED_BITS)
    return key_from_private(private_key, kid=kid, alg=alg)
