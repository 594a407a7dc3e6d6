"""A directory of ``<kid>.pem`` public keys, plus ``active.key`` when ``private = true``.

The directory switches as a whole (``keysetd.atomicdir``): ``<kid>.pem`` and
``active.key`` are links into ``..data/``, the version switched in last.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from keysetd.atomic import MAX_NAME
from keysetd.errors import OutputError
from keysetd.extension import Output, OutputConfig, Role
from keysetd.formats.jwks import short
from keysetd.formats.pem import render_private_pem, render_public_pem
from keysetd.model import Keyset

__all__ = ["ACTIVE_KEY", "PemOutput", "pem_file_name"]

ACTIVE_KEY = "active.key"
_SUFFIX = ".pem"


def pem_file_name(kid: str) -> str:
    """The file name of ``kid``'s public key; ValueError when the kid cannot be one.

    The one place a kid becomes a file name. Refused: ``/``, a leading ``.`` (keysetd's
    own ``..data`` entries), characters that are not printable, and names over
    ``MAX_NAME`` bytes (NAME_MAX less the temp-name suffix a replace needs).
    """
    name = kid + _SUFFIX
    if not kid or "/" in kid or kid.startswith(".") or not kid.isprintable():
        raise ValueError(
            f"kid {short(kid)} cannot be a file name (empty, '/', leading '.' or"
            " a character that is not printable)"
        )
    size = len(name.encode())
    if size > MAX_NAME:
        raise ValueError(
            f"kid {short(kid)} ({len(kid)} characters) makes a file name of {size} bytes;"
            f" a pem output takes at most {MAX_NAME} (kids up to {MAX_NAME - len(_SUFFIX)} bytes)"
        )
    return name


def is_pem_output_name(name: str) -> bool:
    """A name a pem output writes (so a regular file there may be of the old flat layout)."""
    return name == ACTIVE_KEY or (name.endswith(_SUFFIX) and not name.startswith("."))


class PemOutputConfig(OutputConfig):
    private: bool = False


class PemOutput(Output):
    """One SPKI file per published asymmetric key; files of unpublished keys are removed."""

    Config: ClassVar[type[OutputConfig]] = PemOutputConfig

    @property
    def private(self) -> bool:
        cfg = self.config
        return isinstance(cfg, PemOutputConfig) and cfg.private

    @property
    def role(self) -> Role:
        return Role.SIGNER if self.private else Role.VERIFIER

    def _fail(self, reason: str) -> OutputError:
        return OutputError(self.name, str(self.config.path), reason)

    def render(self, keyset: Keyset) -> dict[Path, bytes]:
        directory = self.config.path
        files: dict[Path, bytes] = {}
        for key in keyset.ordered():
            if key.kty == "oct":
                continue
            try:
                files[directory / pem_file_name(key.kid)] = render_public_pem(key)
            except ValueError as exc:
                raise self._fail(str(exc)) from exc
        if not files and len(keyset):
            raise self._fail("a pem output needs asymmetric keys; this keyset has only HMAC keys")
        if self.private:
            active = keyset.active
            if active is None or not active.has_private or active.kty == "oct":
                raise self._fail(
                    "private = true needs an active asymmetric key with private material"
                )
            try:
                files[directory / ACTIVE_KEY] = render_private_pem(active)
            except ValueError as exc:
                raise self._fail(str(exc)) from exc
        return files

    def file_mode(self, path: Path) -> int:
        """0600 for the private key whatever ``mode`` says for the public files."""
        if path.name == ACTIVE_KEY:
            return 0o600
        return self.config.mode if self.config.mode is not None else 0o644
