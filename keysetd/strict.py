"""Strict production mode (DESIGN section 7): the config rules production refuses.

``config_violations`` runs after the config is loaded (it also looks at the
filesystem: modes and owners), at start-up, on reload and in ``keysetd
check-config``; ``checked`` turns them into a ConfigError under ``strict = true``,
a warning otherwise. Keyset rules (``weak_secrets``) live with the other keyset
rules in ``keysetd.validate``. The config loader knows nothing of this module.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keysetd.config import Config
from keysetd.errors import ConfigError
from keysetd.extension import PluginConfig, WritableSource
from keysetd.fscheck import filesystem_violations
from keysetd.httpcheck import is_loopback

__all__ = ["checked", "config_violations"]

#: Config keys that would hold a credential or key material inline.
_INLINE_SECRET_KEYS = frozenset(
    {"token", "secret", "secret_id", "password", "keyset", "private_key"}
)
#: Config keys that switch TLS verification off when true, and when false.
_SKIP_VERIFY_KEYS = frozenset({"insecure", "tls_skip_verify", "skip_verify"})
_VERIFY_KEYS = frozenset({"verify", "tls_verify", "verify_tls"})
_URL_KEYS = frozenset({"url", "address", "endpoint_url"})
_PRIVATE_MODE_LIMIT = 0o640


def _table_rules(where: str, table: PluginConfig) -> Iterable[str]:
    values: dict[str, Any] = table.as_dict()
    for key, value in values.items():
        if key in _INLINE_SECRET_KEYS and value:
            yield f"{where}.{key}: secrets inline in the config; read them from a file"
        if (key in _SKIP_VERIFY_KEYS and value is True) or (key in _VERIFY_KEYS and value is False):
            yield f"{where}.{key}: TLS verification must stay on"
        if key in _URL_KEYS and isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme == "http" and not is_loopback(parts.hostname):
                yield f"{where}.{key}: http:// to {parts.hostname} (only loopback may skip TLS)"
        if key == "argv" and isinstance(value, list) and value and not os.path.isabs(value[0]):
            yield f"{where}.argv: {value[0]!r} is not an absolute path (PATH can be hijacked)"
        elif key == "argv" and isinstance(value, list):
            from keysetd.sources.command import shell_line_problems  # ["/bin/sh", "-c", LINE]

            yield from (f"{where}.argv: {problem}" for problem in shell_line_problems(value))


def _writable_by_others(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{stat.filemode(mode)}"
    return None


def _state_rules(config: Config) -> list[str]:
    """Private material in state_dir (signer outputs, managed keys) must be encrypted."""
    private = [o.name for o in config.build_outputs() if o.private]
    if config.settings.rotation is not None and issubclass(config.source_class, WritableSource):
        private.append("[rotation]")  # keys keysetd generates (a KMS rotating its own: none)
    if config.key_provider is None:
        if private:
            return [
                "state.encryption: not set, and state_dir keeps private keys for"
                f" {', '.join(private)} (set vault_transit, aws_kms or key_file)"
            ]
        return []
    found = list(_table_rules("state", config.key_provider[1]))
    key_file = getattr(config.key_provider[1], "key_file", None)
    if isinstance(key_file, Path):
        try:
            mode = key_file.stat().st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            found.append(
                f"state.key_file: {key_file} is readable or writable by group or others"
                f" ({stat.filemode(mode)})"
            )
    return found


def config_violations(config: Config) -> list[str]:
    """Every strict-mode rule the config breaks, each naming the key."""
    found: list[str] = []
    if config.source.type == "env":
        found.append("source.type: an env source puts key material in the environment")
    found += _table_rules("source", config.source)
    path = getattr(config.source, "path", None)
    if isinstance(path, Path) and (mode := _writable_by_others(path)):
        found.append(f"source.path: {path} is group- or world-writable ({mode})")
    for index, output in enumerate(config.build_outputs()):
        found += _table_rules(f"outputs.{index}", output.config)
        if output.private and output.mode & ~_PRIVATE_MODE_LIMIT & 0o777:
            found.append(
                f"outputs.{index}.mode: {output.mode:04o} is wider than 0640 for an output "
                "holding private keys"
            )
    for index, (_cls, table) in enumerate(config.notifiers):
        found += _table_rules(f"notify.{index}", table)
    if config.policy.max_staleness is None:
        found.append("policy.max_staleness: not set (readiness must turn false on stale keys)")
    found += _state_rules(config)
    fleet = config.settings.fleet
    for index, url in enumerate(fleet.endpoints if fleet is not None else ()):
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            # The fleet's history and acks decide which key signers use.
            found.append(f"fleet.endpoints.{index}: http:// to {parts.hostname} (use TLS)")
    return found + filesystem_violations(config)


def checked(config: Config) -> Config:
    """``config``, or a ConfigError listing every violation when ``strict = true``."""
    if config.settings.strict and (violations := config_violations(config)):
        where = f" in {config.path}" if config.path else ""
        raise ConfigError(f"strict mode refuses the configuration{where}", tuple(violations))
    return config
