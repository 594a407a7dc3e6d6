"""NATS JWTs (nats-io/jwt v2): ``{"typ": "JWT", "alg": "ed25519-nkey"}``, signed by an nkey.

The signature is Ed25519 over ``header.payload`` (base64url, no padding), by the nkey
whose public key is the ``iss`` claim. ``jti`` is the reference library's: base32 (no
padding) of SHA-512/256 over the JSON of the standard claims (``aud exp iat iss name nbf
sub``, empty ones left out, in that order) before ``jti`` is set. Pure code: the clock
comes in as ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import nkeys  # type: ignore[import-untyped,unused-ignore]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keysetd.plugin import b64u_encode, nkey

__all__ = [
    "ALGORITHM",
    "NatsJwtError",
    "NkeySigner",
    "decode",
    "encode",
    "jti",
]

ALGORITHM: Final = "ed25519-nkey"
LIB_VERSION: Final = 2
_HEADER: Final = b64u_encode(b'{"typ":"JWT","alg":"ed25519-nkey"}')
#: The standard claims the reference hashes for jti, in its struct order.
_CLAIMS_DATA: Final = ("aud", "exp", "iat", "iss", "name", "nbf", "sub")
#: A NATS JWT larger than this is not a request nats-server sends.
MAX_TOKEN: Final = 1 << 20


class NatsJwtError(ValueError):
    """A NATS JWT that does not decode or verify; the message never carries the token."""


def _b64u_decode(text: str) -> bytes:
    """Lenient where ``keysetd.crypto.b64u_decode`` is strict: padding is tolerated."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise NatsJwtError("a segment is not base64url") from exc


def _go_json(value: object) -> str:
    """JSON as Go's encoding/json writes it: compact, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def jti(claims: Mapping[str, Any]) -> str:
    """The reference library's jti of ``claims`` (its other members do not count)."""
    data = {name: claims[name] for name in _CLAIMS_DATA if claims.get(name)}
    digest = hashlib.new("sha512_256", _go_json(data).encode()).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class NkeySigner:
    """An nkey seed's signing half and its public nkey; repr shows only the public key."""

    public_key: str
    prefix: int
    _private: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes) -> NkeySigner:
        """From an nkey seed (``SA...`` for an account); NatsJwtError when it is not one."""
        try:
            prefix, raw = nkeys.decode_seed(seed.strip())
        except Exception:  # nkeys raises its own errors, binascii's and IndexError alike
            raise NatsJwtError("not an nkey seed") from None
        if len(raw) != 32:
            raise NatsJwtError("not an nkey seed")
        private = Ed25519PrivateKey.from_private_bytes(bytes(raw))
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(nkey.encode_public(public, prefix), prefix, private)

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"NkeySigner(public_key={self.public_key!r})"


def encode(claims: Mapping[str, Any], signer: NkeySigner, *, now: int) -> str:
    """A NATS JWT of ``claims`` (``sub`` required) issued by ``signer`` at ``now``."""
    if not claims.get("sub"):
        raise NatsJwtError("a NATS JWT needs a subject")
    body: dict[str, Any] = {k: v for k, v in claims.items() if k != "jti"}
    body["iss"] = signer.public_key
    body["iat"] = int(now)
    body["jti"] = jti(body)
    nats = dict(body.get("nats") or {})
    nats["version"] = LIB_VERSION
    body["nats"] = nats
    signing_input = f"{_HEADER}.{b64u_encode(_go_json(body).encode())}"
    return f"{signing_input}.{b64u_encode(signer.sign(signing_input.encode('ascii')))}"


def decode(
    token: str | bytes, *, expect_type: str, issuer_prefix: int, now: float
) -> dict[str, Any]:
    """The claims of a NATS JWT whose signature verifies with its own ``iss`` nkey.

    Checks the header, the signature, that ``iss`` is an nkey of ``issuer_prefix``, the
    claim type (``nats.type``), version 2, ``exp`` and ``nbf``. Whether that issuer is
    trusted is the caller's decision.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise NatsJwtError("not ASCII") from exc
    if len(token) > MAX_TOKEN:
        raise NatsJwtError("too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise NatsJwtError("expected 3 segments")
    head, payload, signature = parts
    try:
        header = json.loads(_b64u_decode(head))
        claims = json.loads(_b64u_decode(payload))
    except ValueError as exc:
        raise NatsJwtError("a segment is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NatsJwtError("header and claims must be JSON objects")
    if str(header.get("typ", "")).upper() != "JWT":
        raise NatsJwtError("header typ is not JWT")
    if str(header.get("alg", "")).lower() != ALGORITHM:
        raise NatsJwtError(f"header alg is not {ALGORITHM}")
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise NatsJwtError("no issuer")
    try:
        prefix, raw = nkey.decode_public(issuer)
    except ValueError as exc:
        raise NatsJwtError(f"the issuer is not a public nkey: {exc}") from None
    if prefix != issuer_prefix:
        raise NatsJwtError("the issuer is not the expected kind of nkey")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            _b64u_decode(signature), f"{head}.{payload}".encode("ascii")
        )
    except InvalidSignature:
        raise NatsJwtError("the signature does not verify") from None
    nats = claims.get("nats")
    if not isinstance(nats, dict):
        raise NatsJwtError("no nats claims")
    if nats.get("type") != expect_type:
        raise NatsJwtError(f"not an {expect_type} claim")
    if nats.get("version") != LIB_VERSION:
        raise NatsJwtError("not a version 2 claim")
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int) and exp > 0 and now > exp:
        raise NatsJwtError("expired")
    if isinstance(nbf, int) and nbf > 0 and nbf > now:
        raise NatsJwtError("not yet valid")
    return claims
