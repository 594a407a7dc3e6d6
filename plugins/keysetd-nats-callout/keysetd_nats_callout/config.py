"""The callout's TOML config: frozen settings, unknown keys rejected, secrets read from files.

Errors are ``keysetd.errors.ConfigError`` (exit 2), each naming the key; they never carry
a seed or a password.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import nkeys  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keysetd.crypto import ALGORITHMS
from keysetd.errors import ConfigError
from keysetd.outputs.nats import NatsPermissions
from keysetd.units import Duration
from keysetd_nats_callout.natsjwt import NatsJwtError, NkeySigner

__all__ = [
    "CalloutConfig",
    "NatsConnection",
    "Rule",
    "load_config",
    "read_password",
    "read_signer",
]

#: An account name nats-server accepts in a config file, or an account public nkey.
ACCOUNT_PATTERN: Final = r"^[A-Za-z0-9_$-]{1,128}$"
_MAX_SECRET_FILE: Final = 4096


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsConnection(_Table):
    """How the callout connects: an ``auth_users`` entry of the server's auth_callout."""

    url: str = "nats://127.0.0.1:4222"
    user: str = Field(min_length=1)
    password: str | None = Field(default=None, repr=False)
    password_file: Path | None = None
    connect_timeout: Duration = Field(default=5.0, gt=0)
    #: Callout replicas in one queue group share the requests.
    queue: str = Field(default="keysetd-nats-callout", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _one_password(self) -> NatsConnection:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of nats.password and nats.password_file")
        return self


class Rule(_Table):
    """If claim ``claim`` (a dotted path) contains or equals a value: this account/permissions."""

    claim: str = Field(min_length=1)
    contains: str | None = None
    equals: str | int | bool | None = None
    account: str | None = Field(default=None, pattern=ACCOUNT_PATTERN)
    permissions: NatsPermissions | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Rule:
        if (self.contains is None) == (self.equals is None):
            raise ValueError(f"rule on {self.claim!r}: set exactly one of contains and equals")
        if self.account is None and self.permissions is None:
            raise ValueError(f"rule on {self.claim!r}: set account, permissions or both")
        return self


class CalloutConfig(_Table):
    log_format: Literal["json", "text"] = "json"
    nats: NatsConnection
    #: The jwks output keysetd maintains, read through keysetd.verifier.
    jwks: Path
    check_interval: Duration = 1.0
    #: How long to wait at start for keysetd to write ``jwks`` (0: fail at once).
    jwks_wait: Duration = 30.0
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    leeway: Duration = 0.0
    issuer_account_seed_file: Path
    xkey_seed_file: Path | None = None
    account: str = Field(pattern=ACCOUNT_PATTERN)
    max_ttl: Duration = Field(default=3600.0, gt=0)
    #: The token claim that names the NATS user (server logs, monitoring); else ``sub``.
    name_claim: str = "preferred_username"
    permissions: NatsPermissions | None = None
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("algorithms")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in ALGORITHMS or alg.startswith("HS")]
        if unknown:
            raise ValueError(f"not an asymmetric JWS algorithm keysetd accepts: {unknown}")
        return value

    @field_validator("xkey_seed_file")
    @classmethod
    def _no_xkey(cls, value: Path | None) -> Path | None:
        if value is not None:
            raise ValueError(
                "encrypted callouts (xkey) are not supported yet: remove xkey_seed_file and"
                " the server's auth_callout xkey"
            )
        return value


def _problems(exc: ValidationError) -> tuple[str, ...]:
    out = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        out.append(f"{where}: {error['msg']}")
    return tuple(out)


def load_config(path: Path) -> CalloutConfig:
    """Parse and check ``path``; ConfigError naming every problem."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not TOML: {exc}") from None
    try:
        return CalloutConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config {path} is invalid", _problems(exc)) from None


def _read_secret(path: Path, what: str) -> bytes:
    """A small file readable by its owner only; ConfigError naming the key otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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


def read_signer(config: CalloutConfig) -> NkeySigner:
    """The issuer account's signing nkey from ``issuer_account_seed_file`` (mode 0600)."""
    path = config.issuer_account_seed_file
    data = _read_secret(path, "issuer_account_seed_file")
    # An nsc/.nk-style file may hold comment lines; the seed is the one line starting with S.
    lines = [line.strip() for line in data.splitlines() if line.strip().startswith(b"S")]
    if len(lines) != 1:
        raise ConfigError(f"issuer_account_seed_file {path}: expected one seed line (SA...)")
    try:
        signer = NkeySigner.from_seed(lines[0])
    except NatsJwtError:
        raise ConfigError(f"issuer_account_seed_file {path}: not a valid nkey seed") from None
    if signer.prefix != nkeys.PREFIX_BYTE_ACCOUNT:
        raise ConfigError(f"issuer_account_seed_file {path}: not an account seed (SA...)")
    return signer


def read_password(config: CalloutConfig) -> str:
    if config.nats.password is not None:
        return config.nats.password
    assert config.nats.password_file is not None
    data = _read_secret(config.nats.password_file, "nats.password_file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"nats.password_file {config.nats.password_file}: not UTF-8") from None
