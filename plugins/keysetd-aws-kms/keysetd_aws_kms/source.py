"""The ``aws_kms`` source: the public halves of AWS KMS asymmetric signing keys, as a JWKS.

Credentials come from boto3's standard chain (environment, shared files, web
identity for IRSA, container and instance roles), never from keysetd's config.
Each fetch describes every configured key, turns its DER SubjectPublicKeyInfo
(``GetPublicKey``) into a JWK and resolves the ``active`` alias to the key it
targets, so an alias swap in KMS shows up on the next fetch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from string import Formatter
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from cryptography.hazmat.primitives.serialization import load_der_public_key

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_kms.type_defs import KeyMetadataTypeDef

from keysetd.plugin import (
    After,
    Key,
    Snapshot,
    Source,
    SourceConfig,
    SourceError,
    canonical_json,
    check_http_url,
    key_from_public,
    non_empty,
)

__all__ = ["AwsKmsSource", "AwsKmsSourceConfig"]

#: KMS KeySpec -> (kty, crv, JWS alg, the KMS signing algorithm that alg needs).
_EC_SPECS: Mapping[str, tuple[str, str, str]] = {
    "ECC_NIST_P256": ("P-256", "ES256", "ECDSA_SHA_256"),
    "ECC_NIST_P384": ("P-384", "ES384", "ECDSA_SHA_384"),
    "ECC_NIST_P521": ("P-521", "ES512", "ECDSA_SHA_512"),
}
_RSA_SPECS = frozenset({"RSA_2048", "RSA_3072", "RSA_4096"})
#: rsa_alg -> the KMS signing algorithm whose signatures are that JWS alg as they are.
_RSA_ALGS: Mapping[str, str] = {
    "RS256": "RSASSA_PKCS1_V1_5_SHA_256",
    "PS256": "RSASSA_PSS_SHA_256",
}
_SUPPORTED_SPECS = ", ".join([*_EC_SPECS, *sorted(_RSA_SPECS)])
#: Client errors whose code alone says what to fix.
_CLIENT_FAULTS: Mapping[str, str] = {
    "NotFoundException": "no such KMS key or alias",
    "DisabledException": "the KMS key is disabled",
    "KMSInvalidStateException": "the KMS key is not in a usable state",
    "AccessDeniedException": "access denied (kms:DescribeKey and kms:GetPublicKey are needed)",
    "AccessDenied": "access denied (kms:DescribeKey and kms:GetPublicKey are needed)",
    "UnrecognizedClientException": "the credentials were rejected",
    "InvalidSignatureException": "the credentials were rejected",
    "ExpiredTokenException": "the credentials have expired",
    "ThrottlingException": "throttled by KMS",
}
_MESSAGE_LIMIT = 300

T = TypeVar("T")


def _distinct(value: tuple[str, ...]) -> tuple[str, ...]:
    if any(not ref.strip() for ref in value):
        raise ValueError("key ids must not be empty")
    if len(set(value)) != len(value):
        raise ValueError("a key id is listed twice")
    return value


def _active(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty (leave it out to use the first key id)")
    return value


def _url(value: str) -> str:
    return check_http_url(value)


def _kid_format(value: str) -> str:
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(value)]
    except ValueError as exc:
        raise ValueError(f"not a format string: {exc}") from None
    names = {name for name, _, _ in fields if name is not None}
    if names != {"key_id"} or any(spec or conv for name, spec, conv in fields if name):
        raise ValueError("must contain {key_id} and no other field, e.g. 'kms-{key_id}'")
    return value


class AwsKmsSourceConfig(SourceConfig):
    """``[source]`` with ``type = "aws_kms"``. No credential keys: the standard chain only."""

    #: The source always returns a JWKS; another format would be ignored, so it is refused.
    format: Literal["auto", "jwks"] = "auto"
    region: Annotated[str, non_empty]
    #: Key ids, key ARNs, alias names or alias ARNs; kids are the KMS key ids they resolve to.
    key_ids: Annotated[tuple[str, ...], non_empty, After(_distinct)]
    #: An alias whose target is the signing key; default: the first of ``key_ids``.
    active: Annotated[str, After(_active)] | None = None
    endpoint_url: Annotated[str, After(_url)] | None = None
    rsa_alg: Literal["RS256", "PS256"] = "RS256"
    kid_format: Annotated[str, After(_kid_format)] = "{key_id}"


class AwsKmsSource(Source):
    """DescribeKey + GetPublicKey for every configured key, once per fetch."""

    Config: ClassVar[type[SourceConfig]] = AwsKmsSourceConfig
    public_only: ClassVar[bool] = True

    def __init__(self, config: AwsKmsSourceConfig) -> None:
        super().__init__(config)
        self.config: AwsKmsSourceConfig = config
        self._client: KMSClient | None = None

    def describe(self) -> str:
        return f"aws_kms:{self.config.region}"

    def fetch(self) -> Snapshot:
        # The client first: loading botocore's KMS model is local work (a second on a busy
        # machine) and must not eat a short timeout before the first request is sent.
        self.client()
        deadline = time.monotonic() + self.config.timeout
        keys: list[Key] = []
        configured: dict[str, str] = {}  # KMS key id -> the key_ids entry naming it
        for ref in self.config.key_ids:
            meta = self._describe_key(ref, deadline)
            key_id = meta["KeyId"]
            if key_id in configured:
                raise SourceError(
                    self.describe(),
                    f"key_ids {configured[key_id]!r} and {ref!r} are the same KMS key {key_id}",
                )
            configured[key_id] = ref
            keys.append(self._public_key(ref, meta, deadline))
        if self.config.active is None:
            active_id = next(iter(configured))
        else:
            active_id = self._describe_key(self.config.active, deadline)["KeyId"]
            if active_id not in configured:
                raise SourceError(
                    self.describe(),
                    f"active {self.config.active!r} targets KMS key {active_id}, which is not"
                    " in key_ids (add it there first, so verifiers get it before signers use it)",
                )
        document = {
            "active_kid": self._kid(active_id),
            "keys": [key.public_jwk() for key in sorted(keys, key=lambda k: k.kid)],
        }
        return Snapshot(canonical_json(document), origin=self.describe(), format="jwks")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- one key ---------------------------------------------------------------------------

    def _kid(self, key_id: str) -> str:
        return self.config.kid_format.format(key_id=key_id)

    def _describe_key(self, ref: str, deadline: float) -> KeyMetadataTypeDef:
        client = self.client()
        response = self.call("DescribeKey", ref, deadline, lambda: client.describe_key(KeyId=ref))
        return response["KeyMetadata"]

    def _public_key(self, ref: str, meta: KeyMetadataTypeDef, deadline: float) -> Key:
        """The JWK of one described key, after checking it can sign JWTs now."""
        key_id = meta["KeyId"]
        name = ref if ref == key_id else f"{ref} ({key_id})"
        state = meta.get("KeyState", "unknown")
        if state != "Enabled":
            raise SourceError(
                self.describe(),
                f"KMS key {name} is {state}: every key in key_ids must be Enabled"
                " (remove it from key_ids once no live token needs it)",
            )
        usage = meta.get("KeyUsage", "unknown")
        if usage != "SIGN_VERIFY":
            raise SourceError(
                self.describe(), f"KMS key {name} has KeyUsage {usage}, not SIGN_VERIFY"
            )
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or "unknown"
        if spec in _EC_SPECS:
            crv, alg, needed = _EC_SPECS[spec]
        elif spec in _RSA_SPECS:
            crv, alg, needed = "", self.config.rsa_alg, _RSA_ALGS[self.config.rsa_alg]
        else:
            raise SourceError(
                self.describe(),
                f"KMS key {name} has KeySpec {spec}, which JWS cannot use"
                f" (supported: {_SUPPORTED_SPECS})",
            )
        if needed not in meta.get("SigningAlgorithms", ()):
            raise SourceError(
                self.describe(), f"KMS key {name} does not offer {needed}, which {alg} needs"
            )
        client = self.client()
        arn = meta.get("Arn", key_id)
        response = self.call(
            "GetPublicKey", ref, deadline, lambda: client.get_public_key(KeyId=arn)
        )
        try:
            key = key_from_public(
                load_der_public_key(response["PublicKey"]), kid=self._kid(key_id), alg=alg
            )
        except (ValueError, TypeError) as exc:
            raise SourceError(
                self.describe(), f"KMS key {name}: its public key does not load: {exc}"
            ) from exc
        if key.kty != ("EC" if crv else "RSA") or (crv and key.member("crv") != crv):
            raise SourceError(
                self.describe(), f"KMS key {name}: its public key does not match KeySpec {spec}"
            )
        return key

    # --- the seam to botocore --------------------------------------------------------------

    def client(self) -> KMSClient:
        """The KMS client, made on first use so that config checks never touch AWS."""
        if self._client is None:
            timeout = self.config.timeout
            boto_config = BotoConfig(
                connect_timeout=timeout,
                read_timeout=timeout,
                # One retry (two attempts in all) for throttling and dropped connections.
                retries={"total_max_attempts": 2, "mode": "standard"},
            )
            try:
                session = boto3.session.Session(region_name=self.config.region)
                self._client = session.client(
                    "kms", endpoint_url=self.config.endpoint_url, config=boto_config
                )
            except (BotoCoreError, ValueError) as exc:
                raise SourceError(
                    self.describe(), f"cannot make a KMS client: {_transport_fault(exc)}"
                ) from exc
        return self._client

    def call(self, operation: str, ref: str, deadline: float, call: Callable[[], T]) -> T:
        """One KMS request, its failures translated into SourceErrors naming key and fault."""
        if time.monotonic() > deadline:
            raise SourceError(
                self.describe(),
                f"{operation} {ref}: gave up, the fetch took longer than {self.config.timeout}s",
            )
        try:
            return call()
        except ClientError as exc:
            raise SourceError(self.describe(), f"{operation} {ref}: {_client_fault(exc)}") from exc
        except BotoCoreError as exc:
            raise SourceError(
                self.describe(), f"{operation} {ref}: {_transport_fault(exc)}"
            ) from exc


def _client_fault(exc: ClientError) -> str:
    """What KMS answered: its error code, what it means, and its (credential-free) message."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "unknown error")
    message = " ".join(error.get("Message", "").split())[:_MESSAGE_LIMIT]
    meaning = _CLIENT_FAULTS.get(code)
    head = f"{code}: {meaning}" if meaning else code
    return f"{head} ({message})" if message else head


def _transport_fault(exc: BotoCoreError | ValueError) -> str:
    """What went wrong before KMS could answer; credential errors name the provider only."""
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return f"no answer within the timeout ({exc})"
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | HTTPClientError):
        return str(exc)
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found in the standard chain (environment, shared files,"
            " web identity, container or instance role)"
        )
    if isinstance(exc, PartialCredentialsError | ProfileNotFound | NoRegionError):
        return str(exc)
    if isinstance(exc, CredentialRetrievalError):
        return f"cannot get credentials from {exc.kwargs.get('provider', 'a provider')}"
    if isinstance(exc, ParamValidationError | ValueError):
        return f"invalid request: {exc}"
    # Other botocore errors may quote what a credential provider printed: name the kind only.
    return type(exc).__name__
