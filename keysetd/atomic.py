"""The one place keysetd writes files: old or new bytes, never a partial file.

Sequence: a temp file ``.<name>.keysetd-<random>.tmp`` created exclusively
(O_EXCL|O_NOFOLLOW) in the target's directory, mode set, data written and
fsynced, ``os.replace`` onto the target, then the directory fsynced so the
rename survives a power cut. Every step goes through one descriptor of that
directory, so a directory swapped for a symlink halfway cannot split the
sequence across two places. A crash leaves at most a stray temp file, which
``clean_temp_files`` removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from keysetd import failpoints

__all__ = [
    "MAX_NAME",
    "TEMP_SUFFIX",
    "append_durable",
    "clean_temp_files",
    "commit_staged",
    "discard_staged",
    "open_directory",
    "read_current",
    "remove_file",
    "replace_if_unchanged",
    "replace_symlink",
    "stage_file",
    "write_atomic",
    "write_new",
]

TEMP_SUFFIX = ".keysetd.tmp"
_TEMP_MARK = ".keysetd-"
#: Fresh random temp names tried when one is taken (a squatter cannot guess 48 bits twice).
_TEMP_ATTEMPTS = 4
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: O_PATH walks a directory we may search but not list; absent off Linux.
_WALK_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _temp_name(name: str) -> str:
    return f".{name}{_TEMP_MARK}{secrets.token_hex(6)}{TEMP_SUFFIX}"


#: The longest file name (bytes) keysetd can replace: its temp name must fit NAME_MAX (255).
MAX_NAME = 255 - len(_temp_name(""))


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_directory(real: Path) -> int:
    """A descriptor of the absolute, symlink-free path ``real``, reached without following
    any symlink: a component swapped for one fails with ELOOP or ENOTDIR (OSError).

    Callers resolve the configured path once (``os.path.realpath``) and pass the result,
    so a directory that was a symlink by design still works.
    """
    if not real.is_absolute():
        raise ValueError(f"{real} is not an absolute path")
    fd = os.open("/", _WALK_FLAGS)
    try:
        parts = real.parts[1:]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = (_DIR_FLAGS | os.O_NOFOLLOW) if last else _WALK_FLAGS
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        if not parts:  # "/" itself: reopen readable for fsync
            child = os.open("/", _DIR_FLAGS)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stage(dir_fd: int, name: str, data: bytes, mode: int, *, durable: bool, label: str) -> str:
    """A fsynced temp file with ``data`` and ``mode`` in ``dir_fd``, ready to rename; its name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    failpoints.hit("write.before-temp", label)
    for attempt in range(_TEMP_ATTEMPTS):
        temp = _temp_name(name)
        try:
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            if attempt == _TEMP_ATTEMPTS - 1:
                raise
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        failpoints.hit("write.after-temp", label)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    os.close(fd)
    failpoints.hit("write.after-fsync", label)
    return temp


def _rename_into_place(dir_fd: int, temp: str, name: str) -> None:
    """``os.replace`` the temp entry onto ``name``; a failed rename removes the temp entry."""
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def _commit(dir_fd: int, temp: str, name: str, *, durable: bool, label: str) -> None:
    _rename_into_place(dir_fd, temp, name)
    failpoints.hit("write.after-rename", label)
    if durable:
        os.fsync(dir_fd)


@contextlib.contextmanager
def _directory(path: Path, dir_fd: int | None) -> Iterator[int]:
    """``dir_fd`` as given, or a descriptor of ``path``'s parent opened (and closed) here."""
    if dir_fd is not None:
        yield dir_fd
        return
    fd = os.open(path.parent, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    *,
    durable: bool = True,
    dir_fd: int | None = None,
    label: str | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically, with ``mode`` set before the rename.

    Raises OSError; the caller names the output. The target is replaced, never
    written through: a symlink at ``path`` is replaced by the regular file.
    ``durable=False`` skips the fsyncs: still old-or-new after a process crash,
    for files that are rewritten every cycle and may lag after a power cut (status).
    ``dir_fd``: a descriptor of ``path``'s directory (see ``open_directory``) to work
    in instead of looking the parent up by name. ``label`` names the file for
    failpoints (default: its name).
    """
    label = label or path.name
    with _directory(path, dir_fd) as fd:
        temp = _stage(fd, path.name, data, mode, durable=durable, label=label)
        _commit(fd, temp, path.name, durable=durable, label=label)


def stage_file(dir_fd: int, name: str, data: bytes, mode: int, *, label: str) -> str:
    """The first half of ``write_atomic``: a fsynced temp file next to ``name``; its name.

    For a cycle that stages every changed file before it replaces any, so a full
    disk fails the cycle with every output old. ``commit_staged`` or
    ``discard_staged`` must follow.
    """
    return _stage(dir_fd, name, data, mode, durable=True, label=label)


def commit_staged(dir_fd: int, temp: str, name: str, *, label: str) -> None:
    """The second half of ``write_atomic``: rename the staged temp file onto ``name``."""
    _commit(dir_fd, temp, name, durable=True, label=label)


def discard_staged(dir_fd: int, temp: str) -> None:
    """Remove a staged temp file that will not be committed (already gone is fine)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)


def write_new(dir_fd: int, name: str, data: bytes, mode: int, *, label: str) -> None:
    """Create ``name`` (which must not exist) with ``data`` and ``mode``, fsynced.

    For a fresh directory nobody reads until it is switched in whole
    (``keysetd.atomicdir``): no temp name is needed there. The caller fsyncs the
    directory once all its files are written.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    failpoints.hit("write.before-temp", label)
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        failpoints.hit("write.after-temp", label)
        os.fsync(fd)
    finally:
        os.close(fd)
    failpoints.hit("write.after-fsync", label)


def replace_symlink(dir_fd: int, name: str, target: str) -> None:
    """Point ``name`` at ``target`` in one rename (whatever ``name`` was); not fsynced here."""
    for attempt in range(_TEMP_ATTEMPTS):
        temp = _temp_name(name)
        try:
            os.symlink(target, temp, dir_fd=dir_fd)
            break
        except FileExistsError:
            if attempt == _TEMP_ATTEMPTS - 1:
                raise
    _rename_into_place(dir_fd, temp, name)


def replace_if_unchanged(path: Path, expected: bytes | None, data: bytes, mode: int) -> bool:
    """Write ``data`` only if ``path`` still holds ``expected`` (None: must not exist).

    A compare-and-swap for files keysetd co-owns with operators (a managed source):
    the content is compared before and after the new bytes are staged, so an edit
    made meanwhile is never overwritten. Returns False when the content moved.
    """
    limit = len(expected) if expected is not None else 0
    if read_current(path, limit) != expected:
        return False
    with _directory(path, None) as fd:
        temp = _stage(fd, path.name, data, mode, durable=True, label=path.name)
        if read_current(path, limit) != expected:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=fd)
            return False
        _commit(fd, temp, path.name, durable=True, label=path.name)
    return True


def append_durable(fd: int, line: bytes) -> None:
    """Append one whole line to an O_APPEND descriptor and fsync it (the audit log).

    A crash can tear only the last line; readers drop a line without its newline.
    """
    _write_all(fd, line)
    os.fsync(fd)


def remove_file(path: Path, *, dir_fd: int | None = None) -> bool:
    """Unlink ``path`` durably (a symlink is unlinked, not followed); False when already gone."""
    with _directory(path, dir_fd) as fd:
        try:
            os.unlink(path.name, dir_fd=fd)
        except FileNotFoundError:
            return False
        os.fsync(fd)
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
