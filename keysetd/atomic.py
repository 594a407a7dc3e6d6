"""The one place keysetd writes files: old or new bytes, never a partial file.

Sequence: a temp file ``.<name>.keysetd-<random>.tmp`` created exclusively in
the target's directory, mode set, data written and fsynced, ``os.replace`` onto
the target, then the directory fsynced so the rename survives a power cut. A
crash leaves at most a stray temp file, which ``clean_temp_files`` removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = [
    "TEMP_SUFFIX",
    "append_durable",
    "clean_temp_files",
    "read_current",
    "remove_file",
    "replace_if_unchanged",
    "write_atomic",
]

TEMP_SUFFIX = ".keysetd.tmp"
_TEMP_MARK = ".keysetd-"


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{_TEMP_MARK}{secrets.token_hex(6)}{TEMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(path: Path, data: bytes, mode: int, durable: bool = True) -> Path:
    """A fsynced temp file with ``data`` and ``mode`` next to ``path``, ready to rename."""
    temp = _temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    return temp


def _commit(temp: Path, path: Path, durable: bool = True) -> None:
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically, with ``mode`` set before the rename.

    Raises OSError; the caller names the output. The target is replaced, never
    written through: a symlink at ``path`` is replaced by the regular file.
    ``durable=False`` skips the fsyncs: still old-or-new after a process crash,
    for files that are rewritten every cycle and may lag after a power cut (status).
    """
    _commit(_stage(path, data, mode, durable), path, durable)


def replace_if_unchanged(path: Path, expected: bytes | None, data: bytes, mode: int) -> bool:
    """Write ``data`` only if ``path`` still holds ``expected`` (None: must not exist).

    A compare-and-swap for files keysetd co-owns with operators (a managed source):
    the content is compared before and after the new bytes are staged, so an edit
    made meanwhile is never overwritten. Returns False when the content moved.
    """
    limit = len(expected) if expected is not None else 0
    if read_current(path, limit) != expected:
        return False
    temp = _stage(path, data, mode)
    if read_current(path, limit) != expected:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return False
    _commit(temp, path)
    return True


def append_durable(fd: int, line: bytes) -> None:
    """Append one whole line to an O_APPEND descriptor and fsync it (the audit log).

    A crash can tear only the last line; readers drop a line without its newline.
    """
    view = memoryview(line)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def remove_file(path: Path) -> bool:
    """Unlink ``path`` durably; False when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def read_current(path: Path, limit: int) -> bytes | None:
    """The bytes now at ``path`` (up to ``limit``), or None when there is no regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            return handle.read(limit + 1)
    except OSError:
        return None


def clean_temp_files(directory: Path) -> list[Path]:
    """Remove temp files a crash left behind in ``directory``; returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if name.startswith(".") and _TEMP_MARK in name and name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
