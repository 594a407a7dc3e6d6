"""The plugin API: everything a source, output or notifier plugin needs, in one module.

This module and ``keysetd.verifier`` are keysetd's public Python API; every other
module is internal and may change in any release. ``__all__`` is pinned by
``tests/test_plugin_api.py`` (as httpx pins its own): a name leaves it only with a
major version.

A plugin is a class registered under ``keysetd.sources``, ``keysetd.outputs`` or
``keysetd.notifiers`` (see ``keysetd.registry``); its ``Config`` (a ``Table``, which
forbids unknown keys) validates its config table, and ``__init__(config)`` builds it.

The bases are defined here; the helpers beside them (errors, the keyset model,
config types, the HTTP client, file reading, logging, the nkey codec) are
re-exported from their modules on first use, so loading the bases stays cheap.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from keysetd.errors import PluginError
from keysetd.model import Keyset, Snapshot
from keysetd.schema import Table
from keysetd.units import FileMode, RefreshInterval, Timeout

__all__ = [  # noqa: RUF022 (grouped by what a plugin needs)
    # the extension points, defined here
    "Notifier",
    "NotifierConfig",
    "NotifyEvent",
    "Output",
    "OutputConfig",
    "PluginConfig",
    "Role",
    "Source",
    "SourceConfig",
    "SourceFormat",
    # errors
    "ConfigError",
    "InvalidKeyset",
    "KeysetdError",
    "NotifyError",
    "OutputError",
    "PluginError",
    "Problem",
    "SourceError",
    # the keyset model
    "Key",
    "Keyset",
    "Snapshot",
    "canonical_json",
    # keys
    "ALGORITHMS",
    "b64u_decode",
    "b64u_encode",
    "key_from_public",
    # config tables and their value types
    "Before",
    "Duration",
    "PositiveDuration",
    "Secret",
    "Table",
    "TableError",
    "matches",
    "non_empty",
    "parse_duration",
    "positive",
    # talking to servers and reading files
    "HttpCancelled",
    "HttpConnectError",
    "HttpFailure",
    "HttpRequest",
    "HttpResponse",
    "HttpTimeout",
    "HttpTlsError",
    "HttpTooLarge",
    "HttpTransport",
    "check_http_url",
    "http_send",
    "read_limited",
    "safe_url",
    # logging and the service manager
    "configure_logging",
    "event",
    "sd_notify",
    # NATS: the nkey codec and the permissions of the nats output
    "NatsPermissions",
    "NatsSubjects",
    "nkey",
]

#: Re-exported name -> (module, attribute), imported on first use (PEP 562).
_REEXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("keysetd.errors", name) for name in (
        "ConfigError", "InvalidKeyset", "KeysetdError", "NotifyError", "OutputError",
        "Problem", "SourceError",
    )},
    **{name: ("keysetd.model", name) for name in ("Key", "canonical_json")},
    **{name: ("keysetd.crypto", name) for name in (
        "ALGORITHMS", "b64u_decode", "b64u_encode", "key_from_public",
    )},
    **{name: ("keysetd.schema", name) for name in (
        "Before", "Secret", "TableError", "matches", "non_empty", "positive",
    )},
    **{name: ("keysetd.units", name) for name in (
        "Duration", "PositiveDuration", "parse_duration",
    )},
    **{name: ("keysetd.httpclient", name) for name in (
        "HttpCancelled", "HttpConnectError", "HttpFailure", "HttpTimeout", "HttpTlsError",
        "HttpTooLarge",
    )},
    "HttpRequest": ("keysetd.httpclient", "Request"),
    "HttpResponse": ("keysetd.httpclient", "Response"),
    "HttpTransport": ("keysetd.httpclient", "Transport"),
    "http_send": ("keysetd.httpclient", "send"),
    "check_http_url": ("keysetd.httpcheck", "check_http_url"),
    "safe_url": ("keysetd.httpcheck", "safe_url"),
    "read_limited": ("keysetd.readfile", "read_limited"),
    "configure_logging": ("keysetd.log", "configure"),
    "event": ("keysetd.log", "event"),
    "sd_notify": ("keysetd.sdnotify", "notify"),
    "NatsPermissions": ("keysetd.outputs.nats", "NatsPermissions"),
    "NatsSubjects": ("keysetd.outputs.nats", "NatsSubjects"),
    "nkey": ("keysetd.formats", "nkey"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import a re-exported name on first use, then keep it in the module."""
    try:
        module, attribute = _REEXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from keysetd.crypto import ALGORITHMS, b64u_decode, b64u_encode, key_from_public
    from keysetd.errors import (
        ConfigError,
        InvalidKeyset,
        KeysetdError,
        NotifyError,
        OutputError,
        Problem,
        SourceError,
    )
    from keysetd.formats import nkey
    from keysetd.httpcheck import check_http_url, safe_url
    from keysetd.httpclient import (
        HttpCancelled,
        HttpConnectError,
        HttpFailure,
        HttpTimeout,
        HttpTlsError,
        HttpTooLarge,
    )
    from keysetd.httpclient import Request as HttpRequest
    from keysetd.httpclient import Response as HttpResponse
    from keysetd.httpclient import Transport as HttpTransport
    from keysetd.httpclient import send as http_send
    from keysetd.log import configure as configure_logging
    from keysetd.log import event
    from keysetd.model import Key, canonical_json
    from keysetd.outputs.nats import NatsPermissions, NatsSubjects
    from keysetd.readfile import read_limited
    from keysetd.schema import Before, Secret, TableError, matches, non_empty, positive
    from keysetd.sdnotify import notify as sd_notify
    from keysetd.units import Duration, PositiveDuration, parse_duration


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
