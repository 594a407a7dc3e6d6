"""The ``key_file`` key provider: data keys wrapped by a local 256-bit key (tests, small sites).

The key file holds 32 random bytes, raw or base64 (``head -c 32 /dev/urandom | base64``),
and should be readable by keysetd alone (strict mode refuses a group- or world-readable
one). Its key id is a SHA-256 of the key (never the key); files sealed under a key
listed in ``previous_key_files`` still open, so a key is rotated by adding the new
one, moving the old one to ``previous_key_files`` and running ``keysetd state rewrap``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keysetd.errors import SealError
from keysetd.extension import KeyProvider, KeyProviderConfig
from keysetd.readfile import read_limited
from keysetd.sealing import DATA_KEY_BYTES, WrappedKey, canonical_b64decode

__all__ = ["KeyFileConfig", "KeyFileProvider"]

_KEY_FILE_LIMIT = 4096
_NONCE_BYTES = 12


class KeyFileConfig(KeyProviderConfig):
    key_file: Path
    previous_key_files: tuple[Path, ...] = ()


def key_id_of(key: bytes) -> str:
    """A name for the key that says nothing of it: 16 hex digits of a SHA-256."""
    return "sha256:" + hashlib.sha256(b"keysetd key_file id\0" + key).hexdigest()[:16]


class KeyFileProvider(KeyProvider):
    """AES-256-GCM key wrapping under the key in ``key_file``."""

    Config: ClassVar[type[KeyProviderConfig]] = KeyFileConfig

    def __init__(self, config: KeyFileConfig) -> None:
        super().__init__(config)
        self.config: KeyFileConfig = config

    def describe(self) -> str:
        return f"key_file:{self.config.key_file}"

    def _load(self) -> tuple[str, dict[str, bytes]]:
        """The current key's id and every key by id, read now: a replaced file is used at
        once, and a removed one fails at once (no key is kept between calls)."""
        keys: dict[str, bytes] = {}
        current = ""
        for index, path in enumerate([self.config.key_file, *self.config.previous_key_files]):
            key = self._read(path)
            keys.setdefault(key_id := key_id_of(key), key)
            current = current if index else key_id
        return current, keys

    def _read(self, path: Path) -> bytes:
        try:
            raw = read_limited(path, _KEY_FILE_LIMIT)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SealError(self.describe(), f"cannot read key file {path}: {reason}") from None
        if len(raw) == DATA_KEY_BYTES:
            return raw
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != DATA_KEY_BYTES:
            raise SealError(
                self.describe(),
                f"key file {path} does not hold a 256-bit key (32 bytes, raw or base64)",
            )
        return key

    def wrap(self, data_key: bytes, aad: bytes) -> WrappedKey:
        current, keys = self._load()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(keys[current]).encrypt(nonce, data_key, aad)
        return WrappedKey(base64.b64encode(nonce + sealed).decode(), current, 1)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        key = self._load()[1].get(wrapped.key_id)
        if key is None:
            raise SealError(
                self.describe(),
                f"no configured key file holds key {wrapped.key_id}"
                " (list the old one in previous_key_files)",
            )
        try:
            blob = canonical_b64decode(wrapped.blob)
            return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except (ValueError, binascii.Error, InvalidTag):
            raise SealError(
                self.describe(), "the wrapped data key does not open (corrupt or another file's)"
            ) from None
