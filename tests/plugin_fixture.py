"""Plugins for tests/test_plugins.py, registered through a dist-info written at test time."""

from __future__ import annotations

from typing import ClassVar

from keysetd.model import Snapshot
from keysetd.plugin import Source, SourceConfig


class EchoConfig(SourceConfig):
    text: str


class EchoSource(Source):
    """Returns its configured text: a third-party source in a dozen lines."""

    Config: ClassVar[type[SourceConfig]] = EchoConfig

    def describe(self) -> str:
        return "echo"

    def fetch(self) -> Snapshot:
        assert isinstance(self.config, EchoConfig)
        return Snapshot(self.config.text.encode(), "echo")


class NotAPlugin:
    """Registered by mistake: not a Source subclass."""
