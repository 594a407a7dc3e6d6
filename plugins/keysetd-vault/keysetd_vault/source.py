"""The ``vault_transit`` source: every version's public key of Vault/OpenBao transit keys.

Each fetch reads ``GET {mount}/keys/{name}`` per configured key and publishes the
versions from ``min_decryption_version`` to ``latest_version`` as a JWKS whose
active kid is the latest version of the first key. Tokens come from config, a
token file, AppRole or Kubernetes login; a renewable token is renewed past half
its TTL, and a login token that cannot be renewed or was refused is replaced by
one new login per fetch. Every call goes through keysetd's HTTP client (see
``keysetd_vault.transport``), so ``timeout`` bounds the whole fetch; every
hvac/HTTP failure becomes a ``SourceError`` that names the source and the fault,
never a token. ``rotate`` (``keysetd rotate``, ``[rotation]``) creates the first key's
next version; signers learn which version to use from the ``transit_signer`` output
(``keysetd_vault.signer``), never "the latest". A credential (config, file or login
answer) holding whitespace, a control or a non-ASCII character is refused by name
before it reaches a header:
the errors of HTTP libraries quote a header they refuse, in a form no redaction
recognises.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import hvac  # type: ignore[import-untyped]
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from hvac import exceptions as vault_errors
from pydantic import Field

from keysetd.plugin import (
    After,
    HttpConnectError,
    HttpFailure,
    Key,
    RotatableSource,
    Secret,
    Snapshot,
    SourceConfig,
    SourceError,
    Table,
    canonical_json,
    check_http_url,
    event,
    key_from_public,
    non_empty,
    read_limited,
)
from keysetd_vault.transport import DeadlineAdapter, session

__all__ = ["KEY_TYPES", "VaultTransitConfig", "VaultTransitSource", "transit_version"]

#: Transit key types with a public key -> the JWS alg (None: ``rsa_alg`` decides).
KEY_TYPES: Mapping[str, str | None] = {
    "ecdsa-p256": "ES256",
    "ecdsa-p384": "ES384",
    "ecdsa-p521": "ES512",
    "ed25519": "EdDSA",
    "rsa-2048": None,
    "rsa-3072": None,
    "rsa-4096": None,
}
_EC_CURVES = {"ecdsa-p256": "secp256r1", "ecdsa-p384": "secp384r1", "ecdsa-p521": "secp521r1"}
_KUBERNETES_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_SECRET_FILE_LIMIT = 64 * 1024
_REASON_LIMIT = 300
_REDACT_MIN = 8
#: Credentials remembered for redaction: the configured ones and the latest logins.
_SECRETS_KEPT = 16
_MULTIERROR = re.compile(r"^\d+ errors? occurred:\s*")
_STATUS: Mapping[type[Exception], str] = {
    vault_errors.InvalidRequest: "400 Bad Request",
    vault_errors.Unauthorized: "401 Unauthorized",
    vault_errors.Forbidden: "403 Forbidden",
    vault_errors.InvalidPath: "404 Not Found",
    vault_errors.RateLimitExceeded: "429 Too Many Requests",
    vault_errors.InternalServerError: "500 Internal Server Error",
    vault_errors.VaultNotInitialized: "501 Not Initialized",
    vault_errors.BadGateway: "502 Bad Gateway",
    vault_errors.VaultDown: "503 Service Unavailable",
}
_T = TypeVar("_T")
_NAME = r"[A-Za-z0-9_.-]+"


def _address(value: str) -> str:
    check_http_url(value)
    parts = urlsplit(value)
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return value.rstrip("/")


def _visible(text: str) -> bool:
    """Only printable ASCII, no space: what a token, secret id or JWT is made of."""
    return all(33 <= ord(c) < 127 for c in text)


def _namespace(value: str) -> str:
    if not _visible(value):
        raise ValueError("must hold only visible ASCII characters (it is sent as a header)")
    return value


def _mount(value: str) -> str:
    mount = value.strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", mount):
        raise ValueError("must be a mount path such as 'transit'")
    return mount


def _keys(value: list[str]) -> list[str]:
    for name in value:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"{name!r} is not a transit key name")
    if len(set(value)) != len(value):
        raise ValueError("a key is listed twice")
    return value


def _kid_format(value: str) -> str:
    try:
        fields = [name for _, name, _, _ in Formatter().parse(value) if name is not None]
        if set(fields) <= {"name", "version"}:
            value.format(name="k", version=1)  # a bad format spec fails here, not per fetch
    except ValueError as exc:
        raise ValueError(f"is not a format string: {exc}") from None
    if not set(fields) <= {"name", "version"}:
        raise ValueError("may use only the fields {name} and {version}")
    if "version" not in fields:
        raise ValueError("must include {version}, or every version gets the same kid")
    return value


def transit_version(kid_format: str, kid: str) -> tuple[str, int] | None:
    """The (key name, version) ``kid_format`` made ``kid`` from; None if it made no such kid."""
    pattern = ""
    named = False
    for literal, part, _spec, _conversion in Formatter().parse(kid_format):
        pattern += re.escape(literal)
        if part == "name":
            pattern += "(?P=name)" if named else f"(?P<name>{_NAME})"
            named = True
        elif part == "version":
            pattern += "(?P<version>[0-9]+)" if "(?P<version>" not in pattern else "(?P=version)"
    found = re.fullmatch(pattern, kid)
    if found is None or not named:
        return None
    name, version = found.group("name"), int(found.group("version"))
    # Round trip: a format spec ({version:03d}) or an ambiguous split must give kid back.
    if version < 1 or kid_format.format(name=name, version=version) != kid:
        return None
    return name, version


class VaultConnection(Table):
    """Where the server is and how keysetd logs in: the keys a ``vault_transit`` source
    and the ``vault_transit`` key provider (``[state]``) share."""

    address: Annotated[str, After(_address)]
    mount: Annotated[str, After(_mount)] = "transit"
    auth: Literal["token", "approle", "kubernetes"] = "token"
    token: Secret | None = None
    token_file: Path | None = None
    role_id: str | None = None
    secret_id_file: Path | None = None
    role: str | None = None
    kubernetes_role: str | None = None
    jwt_file: Path = _KUBERNETES_JWT
    auth_mount: Annotated[str, After(_mount)] | None = None
    namespace: Annotated[str, After(_namespace)] | None = None
    ca_file: Path | None = None


class VaultTransitConfig(VaultConnection, SourceConfig):
    keys: Annotated[list[str], non_empty, After(_keys)] = Field(
        default_factory=lambda: ["jwt-signing"]
    )
    rsa_alg: Literal["RS256", "PS256"] = "RS256"
    kid_format: Annotated[str, After(_kid_format)] = "{name}-v{version}"
    #: With [rotation]: once signers left a version of the first key policy.retention ago,
    #: raise the key's min_decryption_version past it (it leaves the JWKS after a retention).
    retire_old_versions: bool = False

    def __post_init__(self) -> None:
        token_given = self.token is not None or self.token_file is not None
        if self.token is not None and not _visible(self.token.reveal()):
            # Never quoted: it is the credential.
            raise ValueError(
                "token must hold only visible ASCII characters"
                " (no spaces, line breaks, control or non-ASCII characters)"
            )
        if self.auth == "token":
            if (self.token is None) == (self.token_file is None):
                raise ValueError("auth = 'token' needs exactly one of token and token_file")
        elif token_given:
            raise ValueError(f"token and token_file are for auth = 'token', not {self.auth!r}")
        if self.auth == "approle" and (self.role_id is None or self.secret_id_file is None):
            raise ValueError("auth = 'approle' needs role_id and secret_id_file")
        if self.role is not None and self.kubernetes_role is not None:
            raise ValueError("role and kubernetes_role name the same thing: give one")
        if self.auth == "kubernetes" and self.login_role is None:
            raise ValueError("auth = 'kubernetes' needs role (the Kubernetes auth role)")

    @property
    def login_role(self) -> str | None:
        """The Kubernetes auth role (``role``, or its synonym ``kubernetes_role``)."""
        return self.role if self.role is not None else self.kubernetes_role


@dataclass(frozen=True, slots=True)
class _Lease:
    """The current token's lifetime on the monotonic clock; ``period`` 0 never expires."""

    period: float
    expires: float
    renewable: bool

    @classmethod
    def of(cls, ttl: object, period: object, renewable: object, now: float) -> _Lease:
        remaining = float(ttl) if isinstance(ttl, int | float) else 0.0
        full = float(period) if isinstance(period, int | float) and period else remaining
        return cls(period=full, expires=now + remaining, renewable=renewable is True)

    def due(self, now: float) -> bool:
        """Past half its TTL and renewable."""
        return self.renewable and self.period > 0 and self.expires - now <= self.period / 2

    def expired(self, now: float) -> bool:
        return self.period > 0 and now >= self.expires


class VaultTransitSource(RotatableSource):
    """Publishes the public keys of transit key versions as a JWKS; holds no private keys.

    ``rotate`` (``keysetd rotate``, ``[rotation]``) creates the first key's next version.
    """

    Config: ClassVar[type[SourceConfig]] = VaultTransitConfig
    public_only: ClassVar[bool] = True

    def __init__(self, config: VaultTransitConfig) -> None:
        super().__init__(config)
        self.config: VaultTransitConfig = config
        self._client: Any = None
        self._adapter: DeadlineAdapter | None = None
        self._lease: _Lease | None = None
        #: The first key's min_decryption_version as the last read saw it.
        self._oldest: int | None = None
        # Values that must never reach a message: tokens, secret ids, Kubernetes JWTs. The
        # newest few only (insertion order): a daemon that logs in for months keeps no log.
        self._secrets: dict[str, None] = {}
        if config.token is not None:
            self._remember(config.token.reveal())

    def describe(self) -> str:
        return f"vault_transit:{self.config.address}/{self.config.mount}"

    def close(self) -> None:
        client, self._client, self._lease = self._client, None, None
        self._adapter = None
        if client is not None:
            client.adapter.close()

    # --- fetch --------------------------------------------------------------------------------

    def fetch(self) -> Snapshot:
        client = self._begin()
        replies = self._authorized(client, lambda passing: self._read_keys(client, passing))
        keys: list[Key] = []
        active_kid = ""
        for index, (name, data) in enumerate(replies):
            versions, latest_kid = self._convert(name, data)
            keys.extend(versions)
            if index == 0:
                active_kid = latest_kid
        document = {
            "active_kid": active_kid,
            "keys": [key.public_jwk() for key in sorted(keys, key=lambda k: k.kid)],
        }
        return Snapshot(canonical_json(document), origin=self.describe(), format="jwks")

    def rotate(self, expected_active: str | None) -> str | None:
        """``POST {mount}/keys/{first key}/rotate`` unless its latest version moved from
        ``expected_active``; the new version's kid. Needs ``update`` on that path."""
        client = self._begin()
        name = self.config.keys[0]
        mount = self.config.mount

        def latest(passing: type[Exception] | None) -> str:
            reply = self._read_keys(client, passing, names=(name,))
            return self._convert(name, reply[0][1])[1]

        if expected_active is not None and self._authorized(client, latest) != expected_active:
            return None
        action = f"rotate key {name!r}"

        def rotate(passing: type[Exception] | None) -> Any:
            def call() -> Any:
                return client.secrets.transit.rotate_key(name=name, mount_point=mount)

            return self._call(action, call, passing)

        self._authorized(client, rotate)
        kid = latest(None)
        event("vault_key_rotated", source=self.describe(), key=name, kid=kid)
        return kid

    def retire(self, left: tuple[str, ...], signer_kid: str) -> tuple[str, ...]:
        """With ``retire_old_versions``: raise the first key's ``min_decryption_version``
        past the versions in ``left``, never past ``signer_kid``'s
        (``POST {mount}/keys/{name}/config``); the kids it retired."""
        name = self.config.keys[0]
        if not self.config.retire_old_versions:
            return ()
        versions = [v for n, v in filter(None, (self._version(kid) for kid in left)) if n == name]
        if not versions:
            return ()
        floor = max(versions) + 1
        signer = self._version(signer_kid)
        if signer is not None and signer[0] == name:
            floor = min(floor, signer[1])
        if self._oldest is not None and self._oldest >= floor:
            return ()  # the last read shows nothing that old: no call
        client = self._begin()
        reply = self._authorized(client, lambda p: self._read_keys(client, p, names=(name,)))
        self._convert(name, reply[0][1])  # a reply that makes no sense is refused here
        oldest, latest = self._oldest or 1, int(reply[0][1]["latest_version"])
        if oldest >= floor or floor > latest:
            return ()
        action = f"retire versions of key {name!r}"

        def configure(passing: type[Exception] | None) -> Any:
            def call() -> Any:
                return client.secrets.transit.update_key_configuration(
                    name=name, min_decryption_version=floor, mount_point=self.config.mount
                )

            return self._call(action, call, passing)

        self._authorized(client, configure)
        self._oldest = floor
        kid_format = self.config.kid_format
        kids = tuple(kid_format.format(name=name, version=v) for v in range(oldest, floor))
        event("vault_versions_retired", source=self.describe(), key=name, kids=",".join(kids))
        return kids

    def _version(self, kid: str) -> tuple[str, int] | None:
        return transit_version(self.config.kid_format, kid)

    def run_authorized(self, action: str, call: Callable[[Any], _T]) -> _T:
        """One call with this source's client, login, deadline and error translation
        (``SourceError`` naming ``action``): what the transit key provider calls through."""
        client = self._begin()
        return self._authorized(
            client, lambda refused: self._call(action, lambda: call(client), refused)
        )

    def _begin(self) -> Any:
        """The client, with one deadline starting now for every call of this fetch."""
        client = self._connect()
        assert self._adapter is not None
        self._adapter.begin()
        return client

    def _authorized(self, client: Any, calls: Callable[[type[Exception] | None], _T]) -> _T:
        """Run ``calls`` with a live token; a refused login token is replaced once."""
        logged_in = self._authenticate(client)
        retry = self._can_login and not logged_in
        try:
            return calls(vault_errors.Forbidden if retry else None)
        except vault_errors.Forbidden:
            # An expired or revoked login token: one new login per fetch, then the answer stands.
            event("vault_token_refused", logging.WARNING, source=self.describe())
            self._login(client)
            return calls(None)

    def _connect(self) -> Any:
        if self._client is None:
            config = self.config
            # TLS is always verified (against ca_file when given, else the system store),
            # and the fetch ends at the timeout, however slowly the server answers.
            self._adapter = DeadlineAdapter(timeout=float(config.timeout), ca_file=config.ca_file)
            self._client = hvac.Client(
                url=config.address,
                token="",  # never VAULT_TOKEN or ~/.vault-token: the config says where it is
                timeout=config.timeout,
                namespace=config.namespace,
                session=session(self._adapter),
                # A redirect would carry X-Vault-Token to wherever it points.
                allow_redirects=False,
            )
        return self._client

    def _read_keys(
        self,
        client: Any,
        passing: type[Exception] | None,
        names: tuple[str, ...] | None = None,
    ) -> list[tuple[str, Any]]:
        mount = self.config.mount
        replies: list[tuple[str, Any]] = []
        for name in self.config.keys if names is None else names:
            action = f"read key {name!r}"

            def read(name: str = name) -> Any:
                return client.secrets.transit.read_key(name=name, mount_point=mount)

            reply = self._call(action, read, passing)
            replies.append((name, self._data(action, reply)))
        return replies

    def _convert(self, name: str, data: Any) -> tuple[list[Key], str]:
        """The keys of every published version of one transit key, and its latest kid."""
        key_type = data.get("type")
        if key_type not in KEY_TYPES:
            raise self._error(
                f"key {name!r} is of type {key_type!r}, which has no public key to publish "
                f"(supported: {', '.join(KEY_TYPES)})"
            )
        alg = KEY_TYPES[key_type] or self.config.rsa_alg
        try:
            latest = int(data["latest_version"])
            oldest = max(int(data.get("min_decryption_version") or 1), 1)
            versions = data["keys"]
            if not isinstance(versions, dict):
                raise TypeError("keys is not an object")
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error(f"key {name!r}: unexpected response ({exc})") from None
        if name == self.config.keys[0]:
            self._oldest = oldest
        keys: list[Key] = []
        latest_kid = ""
        for version in range(oldest, latest + 1):
            entry = versions.get(str(version))
            if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
                continue  # trimmed, or not published by this server
            kid = self.config.kid_format.format(name=name, version=version)
            try:
                public = _public_key(key_type, entry["public_key"])
            except ValueError as exc:
                raise self._error(f"key {name!r} version {version}: {exc}") from None
            keys.append(key_from_public(public, kid=kid, alg=alg))
            if version == latest:
                latest_kid = kid
        if not latest_kid:
            raise self._error(f"key {name!r}: latest version {latest} has no public key")
        return keys, latest_kid

    # --- authentication -----------------------------------------------------------------------

    @property
    def _can_login(self) -> bool:
        return self.config.auth != "token"

    def _authenticate(self, client: Any) -> bool:
        """Make sure the client holds a live token; True when this call logged in."""
        now = time.monotonic()
        if not self._can_login:
            token = self._configured_token()
            if token != client.token:
                client.token = token
                self._lease = None
            if self._lease is None:
                self._lease = self._look_up(client, now)
            if self._lease.due(now) and not self._renew(client, now):
                self._lease = None  # look it up again next time; a dead token shows as a 403
            return False
        lease = self._lease
        if not client.token or lease is None or lease.expired(now):
            self._login(client)
            return True
        if lease.due(now) and not self._renew(client, now):
            self._login(client)
            return True
        return False

    def _look_up(self, client: Any, now: float) -> _Lease:
        """The configured token's lease; a token without lookup-self is used, never renewed."""
        try:
            reply = self._call(
                "look up token", client.auth.token.lookup_self, vault_errors.Forbidden
            )
        except vault_errors.Forbidden:
            # A bad token, or one without the default policy: the key reads will tell.
            return _Lease(period=0.0, expires=now, renewable=False)
        data = self._data("look up token", reply)
        return _Lease.of(data.get("ttl"), data.get("creation_ttl"), data.get("renewable"), now)

    def _renew(self, client: Any, now: float) -> bool:
        try:
            reply = self._call("renew token", client.auth.token.renew_self)
            auth = self._auth_block("renew token", reply)
        except SourceError as exc:
            event(
                "vault_token_renewal_failed",
                logging.WARNING,
                source=self.describe(),
                error=exc.reason,
            )
            return False
        self._lease = _Lease.of(auth.get("lease_duration"), None, auth.get("renewable"), now)
        event("vault_token_renewed", source=self.describe(), ttl=self._lease.period)
        return True

    def _login(self, client: Any) -> None:
        config = self.config
        client.token = ""
        self._lease = None
        if config.auth == "approle":
            assert config.role_id is not None and config.secret_id_file is not None
            secret_id = self._read_secret("secret_id_file", config.secret_id_file)
            mount = config.auth_mount or "approle"

            def login() -> Any:
                return client.auth.approle.login(
                    role_id=config.role_id, secret_id=secret_id, use_token=False, mount_point=mount
                )

        else:
            role = config.login_role
            jwt = self._read_secret("jwt_file", config.jwt_file)
            mount = config.auth_mount or "kubernetes"

            def login() -> Any:
                return client.auth.kubernetes.login(
                    role=role, jwt=jwt, use_token=False, mount_point=mount
                )

        now = time.monotonic()
        auth = self._auth_block(
            f"log in ({config.auth})", self._call(f"log in ({config.auth})", login)
        )
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise self._error(f"log in ({config.auth}): the answer holds no client token")
        if not _visible(token):
            raise self._error(
                f"log in ({config.auth}): the answer's client token holds whitespace,"
                " control or non-ASCII characters"
            )
        self._remember(token)
        client.token = token
        self._lease = _Lease.of(auth.get("lease_duration"), None, auth.get("renewable"), now)
        event("vault_login", source=self.describe(), auth=config.auth, ttl=self._lease.period)

    def _configured_token(self) -> str:
        config = self.config
        if config.token is not None:
            return config.token.reveal()
        assert config.token_file is not None
        # Re-read every fetch: an agent (Vault Agent, a CSI driver) may replace it.
        return self._read_secret("token_file", config.token_file)

    def _read_secret(self, key: str, path: Path) -> str:
        try:
            text = read_limited(path, _SECRET_FILE_LIMIT).decode("utf-8").strip()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self._error(f"cannot read {key} {path}: {reason}") from None
        if not text:
            raise self._error(f"{key} {path} is empty")
        if not _visible(text):
            # Never quoted, and not a header: the HTTP libraries' errors would quote it.
            raise self._error(
                f"{key} {path} holds whitespace, control or non-ASCII characters inside its"
                " secret (the file must hold exactly one, surrounding whitespace aside)"
            )
        self._remember(text)
        return text

    # --- the seam -----------------------------------------------------------------------------

    def _call(
        self, action: str, call: Callable[[], _T], passing: type[Exception] | None = None
    ) -> _T:
        """Run one hvac call; its failures become SourceErrors (``passing`` is re-raised)."""
        try:
            return call()
        except vault_errors.VaultError as exc:
            if passing is not None and isinstance(exc, passing):
                raise
            raise self._error(f"{action}: {_vault_reason(exc)}") from exc
        except HttpConnectError as exc:
            raise self._error(f"{action}: cannot connect ({exc.reason})") from exc
        except HttpFailure as exc:
            raise self._error(f"{action}: {exc.reason}") from exc
        except requests.exceptions.InvalidHeader:  # its text quotes the header: a token
            raise self._error(f"{action}: a header holds characters HTTP does not allow") from None
        except requests.exceptions.RequestException as exc:  # a URL requests cannot prepare
            raise self._error(f"{action}: {type(exc).__name__} ({_cause(exc)})") from exc
        except ValueError as exc:  # UnicodeError too: its text may quote what it refused
            raise self._error(f"{action}: {type(exc).__name__} preparing the call") from None

    def _data(self, action: str, reply: Any) -> Any:
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, dict):
            raise self._error(f"{action}: unexpected response ({_describe_reply(reply)})")
        return data

    def _auth_block(self, action: str, reply: Any) -> Any:
        auth = reply.get("auth") if isinstance(reply, dict) else None
        if not isinstance(auth, dict):
            raise self._error(f"{action}: unexpected response ({_describe_reply(reply)})")
        return auth

    def _remember(self, secret: str) -> None:
        self._secrets.pop(secret, None)
        self._secrets[secret] = None
        while len(self._secrets) > _SECRETS_KEPT:
            del self._secrets[next(iter(self._secrets))]

    def _error(self, reason: str) -> SourceError:
        # Messages are built from names and Vault's error text; should a server ever echo a
        # credential, it goes no further. (Strings this short would garble words instead.)
        for secret in self._secrets:
            if len(secret) >= _REDACT_MIN:
                reason = reason.replace(secret, "[redacted]")
        if len(reason) > _REASON_LIMIT:
            reason = reason[: _REASON_LIMIT - 3] + "..."
        return SourceError(self.describe(), reason)


def _public_key(key_type: str, text: str) -> PublicKeyTypes:
    """The key of one version: base64 raw bytes for ed25519, SPKI PEM for ECDSA and RSA."""
    if key_type == "ed25519":
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the ed25519 public key is not base64") from None
        if len(raw) != 32:
            raise ValueError("the ed25519 public key is not 32 bytes")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    try:
        loaded = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ValueError("the public key is not a PEM SubjectPublicKeyInfo") from None
    if key_type in _EC_CURVES:
        if (
            isinstance(loaded, ec.EllipticCurvePublicKey)
            and loaded.curve.name == _EC_CURVES[key_type]
        ):
            return loaded
    elif isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size == int(key_type[4:]):
        return loaded
    raise ValueError(f"the public key is not a {key_type} key")


def _vault_reason(exc: Exception) -> str:
    status = next((text for cls, text in _STATUS.items() if isinstance(exc, cls)), "unexpected")
    errors = getattr(exc, "errors", None)
    detail = "; ".join(_clean(str(e)) for e in errors) if errors else ""
    if not detail and isinstance(exc, vault_errors.InvalidPath):
        detail = "no such key, or the key was deleted"
    return f"{status} ({detail})" if detail else status


def _clean(error: str) -> str:
    """One line from Vault's error text, without its "N errors occurred: *" list markup."""
    text = " ".join(error.split())
    listed = _MULTIERROR.match(text)
    if listed is None:
        return text
    items = text[listed.end() :].split("* ")
    return "; ".join(item.strip() for item in items if item.strip())


def _describe_reply(reply: object) -> str:
    """What came back instead of a JSON object: an HTTP status (a redirect, 204) or a type."""
    status = getattr(reply, "status_code", None)
    return f"HTTP {status}" if isinstance(status, int) else type(reply).__name__


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests failure, without the URL it already names."""
    reason: BaseException = exc
    while True:
        inner = getattr(reason, "reason", None)
        if isinstance(inner, BaseException) and inner is not reason:
            reason = inner
            continue
        if reason.args and isinstance(reason.args[0], BaseException):
            reason = reason.args[0]
            continue
        break
    text = " ".join(str(reason).split())
    # urllib3 prefixes "<connection object at 0x...>: "; the tail is what went wrong.
    return text.rsplit(">: ", 1)[-1] or type(reason).__name__
