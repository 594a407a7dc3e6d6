"""The ``file`` source: a keyset document on disk, watched for changes.

Symlinks are followed, so Kubernetes ConfigMap/Secret mounts (``..data``
swapped atomically) work. The file is opened non-blocking and must be a
regular file, so a FIFO or device in its place can never hang the daemon.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import ClassVar

from keysetd.atomic import replace_if_unchanged
from keysetd.errors import SourceError
from keysetd.model import Snapshot
from keysetd.plugin import SourceConfig, WritableSource

__all__ = ["READ_LIMIT", "FileSource", "FileSourceConfig", "read_limited"]

#: One byte past the 16 MiB document limit: enough for validation to see "too big"
#: without keysetd ever reading a huge file whole.
READ_LIMIT = 16 * 1024 * 1024 + 1
_CHUNK = 1024 * 1024


class FileSourceConfig(SourceConfig):
    path: Path


def read_limited(path: Path, limit: int = READ_LIMIT) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path`` (symlinks followed).

    Raises OSError from the open/read, or ValueError naming the file type when
    it is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"not a regular file ({_kind(mode)})")
        parts: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(_CHUNK, limit - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


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


class FileSource(WritableSource):
    """Reads ``path`` at every fetch; managed rotation writes it (mode 0600)."""

    Config: ClassVar[type[SourceConfig]] = FileSourceConfig
    #: The mode a managed source is written with: it holds private keys.
    WRITE_MODE: ClassVar[int] = 0o600

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self.config: FileSourceConfig = config

    def describe(self) -> str:
        return f"file:{self.config.path}"

    def fetch(self) -> Snapshot:
        path = self.config.path
        try:
            data = read_limited(path)
        except OSError as exc:
            raise SourceError(self.describe(), f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise SourceError(self.describe(), f"cannot read {path}: {exc}") from exc
        return Snapshot(data, origin=self.describe(), format=None)

    def watch_paths(self) -> tuple[Path, ...]:
        return (self.config.path,)

    def missing(self) -> bool:
        return not self.config.path.exists()

    def replace_if_unchanged(self, expected: bytes | None, data: bytes) -> bool:
        return replace_if_unchanged(self.config.path, expected, data, self.WRITE_MODE)
