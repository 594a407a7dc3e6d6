"""The single-file outputs: jwks (verifiers), keyset, rgs and env (signers)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from keysetd.errors import OutputError
from keysetd.extension import Output, OutputConfig, Role
from keysetd.formats.envfile import render_env
from keysetd.formats.jwks import render_jwks, render_keyset
from keysetd.formats.rgs import render_rgs
from keysetd.model import Keyset

__all__ = ["EnvOutput", "JwksOutput", "KeysetOutput", "RgsOutput"]


class _SingleFile(Output):
    """An output that is one file rendered by one pure function."""

    role_: ClassVar[Role]

    @property
    def role(self) -> Role:
        return self.role_

    def render(self, keyset: Keyset) -> dict[Path, bytes]:
        self.check(keyset)
        try:
            return {self.config.path: self.render_bytes(keyset)}
        except ValueError as exc:
            raise OutputError(self.name, str(self.config.path), str(exc)) from exc

    def fail(self, reason: str) -> OutputError:
        return OutputError(self.name, str(self.config.path), reason)

    def check(self, keyset: Keyset) -> None:
        """Refuse a keyset this output cannot represent; the message names the kid."""

    def render_bytes(self, keyset: Keyset) -> bytes:
        raise NotImplementedError


class _SignerFile(_SingleFile):
    role_ = Role.SIGNER

    def check(self, keyset: Keyset) -> None:
        active = keyset.active
        if active is None:
            raise self.fail("a signer output needs an active_kid")
        if not active.has_private:
            raise self.fail(f"active kid {active.kid!r} has no private material to sign with")


class JwksOutput(_SingleFile):
    """``{"keys": [...]}`` with public members only; oct keys never appear."""

    role_ = Role.VERIFIER

    def check(self, keyset: Keyset) -> None:
        # An empty set is legitimate (every kid revoked); an HMAC-only one is a config error.
        if len(keyset) and all(key.kty == "oct" for key in keyset):
            raise self.fail("a jwks output needs asymmetric keys; this keyset has only HMAC keys")

    def render_bytes(self, keyset: Keyset) -> bytes:
        return render_jwks(keyset)


class KeysetOutput(_SignerFile):
    """The native format with private members and ``active_kid``."""

    def render_bytes(self, keyset: Keyset) -> bytes:
        return render_keyset(keyset)


class RgsOutput(_SignerFile):
    """``{"active_kid": ..., "keys": {kid: secret}}`` of the HMAC keys."""

    def check(self, keyset: Keyset) -> None:
        super().check(keyset)
        if keyset.active is not None and keyset.active.kty != "oct":
            raise self.fail(f"active kid {keyset.active_kid!r} is not an HMAC key")

    def render_bytes(self, keyset: Keyset) -> bytes:
        return render_rgs(keyset)


class EnvOutputConfig(OutputConfig):
    keyset_var: str = "RGS_JWT_KEYSET"
    active_kid_var: str = "RGS_JWT_ACTIVE_KID"


class EnvOutput(RgsOutput):
    """An EnvironmentFile= / ``. file`` readable pair of variables."""

    Config: ClassVar[type[OutputConfig]] = EnvOutputConfig

    def render_bytes(self, keyset: Keyset) -> bytes:
        cfg = self.config
        assert isinstance(cfg, EnvOutputConfig)
        return render_env(keyset, keyset_var=cfg.keyset_var, active_kid_var=cfg.active_kid_var)
