"""Render every output, stage every changed file, then replace them, verifiers first.

A cycle's first ``commit_output`` stages the whole batch that ``render_outputs``
made: each output's directory checked (a pem directory created), each changed
file written to a fsynced temp file, each changed pem directory written as a new
version (``keysetd.atomicdir``). Any failure there (a missing directory, a full
disk, a foreign file at a pem name) discards what was staged and leaves every
output old. Only then are files renamed into place, one output at a time in
the pipeline's order (verifiers, their notifiers, then signers).

Outputs are written only into the directories keysetd saw when it first wrote
there: a directory (or any of its parents) swapped for a symlink to somewhere
else afterwards is refused with an OutputError naming the path, and each write
reaches its directory without following a symlink (``atomic.open_directory``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keysetd import atomicdir, failpoints
from keysetd.atomic import (
    commit_staged,
    discard_staged,
    open_directory,
    read_current,
    remove_file,
    stage_file,
)
from keysetd.errors import OutputError
from keysetd.extension import Output, Role
from keysetd.outputs.pem import PemOutput, is_pem_output_name
from keysetd.plan import Plan

__all__ = ["Rendered", "Written", "commit_output", "render_outputs"]


@dataclass(frozen=True, slots=True, repr=False)
class Rendered:
    """One output's files for a plan; ``batch`` is every output rendered with it."""

    output: Output
    files: dict[Path, bytes]
    batch: list[Rendered] = field(default_factory=list, compare=False)

    def __repr__(self) -> str:
        return f"Rendered(output={self.output.name!r}, files={sorted(map(str, self.files))!r})"


def render_outputs(outputs: Sequence[Output], plan: Plan) -> list[Rendered]:
    """Render all outputs before writing any, so a render error writes nothing.

    With no usable active key (its kid was revoked and the source offers no other),
    signer outputs render to nothing and are withdrawn: better no signing key than
    a revoked one. A kid an output cannot name a file after fails here too.
    """
    batch: list[Rendered] = []
    for output in outputs:
        if output.role is Role.VERIFIER:
            batch.append(Rendered(output, output.render(plan.verifier), batch))
        elif plan.signer.active_kid is None:
            batch.append(Rendered(output, {}, batch))
        else:
            batch.append(Rendered(output, output.render(plan.signer), batch))
    return batch


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
        #: Per pem directory: what its version files were checked against (atomicdir.Cache).
        self.versions: dict[Path, atomicdir.Cache] = {}
        #: The batch being committed: staged before its first output is replaced.
        self.round: _Round | None = None

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
        real = written.directory(output, directory)
        if not real.is_dir():
            reason = "Not a directory" if real.exists() else "No such file or directory"
            raise OutputError(
                output.name,
                str(directory),
                f"{reason}; keysetd writes into an existing directory (it creates only"
                " a pem output's own directory, never a parent)",
            )
        return real
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


@dataclass
class _Stage:
    """What one output has staged: temp files (path, real dir, temp name, bytes), a version."""

    temps: list[tuple[Path, Path, str, bytes]] = field(default_factory=list)
    version: tuple[Path, atomicdir.Staged] | None = None

    def discard(self) -> None:
        for _path, real, temp, _data in self.temps:
            with contextlib.suppress(OSError), _opened(real) as fd:
                discard_staged(fd, temp)
        self.temps.clear()
        if self.version is not None:
            real, staged = self.version
            with contextlib.suppress(OSError), _opened(real) as fd:
                atomicdir.discard(fd, staged)
            self.version = None


@dataclass
class _Round:
    """One batch on its way to disk: staged whole, then committed output by output."""

    batch: list[Rendered]
    staged: dict[int, _Stage] = field(default_factory=dict)

    def discard(self) -> None:
        for stage in self.staged.values():
            stage.discard()
        self.staged.clear()


@contextlib.contextmanager
def _opened(real: Path) -> Iterator[int]:
    fd = open_directory(real)
    try:
        yield fd
    finally:
        os.close(fd)


def _stage_files(rendered: Rendered, written: Written) -> _Stage:
    output = rendered.output
    stage = _Stage()
    checked: dict[Path, Path] = {}
    for path, data in rendered.files.items():
        real = checked.get(path.parent)
        if real is None:
            real = checked[path.parent] = _prepare_directory(output, path.parent, written)
        mode = output.file_mode(path)
        if written.current(path, data, mode):
            continue
        try:
            with _opened(real) as fd:
                temp = stage_file(fd, path.name, data, mode, label=output.name)
        except OSError as exc:
            raise _fail(output, path, exc) from exc
        stage.temps.append((path, real, temp, data))
    return stage


def _stage_directory(rendered: Rendered, written: Written) -> _Stage:
    output = rendered.output
    directory = output.config.path
    real = _prepare_directory(output, directory, written)
    files = {path.name: (data, output.file_mode(path)) for path, data in rendered.files.items()}
    cache = written.versions.setdefault(real, {})
    try:
        with _opened(real) as fd:
            atomicdir.prune(fd)
            if atomicdir.is_current(fd, files, cache):
                return _Stage()
            staged = atomicdir.stage(fd, files, label=output.name, legacy=is_pem_output_name)
    except atomicdir.Foreign as exc:
        raise OutputError(
            output.name,
            str(directory / exc.name),
            "a file keysetd did not write has this name; move it away (nothing was written)",
        ) from exc
    except OSError as exc:
        raise _fail(output, directory, exc) from exc
    return _Stage(version=(real, staged))


def _prepare(batch: list[Rendered], written: Written) -> _Round:
    """Stage every output of ``batch``; on any failure nothing staged stays behind."""
    round_ = _Round(batch)
    try:
        for rendered in batch:
            if isinstance(rendered.output, PemOutput):
                round_.staged[id(rendered)] = _stage_directory(rendered, written)
            else:
                round_.staged[id(rendered)] = _stage_files(rendered, written)
    except BaseException:
        round_.discard()
        raise
    return round_


def _commit(rendered: Rendered, stage: _Stage, written: Written) -> bool:
    output = rendered.output
    changed = False
    while stage.temps:
        path, _real, temp, data = stage.temps[0]
        real = written.directory(output, path.parent)  # pinned again: no swap since staging
        try:
            with _opened(real) as fd:
                commit_staged(fd, temp, path.name, label=output.name)
        except OSError as exc:
            raise _fail(output, path, exc) from exc
        stage.temps.pop(0)
        written.wrote(path, data)
        changed = True
    if stage.version is not None:
        _real, staged = stage.version
        real = written.directory(output, output.config.path)
        try:
            with _opened(real) as fd:
                atomicdir.switch(fd, staged, label=output.name, legacy=is_pem_output_name)
        except OSError as exc:
            raise _fail(output, output.config.path, exc) from exc
        stage.version = None
        changed = True
    if isinstance(output, PemOutput):
        return changed
    for path in output.stale_files(rendered.files):
        real = written.directory(output, path.parent)
        failpoints.hit("commit.before-remove", output.name)
        try:
            with _opened(real) as fd:
                changed |= remove_file(path, dir_fd=fd)
        except OSError as exc:
            raise _fail(output, path, exc) from exc
    return changed


def commit_output(rendered: Rendered, written: Written) -> bool:
    """Replace the changed files of one output; True when anything changed.

    The first call for a batch stages all of it (see the module docstring); a batch
    left half-committed by a failed cycle is discarded when the next one starts.
    """
    round_ = written.round
    if round_ is None or id(rendered) not in round_.staged:
        if round_ is not None:
            round_.discard()
            written.round = None
        round_ = _prepare(rendered.batch or [rendered], written)
        written.round = round_
    stage = round_.staged.pop(id(rendered))
    try:
        return _commit(rendered, stage, written)
    except BaseException:
        stage.discard()
        round_.discard()
        written.round = None
        raise
    finally:
        if not round_.staged and written.round is round_:
            written.round = None
