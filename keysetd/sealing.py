"""Envelope encryption of the state_dir files that hold private material.

Every write seals the plaintext under a fresh 256-bit data key (AES-256-GCM);
a key provider (``keysetd.extension.KeyProvider``: Vault/OpenBao transit, AWS KMS,
a local key file, or a plugin registered under ``keysetd.key_providers``) wraps the
data key. No pydantic here: ``keysetd status`` and the state files need none. A sealed file
is one JSON object, its marker first so that a reader tells it from plaintext
without parsing::

    {"keysetd_sealed": 1, "provider": "key_file", "key_id": "...", "key_version": 1,
     "wrapped_key": "...", "alg": "A256GCM", "nonce": "<b64>", "ciphertext": "<b64>"}

The associated data binds the file's name and that whole header, and the
provider wraps the data key with the file's name as its own associated data:
a sealed file copied over another name, or given another file's wrapped key,
does not open. Unwrapped data keys are kept in memory only, for
``cache_ttl`` and at most ``_CACHE_ENTRIES`` of them. Errors (``SealError``)
name the file and the provider, never a data key, wrapped or not.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keysetd.errors import SealError

__all__ = [
    "DATA_KEY_BYTES",
    "SEALED_PREFIX",
    "KeyWrapper",
    "SealedInfo",
    "Sealer",
    "WrappedKey",
    "canonical_b64decode",
    "is_sealed",
    "open_with",
    "provider_aad",
    "sealed_provider",
]

SEALED_PREFIX = b'{"keysetd_sealed":'
DATA_KEY_BYTES = 32
_NONCE_BYTES = 12
_CACHE_ENTRIES = 64
_FORMAT = 1


@dataclass(frozen=True, slots=True, repr=False)
class WrappedKey:
    """A data key as the provider wrapped it, with the provider's key id and version."""

    blob: str
    key_id: str
    version: int

    def __repr__(self) -> str:  # the blob is key material, wrapped or not
        return f"WrappedKey(key_id={self.key_id!r}, version={self.version})"


class _Table(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def cache_ttl(self) -> float: ...


class KeyWrapper(Protocol):
    """What the sealer needs of a key provider (``keysetd.extension.KeyProvider``)."""

    @property
    def config(self) -> _Table: ...

    def describe(self) -> str: ...

    def new_key(self, aad: bytes) -> tuple[bytes, WrappedKey]: ...

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes: ...

    def close(self) -> None: ...


def is_sealed(raw: bytes) -> bool:
    """Whether ``raw`` is a sealed file (it may still be corrupt)."""
    return raw.startswith(SEALED_PREFIX)


def sealed_provider(raw: bytes) -> str | None:
    """The provider a sealed file names (None when it names none)."""
    try:
        provider = json.loads(raw).get("provider")
    except (ValueError, AttributeError):
        return None
    return provider if isinstance(provider, str) else None


def provider_aad(name: str) -> bytes:
    """What the provider binds a wrapped data key to: the file's name."""
    return b"keysetd-state:" + name.encode()


def _payload_aad(name: str, header: dict[str, Any]) -> bytes:
    bound = {"file": name, **{k: header[k] for k in ("provider", "key_id", "key_version")}}
    bound["wrapped_key"] = header["wrapped_key"]
    return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


def open_with(path: Path, raw: bytes, sealers: Sequence[Sealer]) -> tuple[Sealer, bytes]:
    """The first of ``sealers`` (of the provider ``raw`` names) that opens it, and the
    plaintext: a move between two keys of one provider type (two key files, two transit
    mounts) that stopped half-way finds each file's opener. SealError when none opens."""
    named = sealed_provider(raw)
    failure: SealError | None = None
    for sealer in sealers:
        if named is not None and sealer.name != named:
            continue
        try:
            return sealer, sealer.open(path, raw)
        except SealError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return sealers[-1], sealers[-1].open(path, raw)  # names the provider mismatch


def canonical_b64decode(text: str) -> bytes:
    """Base64 that only its own encoding decodes to: the unused bits before ``=`` padding
    would otherwise let a changed file open to the same bytes (ValueError)."""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode() != text:
        raise ValueError("not canonical base64")
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True, slots=True)
class SealedInfo:
    """The header of a sealed file: which provider, key and version wrapped its data key."""

    provider: str
    key_id: str
    version: int


class Sealer:
    """Seals and opens state files with one key provider, caching unwrapped data keys."""

    def __init__(
        self, provider: KeyWrapper, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.provider = provider
        self._ttl = float(provider.config.cache_ttl)
        self._clock = clock
        self._cache: dict[tuple[str, str, int, bytes], tuple[bytes, float]] = {}

    def __repr__(self) -> str:
        return f"Sealer({self.provider.describe()!r})"

    @property
    def name(self) -> str:
        return self.provider.config.type

    def seal(self, path: Path, plaintext: bytes) -> bytes:
        """The sealed bytes of ``plaintext`` for the file at ``path`` (a fresh data key)."""
        aad = provider_aad(path.name)
        try:
            data_key, wrapped = self.provider.new_key(aad)
        except SealError as exc:
            raise SealError(str(path), f"cannot wrap a new data key: {exc.reason}") from None
        header: dict[str, Any] = {
            "keysetd_sealed": _FORMAT,
            "provider": self.name,
            "key_id": wrapped.key_id,
            "key_version": wrapped.version,
            "wrapped_key": wrapped.blob,
            "alg": "A256GCM",
        }
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _payload_aad(path.name, header))
        self._remember((wrapped.blob, wrapped.key_id, wrapped.version, aad), data_key)
        document = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
        return json.dumps(document, separators=(",", ":")).encode() + b"\n"

    def open(self, path: Path, raw: bytes) -> bytes:
        """The plaintext of the sealed file ``raw`` read from ``path``; SealError if it is not
        one this provider sealed for that file name."""
        header, nonce, ciphertext = self._parse(path, raw)
        aad = provider_aad(path.name)
        wrapped = WrappedKey(header["wrapped_key"], header["key_id"], header["key_version"])
        data_key = self._unwrap(path, wrapped, aad)
        try:
            return AESGCM(data_key).decrypt(nonce, ciphertext, _payload_aad(path.name, header))
        except InvalidTag:
            raise SealError(
                str(path),
                "does not open (authentication failed): edited, corrupt, or a sealed file"
                " copied from another name",
            ) from None

    def info(self, path: Path, raw: bytes) -> SealedInfo:
        """Which provider, key id and version sealed ``raw`` (nothing is decrypted)."""
        header, _, _ = self._parse(path, raw)
        return SealedInfo(header["provider"], header["key_id"], header["key_version"])

    def _parse(self, path: Path, raw: bytes) -> tuple[dict[str, Any], bytes, bytes]:
        where = str(path)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise SealError(where, "corrupt: not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("keysetd_sealed") != _FORMAT:
            raise SealError(where, "not a sealed file of a format this keysetd reads")
        if doc.get("alg") != "A256GCM":
            raise SealError(where, "corrupt: alg is not A256GCM")
        provider = doc.get("provider")
        if provider != self.name:
            raise SealError(
                where,
                f"sealed by provider {provider!r}, but [state] encryption is {self.name!r}"
                " (move it: keysetd state rewrap --from-config <a config naming the old one>)",
            )
        key_id, version, blob = doc.get("key_id"), doc.get("key_version"), doc.get("wrapped_key")
        if not isinstance(key_id, str) or type(version) is not int or not isinstance(blob, str):
            raise SealError(where, "corrupt: key_id, key_version or wrapped_key is missing")
        try:
            nonce = canonical_b64decode(doc.get("nonce", ""))
            ciphertext = canonical_b64decode(doc.get("ciphertext", ""))
        except (TypeError, ValueError, binascii.Error):
            raise SealError(where, "corrupt: nonce or ciphertext is not base64") from None
        if len(nonce) != _NONCE_BYTES:
            raise SealError(where, "corrupt: the nonce is not 12 bytes")
        return doc, nonce, ciphertext

    def _unwrap(self, path: Path, wrapped: WrappedKey, aad: bytes) -> bytes:
        slot = (wrapped.blob, wrapped.key_id, wrapped.version, aad)
        now = self._clock()
        self.expire()
        cached = self._cache.get(slot)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            data_key = self.provider.unwrap(wrapped, aad)
        except SealError as exc:
            raise SealError(
                str(path),
                f"cannot unwrap its data key (key {wrapped.key_id!r} version {wrapped.version}):"
                f" {exc.reason}",
            ) from None
        if len(data_key) != DATA_KEY_BYTES:
            raise SealError(str(path), f"{self.provider.describe()} unwrapped a key of bad length")
        self._remember(slot, data_key)
        return data_key

    def _remember(self, slot: tuple[str, str, int, bytes], data_key: bytes) -> None:
        if self._ttl <= 0:
            return
        now = self._clock()
        self.expire()
        while len(self._cache) >= _CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[slot] = (data_key, now + self._ttl)

    def expire(self) -> None:
        """Drop the data keys past ``cache_ttl`` (each cycle calls it, so an idle daemon
        holds none longer than the TTL plus one refresh)."""
        now = self._clock()
        for stale in [s for s, (_, until) in self._cache.items() if until <= now]:
            del self._cache[stale]

    def forget(self) -> None:
        """Drop every cached data key (close, reload)."""
        self._cache.clear()

    def close(self) -> None:
        self.forget()
        self.provider.close()
