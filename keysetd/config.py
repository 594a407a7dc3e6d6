"""TOML + environment -> one frozen ``Config``; unknown keys rejected, every problem named.

Two stages, as in spiffe-helper: the schema (``Settings``, read from the TOML
file with ``KEYSETD_`` environment overrides through pydantic-settings) and the
runtime config, where each ``[source]``, ``[[outputs]]`` and ``[[notify]]`` table
is validated by the ``Config`` model of the plugin its ``type`` names.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from keysetd.errors import ConfigError, PluginError
from keysetd.plugin import (
    Notifier,
    NotifierConfig,
    Output,
    OutputConfig,
    Role,
    Source,
    SourceConfig,
    load,
)
from keysetd.units import Duration

__all__ = [
    "DEFAULT_MAX_STALENESS",
    "Config",
    "PolicySettings",
    "ServerSettings",
    "Settings",
    "config_path",
    "load_config",
]

DEFAULT_MAX_STALENESS = 86400.0
MAX_CONFIG_BYTES = 1 << 20


def _default_state_dir() -> Path:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=, first entry) or /var/lib/keysetd."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path("/var/lib/keysetd")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Table):
    listen: str = "127.0.0.1:9464"


class PolicySettings(_Table):
    activation_delay: Duration = 0.0
    retention: Duration = 0.0
    max_staleness: Duration | None = None
    hmac_alg: Literal["HS256", "HS384", "HS512"] = "HS256"

    @property
    def staleness_limit(self) -> float:
        return DEFAULT_MAX_STALENESS if self.max_staleness is None else self.max_staleness


class Settings(BaseSettings):
    """The schema of the config file; plugin tables stay raw until their plugin validates them."""

    model_config = SettingsConfigDict(
        env_prefix="KEYSETD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    state_dir: Path = Field(default_factory=_default_state_dir)
    strict: bool = False
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    server: ServerSettings | None = None
    source: dict[str, Any]
    policy: PolicySettings = PolicySettings()
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    notify: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file arrives as init kwargs).
        return env_settings, init_settings


@dataclass(frozen=True, slots=True)
class Config:
    """The runtime config: settings plus each plugin table validated by its plugin."""

    settings: Settings
    path: Path | None
    source_class: type[Source]
    source: SourceConfig
    outputs: tuple[tuple[type[Output], OutputConfig], ...]
    notifiers: tuple[tuple[type[Notifier], NotifierConfig], ...]

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

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
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc


def _describe(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in (*([prefix] if prefix else []), *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{loc or '(top level)'}: {message}")
    return problems


def _settings(data: dict[str, Any], problems: list[str]) -> Settings | None:
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems.extend(_describe(exc))
        return None


def _plugin_table(
    group: str, table: dict[str, Any], where: str, problems: list[str]
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
        return cls, cls.Config.model_validate(table)
    except ValidationError as exc:
        problems.extend(_describe(exc, where))
        return None


def _check_names(
    outputs: list[tuple[type[Output], OutputConfig]],
    notifiers: list[tuple[type[Notifier], NotifierConfig]],
    problems: list[str],
) -> None:
    names: dict[str, int] = {}
    paths: dict[Path, int] = {}
    for index, (cls, cfg) in enumerate(outputs):
        output = cls(cfg)
        if output.name in names:
            first = names[output.name]
            problems.append(
                f"outputs.{index}.name: {output.name!r} is already used by outputs.{first}"
                " (set a unique name)"
            )
        names.setdefault(output.name, index)
        resolved = cfg.path.absolute()
        if resolved in paths:
            problems.append(
                f"outputs.{index}.path: {cfg.path} is already used by outputs.{paths[resolved]}"
            )
        paths.setdefault(resolved, index)
    for index, (_cls, ncfg) in enumerate(notifiers):
        for wanted in ncfg.outputs or ():
            if wanted not in names:
                problems.append(f"notify.{index}.outputs: no output is named {wanted!r}")


def _tables(value: object) -> list[dict[str, Any]]:
    """The array-of-tables at a key, or nothing when it has another shape (already reported)."""
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


def load_config(path: Path | None) -> Config:
    """Read the file, override from ``KEYSETD_*``, validate every table; ConfigError lists all."""
    data = _read_toml(path) if path is not None else {}
    problems: list[str] = []
    settings = _settings(data, problems)
    # With a broken top level, still check the plugin tables so every problem shows at once.
    raw_source = settings.source if settings else data.get("source")
    raw_outputs = settings.outputs if settings else _tables(data.get("outputs"))
    raw_notify = settings.notify if settings else _tables(data.get("notify"))
    source = None
    if isinstance(raw_source, dict):
        source = _plugin_table("keysetd.sources", dict(raw_source), "source", problems)
    outputs = [
        found
        for index, table in enumerate(raw_outputs)
        if (found := _plugin_table("keysetd.outputs", table, f"outputs.{index}", problems))
    ]
    notifiers = [
        found
        for index, table in enumerate(raw_notify)
        if (found := _plugin_table("keysetd.notifiers", table, f"notify.{index}", problems))
    ]
    if settings is not None and not settings.outputs:
        problems.append("outputs: at least one [[outputs]] table is required")
    if not problems:
        _check_names(outputs, notifiers, problems)
    if problems or settings is None or source is None:
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}", tuple(problems))
    return Config(
        settings=settings,
        path=path,
        source_class=source[0],
        source=source[1],
        outputs=tuple(outputs),
        notifiers=tuple(notifiers),
    )


def signer_outputs(config: Config) -> tuple[str, ...]:
    """Names of the outputs that hold private material."""
    return tuple(o.name for o in config.build_outputs() if o.role is Role.SIGNER)
