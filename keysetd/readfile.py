"""Bounded reads of regular files, shared by the file source, pidfiles, the config and the CLI.

The file is opened non-blocking and checked with ``fstat`` before any read, so a
FIFO, device, socket or directory in a file's place is refused by name instead of
hanging keysetd on an open or a read that never returns.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["READ_LIMIT", "read_limited", "read_regular"]

#: One byte past the 16 MiB document limit: enough for validation to see "too big"
#: without keysetd ever reading a huge file whole.
READ_LIMIT = 16 * 1024 * 1024 + 1
_CHUNK = 1024 * 1024


def read_regular(path: Path | str, limit: int = READ_LIMIT) -> tuple[bytes, os.stat_result]:
    """At most ``limit`` bytes of the regular file at ``path`` (symlinks followed), and its stat.

    Raises OSError from the open/read, or ValueError naming the file type when
    it is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"not a regular file ({_kind(st.st_mode)})")
        parts: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(_CHUNK, limit - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts), st
    finally:
        os.close(fd)


def read_limited(path: Path | str, limit: int = READ_LIMIT) -> bytes:
    """``read_regular`` without the stat."""
    return read_regular(path, limit)[0]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "an unknown file type"
