"""The entry-point registry of sources, outputs and notifiers: list them, load one by name.

A plugin is a class registered under ``keysetd.sources``, ``keysetd.outputs``,
``keysetd.notifiers`` or ``keysetd.key_providers`` (``[state] encryption``); the
built-ins register through the same groups. Only the plugins a config names are
imported, each checked when it loads (its base class and its ``Config`` table), and
a name two distributions register is an error, not "last one wins" (as pluggy does it).

A built-in name resolves from ``BUILTINS`` without scanning the installed
distributions: importlib.metadata costs ~28 ms and ~3 MB at start, a third of what
keysetd spends before its first commit. So a built-in cannot be replaced: a
distribution that registers ``file`` again is ignored, and ``keysetd plugins``
says so. ``tests/test_plugins.py`` pins ``BUILTINS`` to pyproject.toml.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from keysetd.errors import PluginError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["BUILTINS", "GROUPS", "PluginInfo", "available", "load"]


#: Each group and the base class (in ``keysetd.extension``) its plugins derive from, by name:
#: the extension points import pydantic, which ``keysetd plugins`` (offline) does without.
GROUPS: dict[str, str] = {
    "keysetd.sources": "Source",
    "keysetd.outputs": "Output",
    "keysetd.notifiers": "Notifier",
    "keysetd.key_providers": "KeyProvider",
}


#: The built-in plugins by group and name, as pyproject.toml registers them.
BUILTINS: dict[str, dict[str, str]] = {
    "keysetd.sources": {
        "file": "keysetd.sources.file:FileSource",
        "command": "keysetd.sources.command:CommandSource",
        "env": "keysetd.sources.env:EnvSource",
        "jwks_url": "keysetd.sources.jwks_url:JwksUrlSource",
    },
    "keysetd.outputs": {
        "jwks": "keysetd.outputs.builtin:JwksOutput",
        "keyset": "keysetd.outputs.builtin:KeysetOutput",
        "rgs": "keysetd.outputs.builtin:RgsOutput",
        "env": "keysetd.outputs.builtin:EnvOutput",
        "pem": "keysetd.outputs.pem:PemOutput",
        "nats": "keysetd.outputs.nats:NatsOutput",
    },
    "keysetd.notifiers": {
        "signal": "keysetd.notifiers.signal:SignalNotifier",
        "command": "keysetd.notifiers.command:CommandNotifier",
        "http": "keysetd.notifiers.http:HttpNotifier",
        "nats": "keysetd.notifiers.nats:NatsNotifier",
        "systemd": "keysetd.notifiers.systemd:SystemdNotifier",
    },
    "keysetd.key_providers": {
        "key_file": "keysetd.keyfile:KeyFileProvider",
    },
}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    group: str
    name: str
    target: str
    distribution: str


def _entry_points(group: str) -> list[EntryPoint]:
    from importlib.metadata import entry_points  # only when a non-built-in is asked for

    return list(entry_points(group=group))


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"


def _where(group: str, ep: EntryPoint) -> str:
    builtin = BUILTINS[group].get(ep.name)
    if builtin is not None and ep.value != builtin:
        return f"{_distribution(ep)}; ignored: the built-in {ep.name!r} wins"
    return _distribution(ep)


def available() -> list[PluginInfo]:
    """Every registered plugin with where it comes from, without importing any."""
    return [
        PluginInfo(group, ep.name, ep.value, _where(group, ep))
        for group in GROUPS
        for ep in sorted(_entry_points(group), key=lambda e: e.name)
    ]


def _target(group: str, name: str) -> tuple[str, Callable[[], Any]]:
    """(``module:attribute``, a loader) of the plugin ``name``: a built-in, or one entry point."""
    builtin = BUILTINS[group].get(name)
    if builtin is not None:
        module, _, attribute = builtin.partition(":")
        return builtin, lambda: getattr(importlib.import_module(module), attribute)
    matches = [ep for ep in _entry_points(group) if ep.name == name]
    if not matches:
        names = {*BUILTINS[group], *(ep.name for ep in _entry_points(group))}
        raise PluginError(group, name, f"no such plugin (known: {', '.join(sorted(names))})")
    targets = {ep.value for ep in matches}
    if len(targets) > 1:
        where = ", ".join(f"{ep.value} from {_distribution(ep)}" for ep in matches)
        raise PluginError(group, name, f"registered more than once: {where}")
    return matches[0].value, matches[0].load


@cache
def load(group: str, name: str) -> type[Any]:
    """Import the plugin class registered as ``name`` in ``group`` and check its shape."""
    if group not in GROUPS:
        raise PluginError(group, name, "unknown plugin group")
    target, loader = _target(group, name)
    try:
        cls = loader()
    except Exception as exc:  # any import failure of third-party code
        raise PluginError(group, name, f"cannot import {target}: {exc}") from exc
    from keysetd import extension

    base: type[Any] = getattr(extension, GROUPS[group])
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(group, name, f"{target} is not a {base.__name__} subclass")
    config_model = getattr(cls, "Config", None)
    if not (isinstance(config_model, type) and issubclass(config_model, extension.PluginConfig)):
        raise PluginError(group, name, "its Config is not a keysetd PluginConfig table")
    try:
        config_model.model_rebuild()  # its schema: a type pydantic cannot check shows here
    except Exception as exc:  # PydanticSchemaGenerationError, an unresolvable annotation
        raise PluginError(group, name, f"its Config is broken: {exc}") from None
    return cls
