"""Plugins for tests/test_plugins.py, registered through a dist-info written at test time."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from keysetd.plugin import Snapshot, Source, SourceConfig

if TYPE_CHECKING:
    from decimal import Decimal


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


class Clock:
    """A class pydantic knows no schema for."""


class WhenConfig(SourceConfig):
    when: Clock  # not a type config tables convert


class WhenSource(EchoSource):
    """Its Config declares a type that no TOML value converts to."""

    Config: ClassVar[type[SourceConfig]] = WhenConfig


class PriceConfig(SourceConfig):
    price: Decimal  # only imported for type checkers: does not resolve at run time


class PriceSource(EchoSource):
    """Its Config names a type that exists only for the type checker."""

    Config: ClassVar[type[SourceConfig]] = PriceConfig
