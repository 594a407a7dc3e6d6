"""The ``aws_kms`` key provider: ``[state] encryption = "aws_kms"``.

Each sealed write asks KMS for a fresh data key (``GenerateDataKey``, AES_256)
under a symmetric KMS key; opening a file ``Decrypt``s its wrapped key. The
state file's name is the encryption context (``{"keysetd-state": NAME}``), so KMS
refuses to unwrap a key copied to another file. The key id in a sealed file is
the key ARN KMS answered, and ``Decrypt`` names it, so files sealed under a key
the config no longer names still open (with ``kms:Decrypt`` on it) until
``keysetd state rewrap`` re-seals them. KMS rotates key material behind one key
id, so the version is always 1. Credentials and error translation are the
``aws_kms`` source's: the standard chain, never a credential in a message.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from keysetd.plugin import (
    After,
    KeyProvider,
    KeyProviderConfig,
    SealError,
    SourceError,
    WrappedKey,
    check_http_url,
    non_empty,
)
from keysetd_aws_kms.source import AwsKmsSource, AwsKmsSourceConfig

if TYPE_CHECKING:
    from mypy_boto3_kms.type_defs import DecryptResponseTypeDef

__all__ = ["AwsKmsKeyConfig", "AwsKmsKeyProvider"]

_CONTEXT_KEY = "keysetd-state"


def _url(value: str) -> str:
    return check_http_url(value)


class AwsKmsKeyConfig(KeyProviderConfig):
    """``[state]`` for AWS KMS: the region, a symmetric key (id, ARN or alias), an endpoint."""

    region: Annotated[str, non_empty]
    key_id: Annotated[str, non_empty]
    endpoint_url: Annotated[str, After(_url)] | None = None


class AwsKmsKeyProvider(KeyProvider):
    """GenerateDataKey to seal, Decrypt to open; the file name as encryption context."""

    Config: ClassVar[type[KeyProviderConfig]] = AwsKmsKeyConfig

    def __init__(self, config: AwsKmsKeyConfig) -> None:
        super().__init__(config)
        self.config: AwsKmsKeyConfig = config
        table: dict[str, Any] = {
            "type": "aws_kms",
            "region": config.region,
            "key_ids": [config.key_id],
            "timeout": config.timeout,
        }
        if config.endpoint_url is not None:
            table["endpoint_url"] = config.endpoint_url
        self._kms = AwsKmsSource(AwsKmsSourceConfig.parse(table))

    def describe(self) -> str:
        return f"aws_kms:{self.config.region}/{self.config.key_id}"

    def close(self) -> None:
        self._kms.close()

    def new_key(self, aad: bytes) -> tuple[bytes, WrappedKey]:
        client = self._client()
        key_id = self.config.key_id
        reply = self._call(
            "GenerateDataKey",
            key_id,
            lambda: client.generate_data_key(
                KeyId=key_id, KeySpec="AES_256", EncryptionContext=_context(aad)
            ),
        )
        blob = reply.get("CiphertextBlob")
        plaintext = reply.get("Plaintext")
        arn = reply.get("KeyId") or key_id
        if not isinstance(blob, bytes) or not isinstance(plaintext, bytes):
            raise SealError(self.describe(), f"GenerateDataKey {key_id}: no data key answered")
        return plaintext, WrappedKey(base64.b64encode(blob).decode(), arn, 1)

    def wrap(self, data_key: bytes, aad: bytes) -> WrappedKey:
        client = self._client()
        key_id = self.config.key_id
        reply = self._call(
            "Encrypt",
            key_id,
            lambda: client.encrypt(
                KeyId=key_id, Plaintext=data_key, EncryptionContext=_context(aad)
            ),
        )
        blob = reply.get("CiphertextBlob")
        if not isinstance(blob, bytes):
            raise SealError(self.describe(), f"Encrypt {key_id}: no ciphertext answered")
        return WrappedKey(base64.b64encode(blob).decode(), reply.get("KeyId") or key_id, 1)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        client = self._client()
        try:
            blob = base64.b64decode(wrapped.blob, validate=True)
        except (ValueError, binascii.Error):
            raise SealError(self.describe(), "the wrapped data key is not base64") from None
        reply: DecryptResponseTypeDef = self._call(
            "Decrypt",
            wrapped.key_id,
            lambda: client.decrypt(
                CiphertextBlob=blob, KeyId=wrapped.key_id, EncryptionContext=_context(aad)
            ),
        )
        plaintext = reply.get("Plaintext")
        if not isinstance(plaintext, bytes):
            raise SealError(self.describe(), f"Decrypt {wrapped.key_id}: no data key answered")
        return plaintext

    def _client(self) -> Any:
        try:
            return self._kms.client()
        except SourceError as exc:
            raise SealError(self.describe(), exc.reason) from None

    def _call(self, operation: str, ref: str, call: Any) -> Any:
        deadline = time.monotonic() + float(self.config.timeout)
        try:
            return self._kms.call(operation, ref, deadline, call)
        except SourceError as exc:
            raise SealError(self.describe(), exc.reason) from None


def _context(aad: bytes) -> dict[str, str]:
    return {_CONTEXT_KEY: aad.decode("utf-8", errors="replace")}
