"""Outputs that would overwrite keysetd's own inputs or each other, refused at config load.

An output written over the source file destroys its private keys; one inside
``state_dir`` rewrites the history or the audit log; a pem directory holding
another output's file mixes two outputs' files. Paths are compared after
resolving symlinks, ``..`` and relative paths, so an alias is no way around it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from keysetd.extension import Output, SourceConfig

__all__ = ["output_overlaps", "source_files"]


def _resolve(path: Path) -> Path:
    """The absolute path with every existing symlink resolved (a missing tail stays lexical)."""
    return Path(os.path.realpath(path))


def _overlap(a: Path, b: Path) -> str | None:
    """How ``a`` relates to ``b``: "is", "lies inside", "contains", or None when apart."""
    if a == b:
        return "is"
    if a.is_relative_to(b):
        return "lies inside"
    if b.is_relative_to(a):
        return "contains"
    return None


def source_files(source: SourceConfig) -> tuple[Path, ...]:
    """Every file the source reads: each ``Path`` field of its table (the keyset, a CA, a token)."""
    found: list[Path] = []
    for name in type(source).model_fields:
        value = getattr(source, name, None)
        if isinstance(value, Path):
            found.append(value)
    return tuple(found)


def _shown(given: Path, resolved: Path) -> str:
    """The path as configured, with what it resolves to when that differs."""
    return str(given) if given == resolved else f"{given} (-> {resolved})"


def output_overlaps(
    outputs: Mapping[int, Output],
    *,
    config_file: Path | None,
    state_dir: Path,
    source: Iterable[Path],
) -> list[str]:
    """One problem per output path that equals, lies inside or contains a protected path.

    Protected: the source's files, the config file, ``state_dir`` and every other
    output. Each problem names the output by index and name and both paths.
    """
    protected: list[tuple[str, Path, Path]] = [
        (f"the source file {_shown(p, _resolve(p))}", p, _resolve(p)) for p in source
    ]
    if config_file is not None:
        resolved = _resolve(config_file)
        protected.append(
            (f"the config file {_shown(config_file, resolved)}", config_file, resolved)
        )
    state = _resolve(state_dir)
    protected.append((f"state_dir {_shown(state_dir, state)}", state_dir, state))
    problems: list[str] = []
    seen: list[tuple[int, Output, Path]] = []
    for index, output in outputs.items():
        given = output.config.path
        path = _resolve(given)
        where = f"outputs.{index}.path: output {output.name!r} ({_shown(given, path)})"
        for what, _given, other in protected:
            if (how := _overlap(path, other)) is not None:
                problems.append(f"{where} {how} {what}; refusing to overwrite it")
        for first_index, first, first_path in seen:
            if (how := _overlap(path, first_path)) is not None:
                shown = _shown(first.config.path, first_path)
                problems.append(
                    f"{where} {how} outputs.{first_index} {first.name!r} ({shown});"
                    " each output needs a path of its own"
                )
        seen.append((index, output, path))
    return problems
