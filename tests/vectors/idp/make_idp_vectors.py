"""Regenerate the identity provider documents.

Run ``.venv/bin/python tests/vectors/idp/make_idp_vectors.py``.

Keycloak and ADFS cannot run in the test suite, so their JWKS documents are recorded
here in the shape they publish, with real keys and certificates made by this script:

- ``keycloak-certs.json``: ``/realms/<realm>/protocol/openid-connect/certs`` of a realm
  with its default providers -- ``rsa-generated`` (RS256, ``use: sig``) and
  ``rsa-enc-generated`` (RSA-OAEP, ``use: enc``) -- each with the self-signed realm
  certificate Keycloak makes (CN = realm name) as ``x5c``, and ``x5t``/``x5t#S256``.
  Member order as Keycloak writes it. ``keycloak-signing-key.pem`` is the private half
  of the RS256 key, so tests can sign the tokens the realm would issue.
- ``adfs-keys.json``: ``/adfs/discovery/keys`` of AD FS: one RS256 token-signing key
  whose kid is its ``x5t``, with ``x5c``. Its tokens name the key by ``x5t`` (and often
  no kid); ``adfs-signing-key.pem`` is its private half.

Keys are fresh on every run; the committed files are the vectors.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int) -> str:
    return b64u(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def self_signed(key: rsa.RSAPrivateKey, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def jwk(key: rsa.RSAPrivateKey, kid: str, alg: str, use: str, cert: bytes) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {
        "kid": kid,
        "kty": "RSA",
        "alg": alg,
        "use": use,
        "n": uint(numbers.n),
        "e": uint(numbers.e),
        "x5c": [base64.b64encode(cert).decode()],
        "x5t": b64u(hashlib.sha1(cert).digest()),
        "x5t#S256": b64u(hashlib.sha256(cert).digest()),
    }


def pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write(name: str, doc: dict[str, Any]) -> None:
    (HERE / name).write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Keycloak kids: the base64url SHA-256 of the provider's key id, 43 characters.
    sig_kid = b64u(hashlib.sha256(b"rsa-generated").digest())
    enc_kid = b64u(hashlib.sha256(b"rsa-enc-generated").digest())
    keys = [
        jwk(enc, enc_kid, "RSA-OAEP", "enc", self_signed(enc, "app")),
        jwk(signing, sig_kid, "RS256", "sig", self_signed(signing, "app")),
    ]
    write("keycloak-certs.json", {"keys": keys})
    (HERE / "keycloak-signing-key.pem").write_bytes(pkcs8(signing))

    adfs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(adfs, "ADFS Signing - adfs.example.com")
    adfs_jwk = jwk(adfs, "", "RS256", "sig", cert)
    adfs_jwk["kid"] = adfs_jwk["x5t"]
    write("adfs-keys.json", {"keys": [adfs_jwk]})
    (HERE / "adfs-signing-key.pem").write_bytes(pkcs8(adfs))


if __name__ == "__main__":
    main()
