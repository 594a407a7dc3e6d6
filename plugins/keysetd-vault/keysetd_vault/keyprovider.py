"""The ``vault_transit`` key provider: ``[state] encryption = "vault_transit"``.

Data keys are wrapped by ``transit/encrypt/<key>`` and unwrapped by
``transit/decrypt/<key>`` of an ``aes256-gcm96`` transit key, the state file's
name as ``associated_data``, so Vault refuses to unwrap a key copied to another
file. The key id in a sealed file is the transit key's name and its version the
one in the ciphertext (``vault:v<N>:``): after ``transit/keys/<key>/rotate`` new
writes use the new version, and ``keysetd state rewrap`` re-seals the old ones.
Authentication, the deadline and the error translation are the ``vault_transit``
source's (a token, AppRole or Kubernetes login); messages never carry a token,
a data key or a ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from keysetd.plugin import (
    After,
    KeyProvider,
    KeyProviderConfig,
    SealError,
    SourceError,
    WrappedKey,
)
from keysetd_vault.source import VaultConnection, VaultTransitConfig, VaultTransitSource

__all__ = ["VaultTransitKeyConfig", "VaultTransitKeyProvider"]

_VERSION = re.compile(r"^vault:v(\d+):")
_T = TypeVar("_T")


def _key_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError("is not a transit key name")
    return value


class VaultTransitKeyConfig(VaultConnection, KeyProviderConfig):
    """``[state]`` for Vault/OpenBao transit: the source's connection and auth keys, one key."""

    key: Annotated[str, After(_key_name)] = "keysetd-state"

    def __post_init__(self) -> None:
        self.connection()  # the auth rules of the source, checked once here

    def connection(self) -> VaultTransitConfig:
        """The same server and auth as a ``vault_transit`` source table."""
        table: dict[str, Any] = {"type": "vault_transit", "keys": [self.key]}
        for name in (*VaultConnection.model_fields, "timeout"):
            if name == "token":
                continue  # revealed below, only into the source table
            value = getattr(self, name)
            if value is not None:
                table[name] = str(value) if isinstance(value, Path) else value
        if self.token is not None:
            table["token"] = self.token.reveal()
        try:
            return VaultTransitConfig.parse(table)
        except ValueError as exc:  # TableError: every message names a key, never a value
            raise ValueError(str(exc)) from None


class VaultTransitKeyProvider(KeyProvider):
    """Wraps data keys with transit encrypt/decrypt; one login shared by every call."""

    Config: ClassVar[type[KeyProviderConfig]] = VaultTransitKeyConfig

    def __init__(self, config: VaultTransitKeyConfig) -> None:
        super().__init__(config)
        self.config: VaultTransitKeyConfig = config
        self._vault = VaultTransitSource(config.connection())

    def describe(self) -> str:
        return f"vault_transit:{self.config.address}/{self.config.mount}/{self.config.key}"

    def close(self) -> None:
        self._vault.close()

    def wrap(self, data_key: bytes, aad: bytes) -> WrappedKey:
        name, mount = self.config.key, self.config.mount

        def encrypt(client: Any) -> Any:
            return client.secrets.transit.encrypt_data(
                name=name,
                plaintext=base64.b64encode(data_key).decode(),
                associated_data=base64.b64encode(aad).decode(),
                mount_point=mount,
            )

        data = self._data(
            f"encrypt with key {name!r}", self._run(f"encrypt with {name!r}", encrypt)
        )
        ciphertext = data.get("ciphertext")
        version = _VERSION.match(ciphertext) if isinstance(ciphertext, str) else None
        if not isinstance(ciphertext, str) or version is None:
            raise SealError(self.describe(), f"encrypt with key {name!r}: no ciphertext answered")
        return WrappedKey(ciphertext, name, int(version.group(1)))

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        name, mount = wrapped.key_id, self.config.mount
        try:
            _key_name(name)
        except ValueError:
            raise SealError(self.describe(), "the sealed file names no transit key") from None

        def decrypt(client: Any) -> Any:
            return client.secrets.transit.decrypt_data(
                name=name,
                ciphertext=wrapped.blob,
                associated_data=base64.b64encode(aad).decode(),
                mount_point=mount,
            )

        data = self._data(
            f"decrypt with key {name!r}", self._run(f"decrypt with {name!r}", decrypt)
        )
        try:
            return base64.b64decode(data.get("plaintext") or "", validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise SealError(self.describe(), f"decrypt with key {name!r}: bad answer") from None

    def _data(self, action: str, reply: Any) -> dict[str, Any]:
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, dict):
            raise SealError(self.describe(), f"{action}: unexpected response")
        return data

    def _run(self, action: str, call: Callable[[Any], _T]) -> _T:
        """One transit call with the source's login, deadline and error translation."""
        try:
            return self._vault.run_authorized(action, call)
        except SourceError as exc:
            raise SealError(self.describe(), exc.reason) from None
