"""The entry-point registry of sources, outputs and notifiers: list them, load one by name.

A plugin is a class registered under ``keysetd.sources``, ``keysetd.outputs`` or
``keysetd.notifiers``; the built-ins register through the same groups. Only the
plugins a config names are imported, each checked when it loads (its base class and
its ``Config`` table), and a name registered twice is an error, not "last one wins"
(as pluggy does it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from keysetd.errors import PluginError
from keysetd.extension import Notifier, Output, PluginConfig, Source
from keysetd.schema import declared_fields

__all__ = ["GROUPS", "PluginInfo", "available", "load"]


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
