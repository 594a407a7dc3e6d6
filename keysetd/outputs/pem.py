"""A directory of ``<kid>.pem`` public keys, plus ``active.key`` when ``private = true``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from keysetd.errors import OutputError
from keysetd.formats.pem import render_private_pem, render_public_pem
from keysetd.model import Keyset
from keysetd.plugin import Output, OutputConfig, Role

__all__ = ["PemOutput"]

ACTIVE_KEY = "active.key"


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
            if "/" in key.kid or key.kid in {"", ".", ".."} or key.kid.startswith("."):
                raise self._fail(f"kid {key.kid!r} cannot be a file name")
            try:
                files[directory / f"{key.kid}.pem"] = render_public_pem(key)
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

    def stale_files(self, rendered: Iterable[Path]) -> tuple[Path, ...]:
        keep = set(rendered)
        try:
            present = list(self.config.path.iterdir())
        except OSError:
            return ()
        return tuple(
            path
            for path in present
            if path not in keep
            and (path.suffix == ".pem" or path.name == ACTIVE_KEY)
            and not path.name.startswith(".")
        )
