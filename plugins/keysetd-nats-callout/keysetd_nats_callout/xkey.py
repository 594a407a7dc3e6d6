"""Curve nkeys (xkeys) and their Seal/Open, as nats-io/nkeys ``xkeys.go`` does them.

nats-server encrypts an auth callout request when its ``auth_callout`` has an ``xkey``:
it seals the request JWT with its own curve key to that public key and names its own
public key in the ``Nats-Server-Xkey`` header; the response goes back sealed the other
way. nkeys-py (0.2) knows no curve keys; their encoding is ``keysetd.formats.nkey``:

- A public key is ``X...``: base32 (no padding) of prefix byte ``23 << 3``, the 32-byte
  X25519 public key and a CRC-16 (little endian) of both, as for every nkey.
- A seed is ``SX...``: the seed prefix ``18 << 3`` and the curve prefix packed in two
  bytes, the 32-byte X25519 private key and the CRC-16.
- A sealed message is ``b"xkv1"``, a random 24-byte nonce, then NaCl ``box`` (X25519,
  XSalsa20-Poly1305) of the plaintext: PyNaCl's ``Box`` is the same construction as Go's
  ``golang.org/x/crypto/nacl/box``.

Errors are ``XkeyError`` and never carry a seed or a plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import nacl.exceptions
import nacl.utils
from nacl.public import Box, PrivateKey, PublicKey

from keysetd.plugin import nkey

__all__ = [
    "PREFIX_BYTE_CURVE",
    "VERSION",
    "CurveKey",
    "XkeyError",
    "decode_public",
    "decode_seed",
    "encode_public",
    "encode_seed",
]

VERSION: Final = b"xkv1"
NONCE_LEN: Final = 24
#: Go's Open refuses anything no longer than version + nonce.
_MIN_SEALED: Final = len(VERSION) + NONCE_LEN + 1


PREFIX_BYTE_CURVE: Final = nkey.PREFIX_BYTE_CURVE
#: The codec's error: a curve key or seed that does not decode; never carries the key.
XkeyError = nkey.NkeyError
encode_public = nkey.encode_curve_public
decode_public = nkey.decode_curve_public
encode_seed = nkey.encode_curve_seed
decode_seed = nkey.decode_curve_seed


@dataclass(frozen=True, slots=True)
class CurveKey:
    """An xkey pair from its seed; repr shows only the public key."""

    public_key: str
    _private: PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes) -> CurveKey:
        """From an ``SX...`` seed; X25519 clamps the raw key itself, as Go's curve25519 does."""
        private = PrivateKey(decode_seed(seed))
        return cls(encode_public(bytes(private.public_key)), private)

    @classmethod
    def generate(cls) -> CurveKey:
        """A fresh pair (tests; an operator makes the seed file, see the README)."""
        return cls.from_seed(encode_seed(nacl.utils.random(nkey.KEY_LEN)))

    def _box(self, peer: str) -> Box:
        try:
            return Box(self._private, PublicKey(decode_public(peer)))
        except nacl.exceptions.CryptoError:  # a low-order point: no shared key
            raise XkeyError("the peer's curve key is not usable") from None

    def seal(self, data: bytes, recipient: str, *, nonce: bytes | None = None) -> bytes:
        """``xkv1 || nonce || box(data)`` for ``recipient`` (X...), as Go's Seal writes it.

        ``nonce`` is for test vectors only: a repeated nonce breaks the encryption.
        """
        nonce = nacl.utils.random(NONCE_LEN) if nonce is None else nonce
        if len(nonce) != NONCE_LEN:
            raise XkeyError(f"a nonce is {NONCE_LEN} bytes")
        return VERSION + bytes(self._box(recipient).encrypt(data, nonce))

    def open(self, data: bytes, sender: str) -> bytes:
        """The plaintext of a message ``sender`` (X...) sealed for this key; XkeyError else."""
        if len(data) < _MIN_SEALED:
            raise XkeyError("not a sealed message: too short")
        if not data.startswith(VERSION):
            raise XkeyError("not a sealed message: no xkv1 version header")
        body = data[len(VERSION) :]
        box = self._box(sender)
        try:
            return box.decrypt(body[NONCE_LEN:], body[:NONCE_LEN])
        except nacl.exceptions.CryptoError:
            raise XkeyError("the sealed message does not open with this key and sender") from None

    def __repr__(self) -> str:
        return f"CurveKey(public_key={self.public_key!r})"
