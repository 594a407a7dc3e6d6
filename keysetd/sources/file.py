"""The ``file`` source: a keyset document on disk, watched for changes.

Symlinks are followed, so Kubernetes ConfigMap/Secret mounts (``..data``
swapped atomically) work. The file is read by ``keysetd.readfile``: it must be
a regular file, so a FIFO or device in its place can never hang the daemon.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import ClassVar

from keysetd.atomic import replace_if_unchanged
from keysetd.errors import SourceError
from keysetd.extension import SourceConfig, WritableSource
from keysetd.model import Snapshot
from keysetd.readfile import READ_LIMIT, read_limited

__all__ = ["READ_LIMIT", "FileSource", "FileSourceConfig", "read_limited"]


class FileSourceConfig(SourceConfig):
    path: Path


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
        path = self.config.path
        if path.is_symlink():  # the write would replace the link, and a compare never matches
            raise OSError(
                errno.ELOOP, "a managed source must be a file keysetd owns, not a symlink"
            )
        return replace_if_unchanged(path, expected, data, self.WRITE_MODE)
