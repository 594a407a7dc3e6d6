"""The nkey text encoding: base32 (no padding) of prefix bytes, a key and a CRC-16.

One codec for every nkey keysetd reads or writes: the public user and operator keys of
the ``nats`` output, the issuer keys of NATS JWTs and the curve keys (xkeys) of
encrypted auth callouts. nkeys-py (0.2) encodes public keys only from a seed and knows
no curve keys, so the encoding is written here, with its prefix bytes and checksum
(``nkeys.crc16_checksum``), as nats-io/nkeys ``strkey.go`` does it.

Errors are ``NkeyError`` (a ``ValueError``) and never carry a seed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import nkeys

__all__ = [
    "KEY_LEN",
    "PREFIX_BYTE_CURVE",
    "NkeyError",
    "decode_curve_public",
    "decode_curve_seed",
    "decode_public",
    "encode_curve_public",
    "encode_curve_seed",
    "encode_public",
]

KEY_LEN: Final = 32
#: nkeys' PrefixByteCurve: base32-encodes to ``X``.
PREFIX_BYTE_CURVE: Final = 23 << 3
_PREFIX_BYTE_SEED: Final = 18 << 3


class NkeyError(ValueError):
    """Text that is not the nkey it should be; never carries the key or seed."""


def _encode(body: bytes) -> bytes:
    return base64.b32encode(body + bytes(nkeys.crc16_checksum(body))).rstrip(b"=")


def _decode(text: str | bytes, what: str) -> bytes:
    """The prefix and key bytes of an nkey, its checksum checked."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    try:
        data = base64.b32decode(raw + b"=" * (-len(raw) % 8))
    except (binascii.Error, ValueError):
        raise NkeyError(f"{what} is not base32") from None
    if len(data) < 3 or bytes(nkeys.crc16_checksum(data[:-2])) != data[-2:]:
        raise NkeyError(f"{what}: checksum mismatch")
    return data[:-2]


def encode_public(raw: bytes, prefix: int) -> str:
    """The nkey of a raw 32-byte Ed25519 public key with a public prefix (user, operator, ...)."""
    if len(raw) != KEY_LEN:
        raise NkeyError(f"an Ed25519 public key is {KEY_LEN} bytes, not {len(raw)}")
    if not nkeys.valid_public_prefix_byte(prefix):
        raise NkeyError(f"not an nkey public prefix byte: {prefix}")
    return _encode(bytes([prefix]) + raw).decode("ascii")


def decode_public(text: str) -> tuple[int, bytes]:
    """(prefix byte, raw key) of a public Ed25519 nkey; NkeyError when it is not one."""
    body = _decode(text, "public nkey")
    if len(body) != 1 + KEY_LEN:
        raise NkeyError("a public nkey holds 35 bytes")
    if not nkeys.valid_public_prefix_byte(body[0]):
        raise NkeyError("not a public nkey prefix")
    return body[0], body[1:]


def encode_curve_public(raw: bytes) -> str:
    """The ``X...`` text of a raw 32-byte X25519 public key."""
    if len(raw) != KEY_LEN:
        raise NkeyError(f"a curve public key is {KEY_LEN} bytes")
    return _encode(bytes([PREFIX_BYTE_CURVE]) + raw).decode("ascii")


def decode_curve_public(text: str) -> bytes:
    """The raw X25519 public key of an ``X...`` key; NkeyError when it is not one."""
    body = _decode(text, "curve public key")
    if len(body) != 1 + KEY_LEN or body[0] != PREFIX_BYTE_CURVE:
        raise NkeyError("not a curve public key (X...)")
    return body[1:]


def encode_curve_seed(raw: bytes) -> bytes:
    """The ``SX...`` seed of a raw 32-byte X25519 private key: seed and curve prefix packed."""
    if len(raw) != KEY_LEN:
        raise NkeyError(f"a curve seed holds {KEY_LEN} bytes")
    prefix = bytes([_PREFIX_BYTE_SEED | PREFIX_BYTE_CURVE >> 5, (PREFIX_BYTE_CURVE & 31) << 3])
    return _encode(prefix + raw)


def decode_curve_seed(seed: bytes) -> bytes:
    """The raw X25519 private key of an ``SX...`` seed; NkeyError (no seed in it) otherwise."""
    body = _decode(seed, "curve seed")
    if len(body) != 2 + KEY_LEN:
        raise NkeyError("not a curve seed (SX...)")
    kind = body[0] & 0b11111000
    prefix = (body[0] & 0b111) << 5 | (body[1] & 0b11111000) >> 3
    if kind != _PREFIX_BYTE_SEED or prefix != PREFIX_BYTE_CURVE:
        raise NkeyError("not a curve seed (SX...)")
    return body[2:]
