"""The callout's TOML config: frozen settings, unknown keys rejected, secrets read from files.

Errors are ``keysetd.errors.ConfigError`` (exit 2), each naming the key; they never carry
a seed or a password.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import nkeys  # type: ignore[import-untyped,unused-ignore]
from pydantic import Field

from keysetd.plugin import (
    ALGORITHMS,
    After,
    ConfigError,
    Duration,
    NatsPermissions,
    PositiveDuration,
    Table,
    TableError,
    matches,
    non_empty,
)
from keysetd_nats_callout.natsjwt import NatsJwtError, NkeySigner
from keysetd_nats_callout.xkey import CurveKey, XkeyError

__all__ = [
    "CalloutConfig",
    "NatsConnection",
    "Rule",
    "load_config",
    "read_password",
    "read_signer",
    "read_xkey",
]

#: An account name nats-server accepts in a config file, or an account public nkey.
ACCOUNT_PATTERN: Final = r"^[A-Za-z0-9_$-]{1,128}$"
_MAX_SECRET_FILE: Final = 4096

Account = Annotated[str, matches(ACCOUNT_PATTERN)]
NonEmpty = Annotated[str, non_empty]


def _known(value: list[str]) -> list[str]:
    unknown = [alg for alg in value if alg not in ALGORITHMS or alg.startswith("HS")]
    if unknown:
        raise ValueError(f"not an asymmetric JWS algorithm keysetd accepts: {unknown}")
    return value


class NatsConnection(Table):
    """How the callout connects: an ``auth_users`` entry of the server's auth_callout."""

    url: str = "nats://127.0.0.1:4222"
    user: NonEmpty
    password: str | None = Field(default=None, repr=False)
    password_file: Path | None = None
    connect_timeout: PositiveDuration = 5.0
    #: Callout replicas in one queue group share the requests.
    queue: Annotated[str, matches(r"[A-Za-z0-9_.-]+")] = "keysetd-nats-callout"

    def __post_init__(self) -> None:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of nats.password and nats.password_file")


class Rule(Table):
    """If claim ``claim`` (a dotted path) contains or equals a value: this account/permissions."""

    claim: NonEmpty
    contains: str | None = None
    equals: str | int | bool | None = None
    account: Account | None = None
    permissions: NatsPermissions | None = None

    def __post_init__(self) -> None:
        if (self.contains is None) == (self.equals is None):
            raise ValueError(f"rule on {self.claim!r}: set exactly one of contains and equals")
        if self.account is None and self.permissions is None:
            raise ValueError(f"rule on {self.claim!r}: set account, permissions or both")


class CalloutConfig(Table):
    log_format: Literal["json", "text"] = "json"
    nats: NatsConnection
    #: The jwks output keysetd maintains, read through keysetd.verifier.
    jwks: Path
    check_interval: Duration = 1.0
    #: How long to wait at start for keysetd to write ``jwks`` (0: fail at once).
    jwks_wait: Duration = 30.0
    issuer: NonEmpty
    audience: NonEmpty
    algorithms: Annotated[list[str], non_empty, After(_known)] = Field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    leeway: Duration = 0.0
    issuer_account_seed_file: Path
    #: The curve seed (SX...) whose public key (X...) is the server's auth_callout xkey:
    #: requests arrive encrypted to it, responses go back encrypted to the server.
    xkey_seed_file: Path | None = None
    account: Account
    max_ttl: PositiveDuration = 3600.0
    #: The token claim that names the NATS user (server logs, monitoring); else ``sub``.
    name_claim: str = "preferred_username"
    permissions: NatsPermissions | None = None
    rules: list[Rule] = Field(default_factory=list)


def load_config(path: Path) -> CalloutConfig:
    """Parse and check ``path``; ConfigError naming every problem."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not TOML: {exc}") from None
    try:
        return CalloutConfig.parse(raw)
    except TableError as exc:
        raise ConfigError(f"config {path} is invalid", tuple(exc.lines())) from None


def _read_secret(path: Path, what: str) -> bytes:
    """A small file readable by its owner only; ConfigError naming the key otherwise."""
    try:
        # O_NONBLOCK: a FIFO in its place fails the regular-file check instead of hanging.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{what} {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it;"
                " chmod 0600"
            )
        data = os.read(fd, _MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(f"{what} {path}: larger than {_MAX_SECRET_FILE} bytes")
    return data.strip()


def _seed_line(path: Path, what: str, kind: str) -> bytes:
    """The one line starting with S of a seed file (nsc/.nk-style files hold comment lines)."""
    data = _read_secret(path, what)
    lines = [line.strip() for line in data.splitlines() if line.strip().startswith(b"S")]
    if len(lines) != 1:
        raise ConfigError(f"{what} {path}: expected one seed line ({kind})")
    return lines[0]


def read_signer(config: CalloutConfig) -> NkeySigner:
    """The issuer account's signing nkey from ``issuer_account_seed_file`` (mode 0600)."""
    path = config.issuer_account_seed_file
    seed = _seed_line(path, "issuer_account_seed_file", "SA...")
    try:
        signer = NkeySigner.from_seed(seed)
    except NatsJwtError:
        raise ConfigError(f"issuer_account_seed_file {path}: not a valid nkey seed") from None
    if signer.prefix != nkeys.PREFIX_BYTE_ACCOUNT:
        raise ConfigError(f"issuer_account_seed_file {path}: not an account seed (SA...)")
    return signer


def read_xkey(config: CalloutConfig) -> CurveKey | None:
    """The callout's curve key from ``xkey_seed_file`` (mode 0600), or None when unset."""
    path = config.xkey_seed_file
    if path is None:
        return None
    seed = _seed_line(path, "xkey_seed_file", "SX...")
    try:
        return CurveKey.from_seed(seed)
    except XkeyError:
        raise ConfigError(f"xkey_seed_file {path}: not a curve seed (SX...)") from None


def read_password(config: CalloutConfig) -> str:
    if config.nats.password is not None:
        return config.nats.password
    assert config.nats.password_file is not None
    data = _read_secret(config.nats.password_file, "nats.password_file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"nats.password_file {config.nats.password_file}: not UTF-8") from None
