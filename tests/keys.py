"""Test keys made with cryptography directly, independent of keysetd's own code."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

#: The JWK members that hold private material; ``k`` is the whole of an HMAC key.
ASYMMETRIC_PRIVATE = ("d", "p", "q", "dp", "dq", "qi")
PRIVATE = (*ASYMMETRIC_PRIVATE, "k")

_CURVES = {
    "ES256": (ec.SECP256R1(), "P-256", 32),
    "ES384": (ec.SECP384R1(), "P-384", 48),
    "ES512": (ec.SECP521R1(), "P-521", 66),
}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_int(value: int, size: int | None = None) -> str:
    size = size or (value.bit_length() + 7) // 8
    return b64u(value.to_bytes(size, "big"))


def jwk(
    alg: str = "ES256", kid: str = "k1", private: bool = True, bits: int = 2048
) -> dict[str, Any]:
    """A JWK dict of a fresh key for ``alg``."""
    out: dict[str, Any]
    if alg in _CURVES:
        curve, crv, size = _CURVES[alg]
        key = ec.generate_private_key(curve)
        nums = key.private_numbers()
        out = {
            "kty": "EC",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "crv": crv,
            "x": b64u_int(nums.public_numbers.x, size),
            "y": b64u_int(nums.public_numbers.y, size),
        }
        if private:
            out["d"] = b64u_int(nums.private_value, size)
    elif alg == "EdDSA":
        ed = ed25519.Ed25519PrivateKey.generate()
        raw = ed.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        out = {"kty": "OKP", "kid": kid, "alg": alg, "use": "sig", "crv": "Ed25519", "x": b64u(raw)}
        if private:
            out["d"] = b64u(
                ed.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            )
    elif alg.startswith(("RS", "PS")):
        rk = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        n = rk.private_numbers()
        out = {
            "kty": "RSA",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "n": b64u_int(n.public_numbers.n),
            "e": b64u_int(n.public_numbers.e),
        }
        if private:
            out.update(
                d=b64u_int(n.d),
                p=b64u_int(n.p),
                q=b64u_int(n.q),
                dp=b64u_int(n.dmp1),
                dq=b64u_int(n.dmq1),
                qi=b64u_int(n.iqmp),
            )
    elif alg.startswith("HS"):
        out = {
            "kty": "oct",
            "kid": kid,
            "alg": alg,
            "use": "sig",
            "k": b64u(secrets.token_bytes(int(alg[2:]) // 8)),
        }
    else:
        raise ValueError(alg)
    return out


def public(key: dict[str, Any]) -> dict[str, Any]:
    """What a verifier gets of ``key``: its asymmetric private members left out (oct keeps k)."""
    return {name: value for name, value in key.items() if name not in ASYMMETRIC_PRIVATE}


def secrets_of(*keys: dict[str, Any]) -> list[str]:
    return [key[m] for key in keys for m in PRIVATE if m in key]


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    """No secret, nor any 16-character window of one (a leak too), appears in ``text``."""
    for secret in secrets:
        for start in range(0, max(1, len(secret) - 16), 8):
            assert secret[start : start + 16] not in text, f"key material in {where}"


def jwks_doc(*keys: dict[str, Any], active: str | None = None) -> bytes:
    doc: dict[str, Any] = {"keys": list(keys)}
    if active is not None:
        doc["active_kid"] = active
    return json.dumps(doc, indent=2).encode()


def write_atomically(path: Path, data: bytes) -> None:
    """How an operator or a config-management tool replaces a file: write aside, rename."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    temp.replace(path)
