"""The extension points: source, output, notifier and key provider, with their config tables.

A plugin is a class registered under ``keysetd.sources``, ``keysetd.outputs``,
``keysetd.notifiers`` or ``keysetd.key_providers`` (see ``keysetd.registry``); its
``Config`` (a ``Table``: a pydantic model that forbids unknown keys) validates its config
table, and ``__init__(config)`` builds it.
Internal: plugins import these from ``keysetd.plugin``, the public API.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from keysetd.model import Keyset, Snapshot
from keysetd.sealing import DATA_KEY_BYTES, WrappedKey
from keysetd.tables import Table
from keysetd.units import CacheTtl, FileMode, RefreshInterval, Timeout

__all__ = [
    "KeyProvider",
    "KeyProviderConfig",
    "Notifier",
    "NotifierConfig",
    "NotifyEvent",
    "Output",
    "OutputConfig",
    "PluginConfig",
    "Role",
    "RotatableSource",
    "Source",
    "SourceConfig",
    "SourceFormat",
    "WritableSource",
]


class PluginConfig(Table):
    """Base of every plugin's config table: frozen, unknown keys rejected."""

    type: str


SourceFormat = Literal["auto", "jwks", "rgs", "pem"]


class SourceConfig(PluginConfig):
    format: SourceFormat = "auto"
    refresh_interval: RefreshInterval = 60.0
    timeout: Timeout = 10.0


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


class RotatableSource(Source):
    """A source that makes its own next key (a KMS): the other capability managed rotation needs.

    keysetd never holds its private keys, so it cannot write the next keyset; it asks the
    source to create the next key version instead, which the next fetch returns as
    ``active_kid``. The planner then holds signers on the previous kid for
    ``activation_delay``, as for a file source: signers must name the key version keysetd
    gives them (a signer output), never "the latest".
    """

    def rotate(self, expected_active: str | None) -> str | None:
        """Create the next key version; return its kid.

        Compare-and-swap: when ``expected_active`` is given and the source's active kid is
        another one now (someone rotated meanwhile), create nothing and return None.
        Failures raise SourceError.
        """
        raise NotImplementedError

    def retire(self, left: tuple[str, ...], signer_kid: str) -> tuple[str, ...]:
        """Take ``left`` (kids signers left at least ``policy.retention`` ago) and what is
        older out of the source, never ``signer_kid``, if the source is configured to; return
        the kids it took (``policy.retention`` keeps them published from history). The
        default keeps them: the KMS owns its versions."""
        return ()


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
    def private(self) -> bool:
        """Holds private key material. Signer outputs do, unless they only name the key
        signers use (a KMS key version); a source of public keys only can feed those."""
        return self.role is Role.SIGNER

    @property
    def mode(self) -> int:
        if self.config.mode is not None:
            return self.config.mode
        return 0o600 if self.private else 0o644

    def check_source(self, source: SourceConfig) -> list[str]:
        """Problems of this output's config against the configured source (config load)."""
        return []

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


class KeyProviderConfig(PluginConfig):
    """``[state]`` with ``encryption = TYPE``: the provider's table (``type`` is ``encryption``)."""

    #: How long an unwrapped data key stays in memory (0: not at all; at most an hour).
    cache_ttl: CacheTtl = 300.0
    timeout: Timeout = 10.0


class KeyProvider:
    """Wraps and unwraps data keys; failures raise ``SealError`` naming the provider.

    A provider wraps with the associated data it is given and refuses to unwrap
    with any other. ``wrap`` uses the provider's current key version.
    """

    Config: ClassVar[type[KeyProviderConfig]] = KeyProviderConfig

    def __init__(self, config: Any) -> None:
        self.config: KeyProviderConfig = config

    def describe(self) -> str:
        """How errors name the provider, e.g. ``vault_transit:https://vault:8200/transit/state``."""
        return self.config.type

    def new_key(self, aad: bytes) -> tuple[bytes, WrappedKey]:
        """A fresh data key and its wrapped form (KMS overrides this: GenerateDataKey)."""
        data_key = os.urandom(DATA_KEY_BYTES)
        return data_key, self.wrap(data_key, aad)

    def wrap(self, data_key: bytes, aad: bytes) -> WrappedKey:
        raise NotImplementedError

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; called on shutdown and config reload."""
