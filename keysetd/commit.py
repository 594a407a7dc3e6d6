"""Render every output, then write only the files whose bytes changed, verifiers first.

Outputs are written only into the directories keysetd saw when it first wrote
there: a directory (or any of its parents) swapped for a symlink to somewhere
else afterwards is refused with an OutputError naming the path, and each write
reaches its directory without following a symlink (``atomic.open_directory``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keysetd import failpoints
from keysetd.atomic import open_directory, read_current, remove_file, write_atomic
from keysetd.errors import OutputError
from keysetd.plan import Plan
from keysetd.plugin import Output, Role

__all__ = ["Rendered", "Written", "commit_output", "render_outputs"]


@dataclass(frozen=True, slots=True, repr=False)
class Rendered:
    """One output's files for a plan."""

    output: Output
    files: dict[Path, bytes]

    def __repr__(self) -> str:
        return f"Rendered(output={self.output.name!r}, files={sorted(map(str, self.files))!r})"


def render_outputs(outputs: Sequence[Output], plan: Plan) -> list[Rendered]:
    """Render all outputs before writing any, so a render error writes nothing.

    With no usable active key (its kid was revoked and the source offers no other),
    signer outputs render to nothing and are withdrawn: better no signing key than
    a revoked one.
    """
    rendered = []
    for output in outputs:
        if output.role is Role.VERIFIER:
            rendered.append(Rendered(output, output.render(plan.verifier)))
        elif plan.signer.active_kid is None:
            rendered.append(Rendered(output, {}))
        else:
            rendered.append(Rendered(output, output.render(plan.signer)))
    return rendered


class Written:
    """What keysetd last wrote where, so an unchanged file costs one stat, not a read.

    A file counts as ours while its inode, size, mtime and mode are those we left;
    any edit, replacement, chmod or deletion behind our back shows in the stat.
    It also pins each output directory the first time it is used (at start-up):
    where it resolves to and whether it was a symlink then.
    """

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int, int, int], bytes]] = {}
        self._dirs: dict[Path, tuple[Path, bool]] = {}

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)

    def current(self, path: Path, data: bytes, mode: int) -> bool:
        """Whether ``path`` holds ``data`` with ``mode`` now."""
        known = self._files.get(path)
        signature = self._signature(path)
        if signature is None:
            return False
        if known is not None and known[0] == signature and known[1] == data:
            return True
        if read_current(path, len(data)) == data and signature[3] & 0o7777 == mode:
            self._files[path] = (signature, data)
            return True
        return False

    def wrote(self, path: Path, data: bytes) -> None:
        signature = self._signature(path)
        if signature is not None:
            self._files[path] = (signature, data)

    def directory(self, output: Output, directory: Path) -> Path:
        """Where ``directory`` resolves, refused when that moved since it was pinned.

        Refused: a directory that is a symlink now and was not, or that resolves
        elsewhere (a parent swapped for a symlink). A missing directory keeps its
        lexical path, so its absence shows up as ENOENT when it is opened.
        """
        absolute = Path(os.path.abspath(directory))
        real = Path(os.path.realpath(absolute))
        link = absolute.is_symlink()
        pinned = self._dirs.setdefault(absolute, (real, link))
        if real != pinned[0] or (link and not pinned[1]):
            raise OutputError(
                output.name,
                str(directory),
                f"the directory now resolves to {real} through a symlink (it was {pinned[0]}"
                f"{', a symlink' if pinned[1] else ''} when keysetd started); refusing to write"
                " through it",
            )
        return real


def _prepare_directory(output: Output, directory: Path, written: Written) -> Path:
    """Check (and for a pem dir, create) the directory files of ``output`` go to."""
    if directory != output.config.path or directory.is_dir():
        return written.directory(output, directory)
    parent = written.directory(output, directory.parent)
    try:
        fd = open_directory(parent)
        try:
            os.mkdir(directory.name, 0o755, dir_fd=fd)
            made = os.open(directory.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                # mkdir's mode is cut by the umask (UMask=0077 under systemd)
                os.fchmod(made, 0o755)
            finally:
                os.close(made)
        except FileExistsError:
            pass
        finally:
            os.close(fd)
    except OSError as exc:
        raise _fail(output, directory, exc) from exc
    return written.directory(output, directory)


def _fail(output: Output, path: Path, exc: OSError) -> OutputError:
    return OutputError(output.name, str(path), exc.strerror or str(exc))


def commit_output(rendered: Rendered, written: Written) -> bool:
    """Atomically write changed files and remove stale ones; True when anything changed."""
    output = rendered.output
    changed = False
    checked: dict[Path, Path] = {}
    for path, data in rendered.files.items():
        real = checked.get(path.parent)
        if real is None:
            real = checked[path.parent] = _prepare_directory(output, path.parent, written)
        mode = output.file_mode(path)
        try:
            if written.current(path, data, mode):
                continue
            fd = open_directory(real)
            try:
                write_atomic(path, data, mode, dir_fd=fd, label=output.name)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _fail(output, path, exc) from exc
        written.wrote(path, data)
        changed = True
    for path in output.stale_files(rendered.files):
        real = written.directory(output, path.parent)
        failpoints.hit("commit.before-remove", output.name)
        try:
            fd = open_directory(real)
            try:
                changed |= remove_file(path, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _fail(output, path, exc) from exc
    return changed
