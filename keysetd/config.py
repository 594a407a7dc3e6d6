"""TOML + environment -> one frozen ``Config``; unknown keys rejected, every problem named.

Two stages, as in spiffe-helper: the schema (``Settings``, a pydantic-settings model
whose sources are the TOML file and ``KEYSETD_`` variables, ``__`` for nesting, the
variables winning) and the runtime config, where each ``[source]``, ``[[outputs]]``
and ``[[notify]]`` table is validated by the ``Config`` table (a pydantic model) of
the plugin its ``type`` names. pydantic is imported here and by the plugins, never by
``keysetd verify`` or ``keysetd.verifier``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from keysetd.errors import ConfigError, PluginError
from keysetd.extension import (
    KeyProvider,
    KeyProviderConfig,
    Notifier,
    NotifierConfig,
    Output,
    OutputConfig,
    RotatableSource,
    Source,
    SourceConfig,
    WritableSource,
)
from keysetd.httpcheck import check_http_url
from keysetd.readfile import read_limited
from keysetd.registry import load
from keysetd.sealing import Sealer
from keysetd.tables import (
    After,
    Before,
    Table,
    TableError,
    matches,
    non_empty,
    problems_of,
    refuse_lax_values,
)
from keysetd.units import (
    MAX_TIMEOUT,
    Duration,
    PositiveDuration,
    RotationPeriod,
    between,
    parse_duration,
)

if TYPE_CHECKING:
    from keysetd.fleet.etcd import EtcdSettings

__all__ = [
    "DEFAULT_MAX_STALENESS",
    "RGS_SOURCE_VARS",
    "AuditSettings",
    "Config",
    "FleetSettings",
    "PolicySettings",
    "RotationSettings",
    "ServerSettings",
    "Settings",
    "compat_overrides",
    "config_path",
    "load_config",
    "no_config_base",
    "rgs_bool",
    "rgs_source_given",
]

DEFAULT_MAX_STALENESS = 86400.0
MAX_CONFIG_BYTES = 1 << 20
_TIMEOUT_RULE = between(0.0, MAX_TIMEOUT, low_open=True)


def _default_state_dir() -> Path:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=, first entry) or /var/lib/keysetd."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path("/var/lib/keysetd")


class ServerSettings(Table):
    listen: str = "127.0.0.1:9464"


class PolicySettings(Table):
    activation_delay: Duration = 0.0
    retention: Duration = 0.0
    max_staleness: PositiveDuration | None = None
    hmac_alg: Literal["HS256", "HS384", "HS512"] = "HS256"

    @property
    def staleness_limit(self) -> float:
        return DEFAULT_MAX_STALENESS if self.max_staleness is None else self.max_staleness


class RotationSettings(Table):
    """Managed keys: keysetd owns the file source and rotates its key every ``every``."""

    every: RotationPeriod
    alg: Literal["ES256", "ES384", "EdDSA", "RS256", "PS256"] = "ES256"
    kid_prefix: str = ""


def _whole(value: int) -> int:
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


class AuditSettings(Table):
    """``[audit]``: audit.jsonl is rotated past ``max_bytes``; ``keep`` rotated files stay."""

    max_bytes: Annotated[int, After(_whole)] = 16 << 20
    keep: Annotated[int, After(_whole)] = 8


def _default_replica_id() -> str:
    """The hostname: a pod's name under Kubernetes, so unique within a Deployment's fleet.

    Characters an etcd key component should not hold become "-" (defaults are not checked).
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:253]
    return name or "keysetd"


def _endpoint_list(value: object) -> object:
    """A list, or one string of comma-separated URLs (``KEYSETD_FLEET__ENDPOINTS=a,b``)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _endpoint(url: str) -> str:
    """An etcd client URL: http(s), a host, no credentials, path, query or fragment."""
    check_http_url(url)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (use cert_file and key_file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be scheme://host:port only (no path, query or fragment)")
    return url


#: How long a replica's acknowledgement outlives its last keepalive: 2s to 5m.
LeaseTtl = Annotated[float, Before(parse_duration), After(between(2.0, 300.0))]
Endpoints = Annotated[list[Annotated[str, After(_endpoint)]], Before(_endpoint_list), non_empty]
#: An etcd key prefix: starts with "/", no trailing "/", printable ASCII without spaces.
Prefix = Annotated[str, matches(r"/[A-Za-z0-9._~:@+=-]+(/[A-Za-z0-9._~:@+=-]+)*")]
#: One etcd key component: a hostname or pod name.
ReplicaId = Annotated[str, matches(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")]


class FleetSettings(Table):
    """Fleet mode: replicas share one rotation state in etcd (absent: each replica alone)."""

    store: Literal["etcd"] = "etcd"
    endpoints: Endpoints
    prefix: Prefix = "/keysetd"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    replica_id: ReplicaId = Field(default_factory=_default_replica_id)
    lease_ttl: LeaseTtl = 10.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate)")

    @property
    def timeout(self) -> float:
        """One store call's deadline: at most half the lease, so a keepalive beats its expiry."""
        return min(5.0, self.lease_ttl / 2)

    def key(self, *parts: str) -> str:
        """The etcd key ``<prefix>/<part>/...``."""
        return "/".join((self.prefix, *parts))

    def store_settings(self) -> EtcdSettings:
        """What ``keysetd.fleet.EtcdStore`` takes (imported here: fleet mode only)."""
        from keysetd.fleet.etcd import EtcdSettings

        return EtcdSettings(
            endpoints=tuple(self.endpoints),
            timeout=self.timeout,
            ca_file=str(self.ca_file) if self.ca_file else None,
            cert_file=str(self.cert_file) if self.cert_file else None,
            key_file=str(self.key_file) if self.key_file else None,
        )


#: What one ``load_config`` call hands the settings sources: the environment, the file's tables.
_INPUTS: ContextVar[tuple[Mapping[str, str], dict[str, Any]]] = ContextVar("keysetd_config")


class Settings(BaseSettings):
    """The schema of the config file; plugin tables stay raw until their plugin validates them."""

    model_config = SettingsConfigDict(
        env_prefix="KEYSETD_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        defer_build=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
    )

    state_dir: Path = Field(default_factory=_default_state_dir)
    strict: bool = False
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    server: ServerSettings | None = None
    source: dict[str, Any]
    policy: PolicySettings = PolicySettings()
    rotation: RotationSettings | None = None
    fleet: FleetSettings | None = None
    #: ``[state]``: ``encryption`` names the key provider; the rest is that provider's table.
    # Plain defaults (pydantic copies them per instance): a builtin as default_factory
    # has pydantic read its signature, which compiles tokenize's pattern at start (~2 ms).
    state: dict[str, Any] = {}
    audit: AuditSettings = AuditSettings()
    outputs: list[dict[str, Any]] = []
    notify: list[dict[str, Any]] = []

    @model_validator(mode="before")
    @classmethod
    def _strict_scalars(cls, data: Any) -> Any:
        """As in every table: true is no number, "" no path."""
        return refuse_lax_values(cls, data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``KEYSETD_*`` variables over the file (with the ``RGS_*`` conventions merged in)."""
        environ, file_data = _INPUTS.get()
        return (_Environment(settings_cls, environ), _FileTables(settings_cls, file_data))


class _FileTables(PydanticBaseSettingsSource):
    """The TOML file's tables, read by ``_read_toml`` (size-bounded, FIFOs refused)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _json_leaves(value: Any) -> Any:
    """A string leaf that starts with ``[`` or ``{`` read as JSON (kept as is if it is not)."""
    if isinstance(value, dict):
        return {key: _json_leaves(item) for key, item in value.items()}
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class _Environment(EnvSettingsSource):
    """pydantic-settings' ``KEYSETD_*`` source over a given environment (tests pass their own).

    As before pydantic-settings, a value that is not valid JSON where a list or table is
    expected stays a string (and fails validation naming the key, not the whole load),
    and a nested value that starts with ``[`` or ``{`` is read as JSON
    (``KEYSETD_SOURCE__ARGV='["/usr/bin/kms", "get"]'``).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # As before: the prefix is upper case (``keysetd_strict`` is no override).
        return {
            name.lower(): value
            for name, value in self._environ.items()
            if name.startswith(ENV_PREFIX) and name not in _NOT_KEYS
        }

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        exploded: dict[str, Any] = _json_leaves(
            super().explode_env_vars(field_name, field, env_vars)
        )
        return exploded


@dataclass(frozen=True, slots=True)
class Config:
    """The runtime config: settings plus each plugin table validated by its plugin."""

    settings: Settings
    path: Path | None
    source_class: type[Source]
    source: SourceConfig
    outputs: tuple[tuple[type[Output], OutputConfig], ...]
    notifiers: tuple[tuple[type[Notifier], NotifierConfig], ...]
    #: ``[state] encryption``: the key provider and its table (None: state in plaintext).
    key_provider: tuple[type[KeyProvider], KeyProviderConfig] | None = None

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def key_provider_name(self) -> str:
        """``[state] encryption``: the key provider's name, or "none"."""
        return "none" if self.key_provider is None else self.key_provider[1].type

    def build_sealer(self) -> Sealer | None:
        """The sealer of state_dir's private files, or None when encryption is off."""
        if self.key_provider is None:
            return None
        cls, table = self.key_provider
        return Sealer(cls(table))

    @property
    def policy(self) -> PolicySettings:
        return self.settings.policy

    def build_source(self) -> Source:
        return self.source_class(self.source)

    def build_outputs(self) -> tuple[Output, ...]:
        return tuple(cls(cfg) for cls, cfg in self.outputs)

    def build_notifiers(self) -> tuple[Notifier, ...]:
        return tuple(cls(cfg) for cls, cfg in self.notifiers)


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """``--config`` wins, then ``KEYSETD_CONFIG``; None when neither is given."""
    env = os.environ if environ is None else environ
    value = explicit or env.get("KEYSETD_CONFIG")
    return Path(value) if value else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = read_limited(path, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a FIFO or device: refused rather than read forever
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc


ENV_PREFIX = "KEYSETD_"
#: Variables with the prefix that are not config keys.
_NOT_KEYS = frozenset({"KEYSETD_CONFIG"})
#: What Kubernetes injects into every pod of a namespace with a Service named
#: ``keysetd`` (unless the pod sets ``enableServiceLinks: false``): not config keys.
_SERVICE_LINK = re.compile(
    r"KEYSETD_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)


def environment_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``KEYSETD_A__B=v`` as ``{"a": {"b": v}}``, and which variable set each dotted key.

    pydantic-settings reads the values (``Settings``); this names the variable behind a
    problem and finds variables that are no key at all, which it would skip silently.

    A value that starts with ``[`` or ``{`` is read as JSON, so arrays of tables
    (``KEYSETD_OUTPUTS='[{"type": "jwks", ...}]'``) can come from the environment.
    Kubernetes service-link variables (``KEYSETD_SERVICE_HOST``, ``KEYSETD_PORT_9464_TCP``
    ...) are skipped: no config key has their shape.
    """
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _NOT_KEYS or _SERVICE_LINK.fullmatch(name):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        parsed: Any = value
        if value.lstrip().startswith(("[", "{")):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
        node = tree
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = parsed
        origins[".".join(path)] = name
    return tree, origins


#: What open-rgs reads as true and false (``mustParseBoolEnv``); anything else is refused.
_RGS_TRUE = frozenset({"1", "true", "yes", "on"})
_RGS_FALSE = frozenset({"0", "false", "no", "off"})
#: The open-rgs variables that name a keyset source; any of them allows a start without a file.
RGS_SOURCE_VARS = ("RGS_JWT_KEYSET_COMMAND", "RGS_JWT_KEYSET", "RGS_JWT_KEYSET_FILE")
#: The shell a ``RGS_JWT_KEYSET_COMMAND`` line runs under (open-rgs: ``sh -lc``).
RGS_SHELL = "/bin/sh"
#: The file the no-config daemon writes for open-rgs when no ``RGS_JWT_KEYSET_FILE`` says where.
RGS_OUTPUT_NAME = "jwt-keyset.json"


def _given(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when unset or blank (as open-rgs's ``envOr``)."""
    value = environ.get(name)
    return value if value is not None and value.strip() else None


def rgs_bool(environ: Mapping[str, str], name: str) -> bool | None:
    """An open-rgs boolean variable; None when unset or blank, ConfigError when not a boolean."""
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in _RGS_TRUE or raw in _RGS_FALSE:
        return raw in _RGS_TRUE
    raise ConfigError(f"${name} is not a boolean (true/false, 1/0, yes/no, on/off)")


def rgs_source_given(environ: Mapping[str, str]) -> bool:
    """True when an open-rgs variable names a keyset source (a start without a config file)."""
    return any(_given(environ, name) for name in RGS_SOURCE_VARS)


def _rgs_home(environ: Mapping[str, str]) -> Path:
    """Where the no-config daemon keeps its state and (by default) its rgs output.

    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), else the XDG state directory of
    whoever runs it: ``$XDG_STATE_HOME/keysetd`` or ``$HOME/.local/state/keysetd``; with
    no usable HOME either, /var/lib/keysetd.
    """
    if state := environ.get("STATE_DIRECTORY", "").split(":")[0]:
        return Path(state)
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "keysetd"
    home = environ.get("HOME", "")
    if os.path.isabs(home) and home.rstrip("/"):
        return Path(home) / ".local" / "state" / "keysetd"
    return Path("/var/lib/keysetd")


def compat_overrides(
    environ: Mapping[str, str], *, no_config: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """The open-rgs ``RGS_*`` variables as config keys, so such a deployment keeps its env.

    With a config file: ``RGS_JWT_KEYSET_FILE`` (a file source) or ``RGS_JWT_KEYSET_COMMAND``
    (a command source: the line run by ``/bin/sh -c``, as open-rgs runs it), not both.
    Without one (``no_config``), the source is the first of ``RGS_JWT_KEYSET_COMMAND``,
    ``RGS_JWT_KEYSET`` (an env source) and ``RGS_JWT_KEYSET_FILE``; when the command or
    the inline keyset is the source, ``RGS_JWT_KEYSET_FILE`` is where the rgs output goes
    (the file open-rgs reads, as it prefers that variable over the other two).
    Both: ``RGS_JWT_KEYSET_REFRESH_INTERVAL`` and ``RGS_STRICT_PRODUCTION_MODE``.
    ``KEYSETD_*`` variables win over these.
    """
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    source: dict[str, Any] = {}
    path = _given(environ, "RGS_JWT_KEYSET_FILE")
    command = _given(environ, "RGS_JWT_KEYSET_COMMAND")
    inline = _given(environ, "RGS_JWT_KEYSET") if no_config else None
    if not no_config and path and command:
        raise ConfigError("set RGS_JWT_KEYSET_FILE or RGS_JWT_KEYSET_COMMAND, not both")
    if command:
        source.update(type="command", argv=[RGS_SHELL, "-c", command])
        origins["source.argv"] = "RGS_JWT_KEYSET_COMMAND"
    elif inline:
        source.update(type="env", var="RGS_JWT_KEYSET", active_kid_var="RGS_JWT_ACTIVE_KID")
        origins["source.type"] = "RGS_JWT_KEYSET"
    elif path:
        source.update(type="file", path=path)
        origins["source.path"] = "RGS_JWT_KEYSET_FILE"
    if interval := _given(environ, "RGS_JWT_KEYSET_REFRESH_INTERVAL"):
        source["refresh_interval"] = interval.strip()
        origins["source.refresh_interval"] = "RGS_JWT_KEYSET_REFRESH_INTERVAL"
    if source:
        tree["source"] = source
    if (strict := rgs_bool(environ, "RGS_STRICT_PRODUCTION_MODE")) is not None:
        tree["strict"] = strict
        origins["strict"] = "RGS_STRICT_PRODUCTION_MODE"
    return tree, origins


def no_config_base(environ: Mapping[str, str], source_type: str | None) -> dict[str, Any]:
    """The config of a daemon started with ``RGS_*`` variables only, under the overrides.

    state_dir ``<home>/state`` (see ``_rgs_home``); one rgs output, the file open-rgs reads:
    ``RGS_JWT_KEYSET_FILE`` when a command or inline keyset is the source, else
    ``<home>/jwt-keyset.json``; ``policy.max_staleness`` set to its default (24h) so strict
    mode has what it asks for.
    """
    home = _rgs_home(environ)
    target = _given(environ, "RGS_JWT_KEYSET_FILE") if source_type in ("command", "env") else None
    return {
        "state_dir": str(home / "state"),
        "outputs": [{"type": "rgs", "path": target or str(home / RGS_OUTPUT_NAME)}],
        "policy": {"max_staleness": DEFAULT_MAX_STALENESS},
    }


def _external_keyset_problem(environ: Mapping[str, str], source_type: object) -> str | None:
    """``RGS_STRICT_EXTERNAL_JWT_KEYSET`` (default: ``RGS_STRICT_PRODUCTION_MODE``), as open-rgs
    means it: the keyset must come from outside the environment, so an env source is refused."""
    name = "RGS_STRICT_EXTERNAL_JWT_KEYSET"
    required = rgs_bool(environ, name)
    if required is None:
        name = "RGS_STRICT_PRODUCTION_MODE"
        required = rgs_bool(environ, name)
    if not required or source_type != "env":
        return None
    return (
        f"source.type: an env source keeps key material in the environment, and ${name}=true "
        "requires an external keyset (RGS_JWT_KEYSET_FILE or RGS_JWT_KEYSET_COMMAND)"
    )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _origin(loc: str, origins: Mapping[str, str]) -> str:
    for key, name in origins.items():
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f" (from ${name})"
    return ""


def _describe(exc: TableError, prefix: str, origins: Mapping[str, str]) -> list[str]:
    """Each problem as ``where: message``, naming the variable when one set that key."""
    located = exc.located(prefix)
    return [f"{where}: {message}{_origin(where, origins)}" for where, message in located]


def _settings(
    file_data: dict[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
    origins: Mapping[str, str],
) -> Settings | None:
    """The file's tables under the ``KEYSETD_*`` variables, through pydantic-settings."""
    token = _INPUTS.set((environ, file_data))
    try:
        return Settings()  # type: ignore[call-arg]  # its sources give the keys
    except ValidationError as exc:
        problems.extend(_describe(TableError(problems_of(exc)), "", origins))
        return None
    except SettingsError as exc:  # a source that could not be read; its message names no value
        problems.append(f"(environment): {exc}")
        return None
    finally:
        _INPUTS.reset(token)


def _unknown_variables(overrides: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """``KEYSETD_*`` variables that name no top-level key (pydantic-settings skips them)."""
    return [
        f"{key}: unknown key{_origin(key, origins)}"
        for key in overrides
        if key not in Settings.model_fields
    ]


def _plugin_table(
    group: str,
    table: dict[str, Any],
    where: str,
    problems: list[str],
    origins: Mapping[str, str],
) -> tuple[type[Any], Any] | None:
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(f"{where}.type: required key is missing")
        return None
    try:
        cls = load(group, kind)
    except PluginError as exc:
        problems.append(f"{where}.type: {exc}")
        return None
    try:
        parsed = cls.Config.parse(table)
    except TableError as exc:
        problems.extend(_describe(exc, where, origins))
        return None
    if problem := _timeout_problem(parsed):
        problems.append(f"{where}.timeout: {problem}{_origin(where + '.timeout', origins)}")
        return None
    return cls, parsed


def _timeout_problem(parsed: object) -> str | None:
    """Every plugin's ``timeout``, whatever type its table gives it: over 0, at most an hour."""
    timeout = getattr(parsed, "timeout", None)
    if not isinstance(timeout, float | int) or isinstance(timeout, bool):
        return None
    try:
        _TIMEOUT_RULE(timeout)
    except ValueError as exc:
        return str(exc)
    return None


def _check_names(
    outputs: Mapping[int, Output],
    notifiers: list[tuple[type[Notifier], NotifierConfig]],
    problems: list[str],
) -> None:
    names: dict[str, int] = {}
    paths: dict[Path, int] = {}
    for index, output in outputs.items():
        if output.name in names:
            first = names[output.name]
            problems.append(
                f"outputs.{index}.name: {output.name!r} is already used by outputs.{first}"
                " (set a unique name)"
            )
        names.setdefault(output.name, index)
        path = output.config.path
        resolved = path.absolute()
        if resolved in paths:
            problems.append(
                f"outputs.{index}.path: {path} is already used by outputs.{paths[resolved]}"
            )
        paths.setdefault(resolved, index)
    for index, (_cls, ncfg) in enumerate(notifiers):
        for wanted in ncfg.outputs or ():
            if wanted not in names:
                problems.append(f"notify.{index}.outputs: no output is named {wanted!r}")


def _key_provider(
    table: dict[str, Any], problems: list[str], origins: Mapping[str, str]
) -> tuple[type[KeyProvider], KeyProviderConfig] | None:
    """``[state]``: the key provider ``encryption`` names, its table checked by its Config."""
    table = dict(table)
    kind = table.get("encryption", "none")
    if kind == "none":
        if extra := sorted(set(table) - {"encryption"}):
            problems.append(f"state.{extra[0]}: only with an encryption other than 'none'")
        return None
    if not isinstance(kind, str) or not kind:
        problems.append("state.encryption: must be a provider name or 'none'")
        return None
    rest = {key: value for key, value in table.items() if key != "encryption"}
    found = _plugin_table(
        "keysetd.key_providers", {**rest, "type": kind}, "state", problems, origins
    )
    if found is None:
        for index, problem in enumerate(problems):  # the table's key is encryption, not type
            problems[index] = problem.replace("state.type:", "state.encryption:")
    return found


def _check_rotation(
    settings: Settings, source_class: type[Source] | None, problems: list[str]
) -> None:
    rotation = settings.rotation
    assert rotation is not None
    rotatable = source_class is not None and issubclass(source_class, RotatableSource)
    if not rotatable and settings.source.get("type") != "file":
        problems.append(
            "rotation: managed keys need a file source that keysetd owns, or a source that"
            " rotates its own keys (vault_transit)"
        )
    writable = source_class is None or issubclass(source_class, WritableSource)
    if writable and settings.source.get("format", "auto") not in ("auto", "jwks"):
        problems.append("rotation: a managed source is in the jwks format")
    if rotation.every <= settings.policy.activation_delay:
        problems.append("rotation.every: must be longer than policy.activation_delay")


def _tables(value: object) -> list[tuple[int, dict[str, Any]]]:
    """Each table of the array-of-tables at a key with its index; nothing for another shape.

    The index is the one in the file, so problems name the right table even when an
    entry before it is not a table (Settings has reported that already).
    """
    if not isinstance(value, list):
        return []
    return [(index, table) for index, table in enumerate(value) if isinstance(table, dict)]


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the file, override from ``KEYSETD_*``, validate every table; ConfigError lists all."""
    env = os.environ if environ is None else environ
    no_config = path is None and rgs_source_given(env)
    compat, compat_origins = compat_overrides(env, no_config=no_config)
    overrides, origins = environment_overrides(env)
    file_data = _read_toml(path) if path is not None else {}
    if no_config:
        file_data = no_config_base(env, compat.get("source", {}).get("type"))
        if file_data["outputs"][0]["path"] == env.get("RGS_JWT_KEYSET_FILE"):
            compat_origins["outputs.0.path"] = "RGS_JWT_KEYSET_FILE"
    raw_source = file_data.get("source")
    file_type = raw_source.get("type") if isinstance(raw_source, dict) else None
    compat_type = compat.get("source", {}).get("type")
    if compat_type is not None and file_type not in (None, compat_type):
        file_data = {**file_data, "source": {}}  # the convention names its own source type
    file_data = _merge(file_data, compat)
    origins = {**compat_origins, **origins}
    problems = _unknown_variables(overrides, origins)
    settings = _settings(file_data, env, problems, origins)
    data = {} if settings else _merge(file_data, overrides)
    # With a broken top level, still check the plugin tables so every problem shows at once.
    raw_source = settings.source if settings else data.get("source")
    raw_outputs = _tables(settings.outputs if settings else data.get("outputs"))
    raw_notify = _tables(settings.notify if settings else data.get("notify"))
    source = None
    if isinstance(raw_source, dict):
        source = _plugin_table("keysetd.sources", dict(raw_source), "source", problems, origins)
    outputs = {
        index: found
        for index, table in raw_outputs
        if (found := _plugin_table("keysetd.outputs", table, f"outputs.{index}", problems, origins))
    }
    notifiers = [
        found
        for index, table in raw_notify
        if (
            found := _plugin_table("keysetd.notifiers", table, f"notify.{index}", problems, origins)
        )
    ]
    built = {index: cls(cfg) for index, (cls, cfg) in outputs.items()}
    if settings is not None and not settings.outputs:
        problems.append("outputs: at least one [[outputs]] table is required")
    if not problems:
        _check_names(built, notifiers, problems)
    if not problems and settings is not None and source is not None:
        from keysetd.overlap import output_overlaps, source_files

        problems += output_overlaps(
            built, config_file=path, state_dir=settings.state_dir, source=source_files(source[1])
        )
    if not problems:
        for index, (ncls, ncfg) in enumerate(notifiers):
            problems += [
                f"notify.{index}: {p}" for p in ncls.check_outputs(ncfg, [*built.values()])
            ]
    if source is not None:
        for index, output in built.items():
            if source[0].public_only and output.private:
                problems.append(
                    f"outputs.{index}: a {output.config.type} output needs private keys, and a "
                    f"{source[1].type} source has public keys only"
                )
            problems += [f"outputs.{index}: {p}" for p in output.check_source(source[1])]
    if settings is not None and settings.rotation is not None:
        _check_rotation(settings, source[0] if source else None, problems)
    key_provider = _key_provider(settings.state if settings else {}, problems, origins)
    if source is not None and (problem := _external_keyset_problem(env, source[1].type)):
        problems.append(problem)
    if problems or settings is None or source is None:
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}", tuple(problems))
    config = Config(
        settings=settings,
        path=path,
        source_class=source[0],
        source=source[1],
        outputs=tuple(outputs.values()),
        notifiers=tuple(notifiers),
        key_provider=key_provider,
    )
    return config
