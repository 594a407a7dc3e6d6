"""Render every output, then write only the files whose bytes changed, verifiers first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from keysetd.atomic import read_current, remove_file, write_atomic
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


def _ensure_directory(output: Output, directory: Path) -> None:
    """Create an output's own directory (a pem dir); a missing parent stays an error."""
    if directory != output.config.path or directory.is_dir():
        return
    try:
        directory.mkdir()
        directory.chmod(0o755)  # mkdir's mode is cut by the umask (UMask=0077 under systemd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OutputError(output.name, str(directory), exc.strerror or str(exc)) from exc


class Written:
    """What keysetd last wrote where, so an unchanged file costs one stat, not a read.

    A file counts as ours while its inode, size, mtime and mode are those we left;
    any edit, replacement, chmod or deletion behind our back shows in the stat.
    """

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple[int, int, int, int], bytes]] = {}

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


def commit_output(rendered: Rendered, written: Written | None = None) -> bool:
    """Atomically write changed files and remove stale ones; True when anything changed."""
    output = rendered.output
    written = written or Written()
    changed = False
    for path, data in rendered.files.items():
        _ensure_directory(output, path.parent)
        mode = output.file_mode(path)
        try:
            if written.current(path, data, mode):
                continue
            write_atomic(path, data, mode)
        except OSError as exc:
            raise OutputError(output.name, str(path), exc.strerror or str(exc)) from exc
        written.wrote(path, data)
        changed = True
    for path in output.stale_files(rendered.files):
        try:
            changed |= remove_file(path)
        except OSError as exc:
            raise OutputError(output.name, str(path), exc.strerror or str(exc)) from exc
    return changed
