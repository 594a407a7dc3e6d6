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

__all__ = ["Rendered", "commit_output", "render_outputs"]


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
        directory.mkdir(mode=0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OutputError(output.name, str(directory), exc.strerror or str(exc)) from exc


def commit_output(rendered: Rendered) -> bool:
    """Atomically write changed files and remove stale ones; True when anything changed."""
    output = rendered.output
    changed = False
    for path, data in rendered.files.items():
        _ensure_directory(output, path.parent)
        mode = output.file_mode(path)
        try:
            current = read_current(path, len(data))
            if current == data and (os.stat(path).st_mode & 0o777) == mode:
                continue
            write_atomic(path, data, mode)
        except OSError as exc:
            raise OutputError(output.name, str(path), exc.strerror or str(exc)) from exc
        changed = True
    for path in output.stale_files(rendered.files):
        try:
            changed |= remove_file(path)
        except OSError as exc:
            raise OutputError(output.name, str(path), exc.strerror or str(exc)) from exc
    return changed
