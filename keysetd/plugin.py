"""The three extension points (source, output, notifier) and their entry-point registry.

A plugin is a class registered under ``keysetd.sources``, ``keysetd.outputs`` or
``keysetd.notifiers``; its ``Config`` (a ``keysetd.schema.Table``, which
forbids unknown keys) validates its config table, and ``__init__(config)`` builds it. The
built-ins register through the same groups. Only the plugins a config names are
imported, and a name registered twice is an error, not "last one wins".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

from keysetd.errors import PluginError
from keysetd.model import Keyset, Snapshot
from keysetd.schema import Table, declared_fields
from keysetd.units import Duration, FileMode

__all__ = [
    "GROUPS",
    "Notifier",
    "NotifierConfig",
    "NotifyEvent",
    "Output",
    "OutputConfig",
    "PluginConfig",
    "PluginInfo",
    "Role",
    "Source",
    "SourceConfig",
    "SourceFormat",
    "WritableSource",
    "available",
    "load",
]


class PluginConfig(Table):
    """Base of every plugin's config table: frozen, unknown keys rejected."""

    type: str


SourceFormat = Literal["auto", "jwks", "rgs", "pem"]


class SourceConfig(PluginConfig):
    format: SourceFormat = "auto"
    refresh_interval: Duration = 60.0
    timeout: Duration = 10.0


class Source:
    """Fetches one snapshot of the keyset. Failures raise ``SourceError``."""

    Config: ClassVar[type[SourceConfig]] = SourceConfig
    #: A source of public keys only (a JWKS URL, a KMS): private members are refused,
    #: and a config with signer outputs is a configuration error.
    public_only: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config: SourceConfig = config

    def describe(self) -> str:
        """How logs and errors name this source, e.g. ``file:/etc/keysetd/keyset.json``."""
        return self.config.type

    def fetch(self) -> Snapshot:
        """Return the current bytes within ``config.timeout``; raise SourceError otherwise."""
        raise NotImplementedError

    def watch_paths(self) -> tuple[Path, ...]:
        """Files whose change should trigger a fetch at once (the daemon watches their dirs)."""
        return ()

    def close(self) -> None:
        """Release connections or processes; called on shutdown and config reload."""


class WritableSource(Source):
    """A source keysetd may write: the capability managed rotation needs.

    ``[rotation]`` and ``keysetd rotate`` write the next keyset into the source
    itself, so they refuse (ConfigError naming the type) a source that does not
    subclass this. Writes are compare-and-swap: an edit made meanwhile wins.
    """

    def missing(self) -> bool:
        """The document is gone; keysetd writes it again (or its first key)."""
        raise NotImplementedError

    def replace_if_unchanged(self, expected: bytes | None, data: bytes) -> bool:
        """Write ``data`` (private keys: owner-only) if the document still holds ``expected``.

        ``expected`` None means the document must be absent. Returns False, writing
        nothing, when it changed meanwhile; raises OSError when it cannot be written.
        """
        raise NotImplementedError


class Role(enum.Enum):
    """Verifier outputs hold public material and are committed first; signer outputs after."""

    VERIFIER = "verifier"
    SIGNER = "signer"


class OutputConfig(PluginConfig):
    path: Path
    name: str | None = None
    mode: FileMode | None = None


class Output:
    """Renders the planned keyset to bytes. Pure: the same keyset gives the same bytes."""

    Config: ClassVar[type[OutputConfig]] = OutputConfig

    def __init__(self, config: Any) -> None:
        self.config: OutputConfig = config

    @property
    def name(self) -> str:
        return self.config.name or self.config.type

    @property
    def role(self) -> Role:
        return Role.VERIFIER

    @property
    def mode(self) -> int:
        if self.config.mode is not None:
            return self.config.mode
        return 0o644 if self.role is Role.VERIFIER else 0o600

    def file_mode(self, path: Path) -> int:
        """The mode of one rendered file (an output may hold files of several kinds)."""
        return self.mode

    def render(self, keyset: Keyset) -> dict[Path, bytes]:
        """Every file of this output and its bytes. Raise OutputError when it cannot."""
        raise NotImplementedError

    def stale_files(self, rendered: Iterable[Path]) -> tuple[Path, ...]:
        """Files this output wrote before that ``rendered`` no longer includes (to remove)."""
        path = self.config.path
        return (path,) if path not in set(rendered) and path.is_file() else ()


class NotifierConfig(PluginConfig):
    name: str | None = None
    outputs: tuple[str, ...] | None = None
    retries: int = 3


@dataclass(frozen=True, slots=True)
class NotifyEvent:
    """What changed in this cycle; never key material."""

    fingerprint: str
    active_kid: str | None
    outputs: tuple[str, ...]


class Notifier:
    """Tells a consumer to reload. One attempt per call; the pipeline retries.

    ``check`` runs before the commit (it may veto the cycle), ``notify`` after it.
    """

    Config: ClassVar[type[NotifierConfig]] = NotifierConfig

    def __init__(self, config: Any) -> None:
        self.config: NotifierConfig = config

    @property
    def name(self) -> str:
        return self.config.name or self.config.type

    @classmethod
    def check_outputs(cls, config: Any, outputs: Sequence[Output]) -> list[str]:
        """Problems of this notifier's config against the configured outputs (config load)."""
        return []

    def check(self, rendered: Mapping[Path, bytes]) -> None:
        """Pre-commit: judge this cycle's rendered files (path -> bytes) before any is written.

        Raise NotifyError to fail the cycle with every output left as it was; the
        default accepts everything. Read-only: never write ``rendered`` or the files.
        """

    def notify(self, event: NotifyEvent) -> None:
        """Deliver one notification or raise NotifyError."""
        raise NotImplementedError


GROUPS: dict[str, type[Any]] = {
    "keysetd.sources": Source,
    "keysetd.outputs": Output,
    "keysetd.notifiers": Notifier,
}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    group: str
    name: str
    target: str
    distribution: str


def _entry_points(group: str) -> list[EntryPoint]:
    return list(entry_points(group=group))


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"


def available() -> list[PluginInfo]:
    """Every registered plugin with where it comes from, without importing any."""
    return [
        PluginInfo(group, ep.name, ep.value, _distribution(ep))
        for group in GROUPS
        for ep in sorted(_entry_points(group), key=lambda e: e.name)
    ]


@cache
def load(group: str, name: str) -> type[Any]:
    """Import the plugin class registered as ``name`` in ``group`` and check its shape."""
    if group not in GROUPS:
        raise PluginError(group, name, "unknown plugin group")
    matches = [ep for ep in _entry_points(group) if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in _entry_points(group)})) or "none"
        raise PluginError(group, name, f"no such plugin (known: {known})")
    targets = {ep.value for ep in matches}
    if len(targets) > 1:
        where = ", ".join(f"{ep.value} from {_distribution(ep)}" for ep in matches)
        raise PluginError(group, name, f"registered more than once: {where}")
    try:
        cls = matches[0].load()
    except Exception as exc:  # any import failure of third-party code
        raise PluginError(group, name, f"cannot import {matches[0].value}: {exc}") from exc
    base = GROUPS[group]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(group, name, f"{matches[0].value} is not a {base.__name__} subclass")
    config_model = getattr(cls, "Config", None)
    if not (isinstance(config_model, type) and issubclass(config_model, PluginConfig)):
        raise PluginError(group, name, "its Config is not a keysetd PluginConfig table")
    try:
        declared_fields(config_model)
    except TypeError as exc:
        raise PluginError(group, name, f"its Config is broken: {exc}") from None
    return cls
