"""Regenerate the keyset vectors: ``.venv/bin/python tests/vectors/make_vectors.py``.

Keys are fresh on every run; the committed files are the vectors. JWK members are
encoded here with plain ``base64``, independently of ``keysetd.crypto``, so a bug
there cannot hide behind vectors it produced itself.

An invalid vector's file name starts with the rule it must trip:
``invalid/<rule>--<case>.<ext>``. A sidecar ``<stem>.options.json`` holds keyword
arguments for ``keysetd.validate.check`` (``history``, ``declared_public``,
``require_active``). The 20 MiB "too-large" case is built by the tests, not stored.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

HERE = Path(__file__).parent
VALID = HERE / "valid"
INVALID = HERE / "invalid"

Jwk = dict[str, Any]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int, size: int | None = None) -> str:
    return b64u(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


CURVES = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}


def ec_jwk(crv: str, alg: str | None, kid: str | None) -> tuple[Jwk, ec.EllipticCurvePrivateKey]:
    curve, size = CURVES[crv]
    key = ec.generate_private_key(curve)
    pub = key.public_key().public_numbers()
    jwk: Jwk = {"kty": "EC", "crv": crv, "x": uint(pub.x, size), "y": uint(pub.y, size)}
    jwk["d"] = uint(key.private_numbers().private_value, size)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk, key


def ed_jwk(kid: str | None, alg: str | None = "EdDSA") -> Jwk:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    d = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    jwk: Jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "d": b64u(d)}
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def rsa_jwk(bits: int, alg: str | None, kid: str | None) -> tuple[Jwk, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    n = key.private_numbers()
    jwk: Jwk = {"kty": "RSA", "n": uint(n.public_numbers.n), "e": uint(n.public_numbers.e)}
    jwk.update(
        d=uint(n.d), p=uint(n.p), q=uint(n.q), dp=uint(n.dmp1), dq=uint(n.dmq1), qi=uint(n.iqmp)
    )
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk, key


def public(jwk: Jwk) -> Jwk:
    return {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi", "k"}}


def x509_members(subject_key: Any, signer: Any) -> Jwk:
    """x5c (standard base64 DER), x5t, x5t#S256 of a certificate for ``subject_key``."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "vectors")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(signer, hashes.SHA256())
    )
    der = cert.public_bytes(ser.Encoding.DER)
    return {
        "x5c": [base64.b64encode(der).decode()],
        "x5t": b64u(hashlib.sha1(der).digest()),
        "x5t#S256": b64u(hashlib.sha256(der).digest()),
    }


def oct_jwk(kid: str, secret: bytes, alg: str = "HS256") -> Jwk:
    return {"kty": "oct", "kid": kid, "alg": alg, "k": b64u(secret)}


def write(path: Path, content: Jwk | bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        path.write_text(json.dumps(content, indent=2) + "\n")
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)


def options(name: str, **kwargs: Any) -> None:
    write(INVALID / f"{name}.options.json", kwargs)


def spki(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    )


def private_pem(key: Any, fmt: ser.PrivateFormat = ser.PrivateFormat.PKCS8) -> bytes:
    return bytes(key.private_bytes(ser.Encoding.PEM, fmt, ser.NoEncryption()))


def ed25519_non_point() -> bytes:
    """32 bytes that RFC 8032 5.1.3 decoding rejects (no square root for x)."""
    p = 2**255 - 19
    d = (-121665 * pow(121666, p - 2, p)) % p
    for y in range(2, 1000):
        x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
        if x2 and pow(x2, (p - 1) // 2, p) != 1:
            return y.to_bytes(32, "little")
    raise AssertionError("unreachable")


def make_valid() -> None:
    for alg, crv in (("ES256", "P-256"), ("ES384", "P-384"), ("ES512", "P-521")):
        jwk, _ = ec_jwk(crv, alg, f"{alg.lower()}-1")
        write(VALID / f"{alg.lower()}-private.json", {"keys": [jwk]})
        write(VALID / f"{alg.lower()}-public.json", {"keys": [public(jwk)]})
    ed = ed_jwk("eddsa-1")
    write(VALID / "eddsa-private.json", {"keys": [ed]})
    write(VALID / "eddsa-public.json", {"keys": [public(ed)]})
    for alg, bits in (("RS256", 2048), ("PS256", 3072)):
        jwk, _ = rsa_jwk(bits, alg, f"{alg.lower()}-1")
        write(VALID / f"{alg.lower()}-private.json", {"keys": [jwk]})
        write(VALID / f"{alg.lower()}-public.json", {"keys": [public(jwk)]})

    es, _ = ec_jwk("P-256", "ES256", "2026-11-b")
    rs, rs_key = rsa_jwk(2048, "RS256", "2026-10-a")
    mixed = [rs, ed_jwk("2026-09-ed"), es]
    write(VALID / "mixed-private.json", {"active_kid": "2026-11-b", "keys": mixed})
    # What a Keycloak-like JWKS URL serves: extra members, no alg on RSA, a kid-less key.
    certs = x509_members(rs_key.public_key(), rs_key)
    rs_pub = public(rs) | {"use": "sig", **certs, "key_ops": ["verify"]}
    del rs_pub["alg"]
    anon, _ = ec_jwk("P-384", None, None)
    write(VALID / "mixed-public.json", {"keys": [rs_pub, public(anon), public(es)]})
    # RFC 8037 appendix A.1/A.2: a known Ed25519 key, no kid (RFC 7638 thumbprint, A.3).
    rfc8037 = {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    write(VALID / "rfc8037-ed25519.json", {"keys": [rfc8037]})

    rng = random.Random(20261101)
    hs = [
        oct_jwk(f"hs-{i}", rng.randbytes(n), alg)
        for i, (alg, n) in enumerate([("HS256", 32), ("HS384", 48), ("HS512", 64)])
    ]
    write(VALID / "hmac-jwks.json", {"active_kid": "hs-0", "keys": hs})
    write(
        VALID / "rgs.json",
        {
            "active_kid": "k2",
            "keys": {
                "k1": "old-secret-7b1f0c9a2e4d6f8810a3c5e7f9b2d4c6",
                "k2": "nëw-sécret-ünïcødé-4a8c2e6f0b3d5f7a9c1e3b5d7f",
            },
        },
    )

    ec_key = ec.generate_private_key(ec.SECP256R1())
    write(VALID / "es256-private.pem", b"# a signer key\n" + private_pem(ec_key) + spki(ec_key))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write(VALID / "rsa-traditional.pem", private_pem(rsa_key, ser.PrivateFormat.TraditionalOpenSSL))
    ec_trad = ec.generate_private_key(ec.SECP384R1())
    params = b"-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n"
    write(
        VALID / "ec-traditional.pem",
        params + private_pem(ec_trad, ser.PrivateFormat.TraditionalOpenSSL),
    )
    pkcs1 = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    write(
        VALID / "public-mixed.pem",
        spki(ec.generate_private_key(ec.SECP521R1()))
        + spki(ed25519.Ed25519PrivateKey.generate())
        + pkcs1.public_bytes(ser.Encoding.PEM, ser.PublicFormat.PKCS1),
    )


def make_invalid() -> None:
    from keysetd.crypto import key_from_public  # only to compute a history digest

    inv = INVALID
    es, es_key = ec_jwk("P-256", "ES256", "es-1")
    other, other_key = ec_jwk("P-256", "ES256", "es-2")
    rs, _ = rsa_jwk(2048, "RS256", "rs-1")

    write(inv / "malformed--garbage.bin", random.Random(7).randbytes(512))
    write(inv / "malformed--truncated.json", json.dumps({"keys": [public(es)]})[:60])
    write(inv / "malformed--empty.json", b"")
    write(inv / "malformed--top-level-array.json", json.dumps([public(es)]))
    write(inv / "malformed--nan.json", '{"keys": NaN}\n')
    write(inv / "malformed--keys-not-a-list.json", {"keys": "es-1"})
    write(inv / "malformed--key-not-object.json", {"keys": ["es-1"]})
    write(
        inv / "malformed--duplicate-member.json",
        '{"keys": [], "keys": [' + json.dumps(public(es)) + "]}\n",
    )
    write(inv / "malformed--not-utf8.json", b'{"keys": [{"kty": "EC", "kid": "\xff\xfe"}]}\n')
    write(inv / "malformed--deep-nesting.json", '{"keys": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write(inv / "malformed--pem-no-end.pem", spki(es_key).split(b"-----END")[0])
    write(
        inv / "malformed--certificate.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )

    write(inv / "empty-keyset--no-keys.json", {"keys": []})
    write(inv / "empty-keyset--rgs.json", {"keys": {}})

    write(
        inv / "duplicate-kid--two-keys.json",
        {"keys": [public(es), public(other) | {"kid": "es-1"}]},
    )
    write(
        inv / "duplicate-kid--rgs.json",
        '{"keys": {"k1": "Aq1!Sw2@De3#Fr4$Gt5%Hy6^Ju7&Ki8*",'
        ' "k1": "Zx9(Cv8)Bn7_Mq6+Lw5=Ke4[Jr3]Ht2{"}}\n',
    )

    write(inv / "kid-reused--changed-material.json", {"keys": [public(es)]})
    old = key_from_public(other_key.public_key(), kid="es-1", alg="ES256")
    options("kid-reused--changed-material", history={"es-1": old.material_digest()})

    write(
        inv / "missing-kty--no-kty.json",
        {"keys": [{k: v for k, v in public(es).items() if k != "kty"}]},
    )
    write(inv / "unknown-kty--dsa.json", {"keys": [public(es) | {"kty": "DSA"}]})

    write(
        inv / "missing-member--ec-no-y.json",
        {"keys": [{k: v for k, v in public(es).items() if k != "y"}]},
    )
    write(
        inv / "missing-member--rsa-no-e.json",
        {"keys": [{k: v for k, v in public(rs).items() if k != "e"}]},
    )
    write(
        inv / "missing-member--oct-no-k.json",
        {"keys": [{"kty": "oct", "kid": "hs-1", "alg": "HS256"}]},
    )
    write(
        inv / "missing-member--oct-no-kid.json",
        {"keys": [{"kty": "oct", "alg": "HS256", "k": b64u(b"Q" * 32)}]},
    )
    write(
        inv / "missing-member--rsa-partial-crt.json",
        {"keys": [{k: v for k, v in rs.items() if k != "p"}]},
    )

    padded = es | {"x": es["x"] + "="}
    write(inv / "bad-member--padded-x.json", {"keys": [public(padded)]})
    std = public(es) | {"x": "+" + es["x"][1:]}
    write(inv / "bad-member--standard-alphabet.json", {"keys": [std]})
    write(inv / "bad-member--n-not-string.json", {"keys": [public(rs) | {"n": 12345}]})
    write(inv / "bad-member--short-x.json", {"keys": [public(es) | {"x": es["x"][:-2]}]})
    write(inv / "bad-member--empty-kid.json", {"keys": [public(es) | {"kid": ""}]})
    write(
        inv / "bad-member--duplicate-x.json",
        '{"keys": [{"kty": "EC", "kid": "es-1", "crv": "P-256", '
        f'"x": "{es["x"]}", "x": "{other["x"]}", "y": "{es["y"]}"}}]}}\n',
    )

    write(inv / "invalid-key--rsa-even-e.json", {"keys": [public(rs) | {"e": uint(65536)}]})
    even_n = int.from_bytes(base64.urlsafe_b64decode(rs["n"] + "==")) & ~1
    write(inv / "invalid-key--rsa-even-n.json", {"keys": [public(rs) | {"n": uint(even_n)}]})
    write(inv / "invalid-key--ec-d-zero.json", {"keys": [es | {"d": b64u(bytes(32))}]})
    write(
        inv / "invalid-key--unsupported-crv.json",
        {"keys": [public(es) | {"crv": "secp256k1", "alg": "ES256K"}]},
    )
    write(
        inv / "invalid-key--rsa-oth.json",
        {"keys": [rs | {"oth": [{"r": "AQAB", "d": "AQAB", "t": "AQAB"}]}]},
    )
    write(
        inv / "invalid-key--pem-garbage.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAAAAAA\n-----END PUBLIC KEY-----\n",
    )

    p256 = ec_jwk("P-256", "ES256", "es-off")[0]
    y = int.from_bytes(base64.urlsafe_b64decode(p256["y"] + "=="), "big")
    write(inv / "point-not-on-curve--p256.json", {"keys": [public(p256) | {"y": uint(y ^ 1, 32)}]})
    p384 = ec_jwk("P-384", "ES384", "es384-off")[0]
    y384 = int.from_bytes(base64.urlsafe_b64decode(p384["y"] + "=="), "big")
    write(
        inv / "point-not-on-curve--p384.json", {"keys": [public(p384) | {"y": uint(y384 ^ 1, 48)}]}
    )
    write(
        inv / "point-not-on-curve--ed25519.json",
        {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "kid": "ed-off",
                    "alg": "EdDSA",
                    "x": b64u(ed25519_non_point()),
                }
            ]
        },
    )

    write(inv / "alg-none--none.json", {"keys": [public(es) | {"alg": "none"}]})
    write(inv / "alg-none--uppercase.json", {"keys": [public(es) | {"alg": "NONE"}]})
    other, _ = ec_jwk("P-256", "ES256", "other")
    signer = ec.generate_private_key(ec.SECP256R1())
    forged = x509_members(signer.public_key(), signer)
    write(inv / "x5c-mismatch--other-key.json", {"keys": [public(other) | forged]})
    write(inv / "unknown-alg--es256k.json", {"keys": [public(es) | {"alg": "ES256K"}]})
    write(inv / "unknown-alg--hs1.json", {"keys": [oct_jwk("hs-1", b"Z" * 64, "HS1")]})
    write(inv / "alg-mismatch--es256-on-p384.json", {"keys": [public(p384) | {"alg": "ES256"}]})
    write(inv / "alg-mismatch--rs256-on-ec.json", {"keys": [public(es) | {"alg": "RS256"}]})
    write(inv / "alg-mismatch--hs256-on-rsa.json", {"keys": [public(rs) | {"alg": "HS256"}]})
    write(inv / "alg-mismatch--es256-on-ed25519.json", {"keys": [public(ed_jwk("ed-1", "ES256"))]})
    ed448_raw = (
        ed448.Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    )
    write(
        inv / "alg-mismatch--eddsa-on-ed448.json",
        {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed448",
                    "kid": "ed448-1",
                    "alg": "EdDSA",
                    "x": b64u(ed448_raw),
                }
            ]
        },
    )

    small, small_key = rsa_jwk(1024, "RS256", "rs-1024")
    write(inv / "rsa-too-small--1024.json", {"keys": [small]})
    write(inv / "rsa-too-small--1024.pem", spki(small_key))

    write(
        inv / "hmac-too-short--hs256-16-bytes.json",
        {"keys": [oct_jwk("hs-16", b"Kp7#vQ2!mZ9$wX4&")]},
    )
    write(
        inv / "hmac-too-short--hs512-32-bytes.json",
        {"keys": [oct_jwk("hs512-32", b"Yt6@rE3^uI8*oP1(aS5)dF7_gH9+jK2=", "HS512")]},
    )
    write(inv / "hmac-too-short--rgs.json", {"active_kid": "k1", "keys": {"k1": "Vb3#Nm8!Qw"}})

    write(inv / "private-in-public--ec.json", {"keys": [es]})
    options("private-in-public--ec", declared_public=True)
    write(
        inv / "private-in-public--oct.json",
        {"keys": [oct_jwk("hs-1", b"Rt5%Yu7&Io9*Pa2(Sd4)Fg6_Hj8+Kl0=")]},
    )
    options("private-in-public--oct", declared_public=True)

    write(inv / "private-mismatch--ec.json", {"keys": [es | {"d": other["d"]}]})
    rs_other, _ = rsa_jwk(2048, "RS256", "rs-2")
    write(
        inv / "private-mismatch--rsa.json",
        {"keys": [rs | {k: rs_other[k] for k in ("d", "p", "q", "dp", "dq", "qi")}]},
    )
    ed_a, ed_b = ed_jwk("ed-1"), ed_jwk("ed-2")
    write(inv / "private-mismatch--ed25519.json", {"keys": [ed_a | {"d": ed_b["d"]}]})

    write(inv / "active-kid-unknown--typo.json", {"active_kid": "es-l", "keys": [es]})
    write(inv / "missing-active-kid--two-private.json", {"keys": [es, other]})
    options("missing-active-kid--two-private", require_active=True)
    write(inv / "unsupported-use--enc.json", {"keys": [public(es) | {"use": "enc"}]})


def main() -> None:
    for directory in (VALID, INVALID):
        shutil.rmtree(directory, ignore_errors=True)
    make_valid()
    make_invalid()


if __name__ == "__main__":
    main()
