"""A directory of ``<kid>.pem`` public keys, plus ``active.key`` when ``private = true``.

The directory switches as a whole (``keysetd.atomicdir``): ``<kid>.pem`` and
``active.key`` are links into ``..data/``, the version switched in last. Every file
is plain PEM (nothing before ``-----BEGIN``).

A kid that cannot be a file name as it is (a Cognito kid holds ``/``; others start
with ``.``, hold a control character or are too long) gets an escaped name instead
(``pem_file_name``), and ``index.json`` (``{"kids": {kid: file name}}`` for every
kid of the set) is written beside them in the same version, so a consumer can map
a token's kid to its file. A directory whose kids all keep their plain names has
no index.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

from keysetd.atomic import MAX_NAME
from keysetd.crypto import b64u_encode
from keysetd.errors import OutputError
from keysetd.extension import Output, OutputConfig, Role
from keysetd.formats.pem import render_private_pem, render_public_pem
from keysetd.model import Keyset

__all__ = ["ACTIVE_KEY", "INDEX", "PemOutput", "pem_file_name"]

ACTIVE_KEY = "active.key"
#: The kid -> file name map, written when some kid's file name is not ``<kid>.pem``.
INDEX = "index.json"
_SUFFIX = ".pem"


def _plain(kid: str) -> bool:
    """Whether ``<kid>.pem`` is a safe name as it is (the names of earlier releases).

    Not: empty, ``/``, a leading ``.`` (keysetd's own ``..data`` entries), ``%`` (the
    escape character, so an escaped name never equals a plain one), a character that
    is not printable, or a name over ``MAX_NAME`` bytes.
    """
    return (
        bool(kid)
        and "/" not in kid
        and "%" not in kid
        and not kid.startswith(".")
        and kid.isprintable()
        and len((kid + _SUFFIX).encode()) <= MAX_NAME
    )


def _escape(kid: str) -> str:
    """Percent-encoding of the UTF-8 bytes of ``/``, ``%``, a leading ``.`` and non-printables."""
    out: list[str] = []
    for index, char in enumerate(kid):
        if char in "/%" or (index == 0 and char == ".") or not char.isprintable():
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


def pem_file_name(kid: str) -> str:
    """The file name of ``kid``'s public key: the one place a kid becomes a file name.

    ``<kid>.pem`` when that is a safe name (``_plain``), so plain kids keep the names
    they always had. Otherwise the kid percent-encoded (``abc/def+ghi=`` ->
    ``abc%2Fdef+ghi=.pem``: only ``/``, ``%``, a leading ``.`` and characters that are
    not printable are escaped), or, when that is empty or over ``MAX_NAME`` bytes,
    ``%sha256-<base64url SHA-256 of the kid>.pem``. The three forms never collide:
    plain names hold no ``%``, escaped ones hold ``%`` only before two hex digits.
    """
    if _plain(kid):
        return kid + _SUFFIX
    name = _escape(kid) + _SUFFIX
    if kid and len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.sha256(kid.encode("utf-8", "surrogatepass")).digest()
    return f"%sha256-{b64u_encode(digest)}{_SUFFIX}"


def render_index(names: dict[str, str]) -> bytes:
    """``{"kids": {kid: file name}}``, sorted, one kid a line (diffable, stable bytes)."""
    return (
        json.dumps({"kids": names}, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    ).encode()


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
        names: dict[str, str] = {}
        for key in keyset.ordered():
            if key.kty == "oct":
                continue
            name = names[key.kid] = pem_file_name(key.kid)
            try:
                files[directory / name] = render_public_pem(key)
            except ValueError as exc:
                raise self._fail(str(exc)) from exc
        if not files and len(keyset):
            raise self._fail("a pem output needs asymmetric keys; this keyset has only HMAC keys")
        if any(name != kid + _SUFFIX for kid, name in names.items()):
            files[directory / INDEX] = render_index(names)
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
