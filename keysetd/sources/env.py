"""The ``env`` source: a keyset in keysetd's own environment (the rgs deployment style).

``RGS_JWT_KEYSET`` may hold the rgs ``keys`` map (``{"kid": "secret", ...}``) or
open-rgs's own ``kid:secret,kid:secret`` form, with the active kid in
``RGS_JWT_ACTIVE_KID``; both are combined into an rgs document. Without an active
kid, open-rgs's ``default`` kid is the active one (see ``keysetd.formats.rgs``).
Any other value (a JWKS or rgs document, PEM) is passed on as-is for format
detection. Errors name the variable, never its value.
"""

from __future__ import annotations

import json
import os
from typing import ClassVar

from keysetd.errors import SourceError
from keysetd.extension import Source, SourceConfig
from keysetd.formats.rgs import OPEN_RGS_DEFAULT_KID, parse_keyset_spec
from keysetd.model import Snapshot, canonical_json

__all__ = ["EnvSource", "EnvSourceConfig"]


class EnvSourceConfig(SourceConfig):
    var: str = "RGS_JWT_KEYSET"
    active_kid_var: str | None = "RGS_JWT_ACTIVE_KID"


def _keys_map(value: str) -> dict[str, str] | None:
    """The value as a kid -> secret map, or None when it is anything else."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
        return parsed
    return None


def _is_spec(value: str) -> bool:
    """``kid:secret,...`` rather than a document: has a ":" and opens no JSON or PEM."""
    stripped = value.lstrip()
    return ":" in stripped and not stripped.startswith(("{", "[", "-----"))


class EnvSource(Source):
    """Reads ``var`` (and ``active_kid_var``) from the environment at every fetch."""

    Config: ClassVar[type[SourceConfig]] = EnvSourceConfig

    def __init__(self, config: EnvSourceConfig) -> None:
        super().__init__(config)
        self.config: EnvSourceConfig = config

    def describe(self) -> str:
        return f"env:{self.config.var}"

    def fetch(self) -> Snapshot:
        var = self.config.var
        value = os.environ.get(var)
        if value is None:
            raise SourceError(self.describe(), f"environment variable {var} is not set")
        if not value.strip():
            raise SourceError(self.describe(), f"environment variable {var} is empty")
        keys = _keys_map(value)
        spec = keys is None and _is_spec(value)
        if spec:
            try:
                keys = parse_keyset_spec(value)
            except ValueError as exc:  # names entries by position and kid only
                raise SourceError(self.describe(), f"{var} (kid:secret,...): {exc}") from None
        if keys is None:
            return Snapshot(value.encode(), origin=self.describe(), format=None)
        document: dict[str, object] = {"keys": keys}
        active = ""
        if self.config.active_kid_var is not None:
            # An empty value (``RGS_JWT_ACTIVE_KID=`` in an env file) counts as unset.
            active = os.environ.get(self.config.active_kid_var, "").strip()
            if active:
                document["active_kid"] = active
        if spec and not active and len(keys) > 1 and OPEN_RGS_DEFAULT_KID not in keys:
            # open-rgs refuses this too: its active kid defaults to "default".
            raise SourceError(
                self.describe(),
                f"{self.config.active_kid_var or 'the active kid'} is not set and {var} has no "
                f"kid {OPEN_RGS_DEFAULT_KID!r} (open-rgs's default active kid): name one",
            )
        return Snapshot(canonical_json(document), origin=self.describe(), format="rgs")
