"""``keysetd state rewrap``: re-seal the encrypted state under the key provider's current key.

Takes the state_dir lock, so it runs while no daemon does (the daemon's own writes
already use the current key version; this re-seals what was written before).
Plaintext private files left from before encryption are sealed first. With
``--from-config OLD``, files sealed by the provider OLD's ``[state]`` names are opened
with it and sealed with the current one: a move between providers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_OK
from keysetd.errors import ConfigError

__all__ = ["cmd_state"]


def cmd_state(args: argparse.Namespace) -> int:
    from keysetd.state import StateStore

    config = config_from(args)
    sealer = config.build_sealer()
    if sealer is None:
        raise ConfigError("keysetd state rewrap needs [state] encryption in the config")
    previous = None
    if args.from_config:
        from keysetd.config import load_config

        previous = load_config(Path(args.from_config)).build_sealer()
        if previous is None:
            raise ConfigError(f"{args.from_config}: no [state] encryption to open the files with")
    store = StateStore(config.state_dir, sealer)
    store.lock()  # ConfigError naming the pid of a running daemon
    try:
        for name in store.secure(time.time()):
            print(f"{name}: plaintext -> sealed")
        for name, before, after in store.rewrap(previous):
            print(f"{name}: {before.key_id} v{before.version} -> {after.key_id} v{after.version}")
        if config.settings.rotation is not None:
            _rewrap_source(config, sealer, previous)
    finally:
        store.unlock()
        sealer.close()
        if previous is not None:
            previous.close()
    return EXIT_OK


def _rewrap_source(config: Any, sealer: Any, previous: Any) -> None:
    """The managed source, re-sealed (compare-and-swap: an edit meanwhile is kept)."""
    from keysetd.extension import WritableSource
    from keysetd.managed import writable_source
    from keysetd.sealing import is_sealed, open_with

    source = writable_source(config)  # the bytes on disk, sealed or not
    if not isinstance(source, WritableSource):  # a KMS rotating its own keys: nothing sealed
        source.close()
        return
    path = Path(getattr(source.config, "path", ""))
    try:
        raw = source.fetch().data
        openers = [sealer] if previous is None else [previous, sealer]
        plain = open_with(path, raw, openers)[1] if is_sealed(raw) else raw
        if source.replace_if_unchanged(raw, sealer.seal(path, plain)):
            print(f"{source.describe()}: re-sealed")
    finally:
        source.close()
