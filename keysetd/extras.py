"""The ``daemon`` extra: which modules it brings, and which commands need it installed.

``pip install keysetd`` is the verifier library and the offline commands; the
daemon's dependencies come with ``keysetd[daemon]``. A command that needs them
checks up front (``find_spec``: nothing is imported), so a missing one is a clear
usage error before any work, never a watcher thread that dies later or an
ImportError halfway through a cycle.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["DAEMON_MODULES", "OFFLINE_COMMANDS", "missing_daemon_module"]

#: Top-level modules of the ``daemon`` extra (pyproject.toml; a test pins the two).
DAEMON_MODULES = frozenset(
    {"watchfiles", "inotify_simple", "tenacity", "nkeys", "prometheus_client", "pydantic_settings"}
)
#: Commands that read neither a config nor a state_dir: the verifier install runs them.
OFFLINE_COMMANDS = frozenset({"validate", "verify", "keygen", "plugins"})
#: Modules the extra installs only on some platforms.
_PLATFORM_ONLY = {"inotify_simple": "linux"}


def missing_daemon_module(command: str) -> str | None:
    """The first module of the daemon extra that ``command`` needs and cannot find."""
    if command in OFFLINE_COMMANDS:
        return None
    for name in sorted(DAEMON_MODULES):
        if _PLATFORM_ONLY.get(name, sys.platform) != sys.platform:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return name
    return None
