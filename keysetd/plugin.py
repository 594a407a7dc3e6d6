"""The plugin API: everything a source, output or notifier plugin needs, in one module.

This module and ``keysetd.verifier`` are keysetd's public Python API; every other
module is internal and may change in any release. ``__all__`` is pinned by
``tests/test_plugin_api.py`` (as httpx pins its own): a name leaves it only with a
major version. Nothing inside keysetd imports this module, so it can re-export from
every layer without making a cycle.

A plugin is a class registered under the entry-point group ``keysetd.sources``,
``keysetd.outputs``, ``keysetd.notifiers`` or ``keysetd.key_providers``; the name is
the config ``type`` (``[state] encryption`` for a key provider). Its
``Config`` (a ``Table``: a pydantic model, unknown keys refused) validates its config table, and
``__init__(config)`` builds it.
"""

from __future__ import annotations

from keysetd.crypto import ALGORITHMS, b64u_decode, b64u_encode, key_from_public
from keysetd.errors import (
    ConfigError,
    InvalidKeyset,
    KeysetdError,
    NotifyError,
    OutputError,
    PluginError,
    Problem,
    SealError,
    SourceError,
)
from keysetd.extension import (
    KeyProvider,
    KeyProviderConfig,
    Notifier,
    NotifierConfig,
    NotifyEvent,
    Output,
    OutputConfig,
    PluginConfig,
    Role,
    RotatableSource,
    Source,
    SourceConfig,
    SourceFormat,
    WritableSource,
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
from keysetd.model import Key, Keyset, Snapshot, canonical_json
from keysetd.outputs.nats import NatsPermissions, NatsSubjects
from keysetd.readfile import read_limited
from keysetd.sdnotify import notify as sd_notify
from keysetd.sealing import WrappedKey
from keysetd.tables import After, Before, Secret, Table, TableError, matches, non_empty, positive
from keysetd.units import Duration, PositiveDuration, parse_duration

__all__ = [  # noqa: RUF022 (grouped by what a plugin needs)
    # the extension points
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
    # [state] encryption: key providers
    "KeyProvider",
    "KeyProviderConfig",
    "WrappedKey",
    # errors
    "ConfigError",
    "InvalidKeyset",
    "KeysetdError",
    "NotifyError",
    "OutputError",
    "PluginError",
    "Problem",
    "SealError",
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
    # config tables (pydantic models) and their value types
    "After",
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
