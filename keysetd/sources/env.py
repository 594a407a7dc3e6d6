"""The ``env`` source: a keyset in keysetd's own environment (the rgs deployment style).

``RGS_JWT_KEYSET`` may hold the rgs ``keys`` map (``{"kid": "secret", ...}``),
with the active kid in ``RGS_JWT_ACTIVE_KID``; both are combined into an rgs
document. Any other value is passed on as-is for format detection. Errors
name the variable, never its value.
"""

from __future__ import annotations

import json
import os
from typing import ClassVar

from keysetd.errors import SourceError
from keysetd.extension import Source, SourceConfig
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
        if keys is None:
            return Snapshot(value.encode(), origin=self.describe(), format=None)
        document: dict[str, object] = {"keys": keys}
        if self.config.active_kid_var is not None:
            # An empty value (``RGS_JWT_ACTIVE_KID=`` in an env file) counts as unset.
            active = os.environ.get(self.config.active_kid_var, "").strip()
            if active:
                document["active_kid"] = active
        return Snapshot(canonical_json(document), origin=self.describe(), format="rgs")
