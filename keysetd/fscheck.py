"""Strict-mode filesystem rules: directories another user could use to swap keysetd's files.

A world-writable output directory lets any local user plant a symlink or a file
where keysetd writes (or remove what it wrote); a state_dir owned by someone
else, or writable by group or others, lets them rewrite the last-known-good,
the key history or the audit log. ``strict.config_violations`` adds these
findings; like the other strict rules they are refusals in strict mode and
warnings otherwise. Checked at start-up and on reload: keysetd does not chmod
directories it did not create.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from keysetd.config import Config

__all__ = ["filesystem_violations"]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _output_directories(path: Path) -> list[Path]:
    """The directories an output writes into: its parent, and itself when it is one (pem)."""
    found = [path.parent]
    if path.is_dir():
        found.append(path)
    return found


def filesystem_violations(config: Config) -> list[str]:
    """Every filesystem rule the config's directories break, each naming the key and path."""
    found: list[str] = []
    for index, output in enumerate(config.outputs):
        table = output[1]
        path = Path(os.path.abspath(table.path))
        for directory in _output_directories(path):
            st = _stat(directory)
            if st is not None and st.st_mode & stat.S_IWOTH:
                found.append(
                    f"outputs.{index}.path: {directory} is world-writable"
                    f" ({stat.filemode(st.st_mode)}); any local user could swap the files"
                    " keysetd writes there"
                )
    state_dir = Path(os.path.abspath(config.state_dir))
    st = _stat(state_dir)
    if st is not None:
        uid = os.geteuid()
        if st.st_uid != uid:
            found.append(
                f"state_dir: {state_dir} is owned by uid {st.st_uid}, not by keysetd's uid {uid}"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            found.append(
                f"state_dir: {state_dir} is group- or world-writable"
                f" ({stat.filemode(st.st_mode)}); it holds the key history and the audit log"
            )
    return found
