"""A private copy of nats-server's config in which one include holds candidate bytes.

``nats-server -t`` checks files, and keysetd must check an include *before* it
writes it (only the commit stage writes outputs). So :func:`staged` builds, in
a private directory (``mkdtemp``, mode 0700), the candidate include and a copy
of each config file on the include chain from the main config down to it. In
each copy the ``include`` that leads to the real include points at the next
copy (or the candidate), and every other ``include`` points back at the real
file. The real files are only read.

nats-server resolves an include with ``filepath.Join(<dir of the including
file>, value)``: relative to the including file's directory, and an absolute
value is joined too. So rewritten includes are relative to the private
directory (``../../etc/nats/tls.conf``), which Join cleans back to the real
path. An include reached through other includes (an indirect include) is
followed, up to :data:`DEPTH` files deep; a main config that does not reach
the include at all is an error (ValueError): there is nothing meaningful to
check, and an unchecked include is never published.

``include`` directives are found where nats-server's lexer takes them: the
keyword (any case) as a key at the start of a line or after ``{``, ``;`` or
``,``, then a quoted or bare path. Comments are not matched. Rewrites stay on
their line, so the line numbers in nats-server's messages are the real files'.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keysetd.atomic import write_atomic

__all__ = ["DEPTH", "staged"]

#: How many config files deep an include chain is followed.
DEPTH = 8
_LIMIT = 4 << 20
_INCLUDE = re.compile(
    r"""(?P<lead>(?:^|[{;,])[ \t]*)include[ \t]+"""
    r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<raw>[^\s;}'"]+))""",
    re.IGNORECASE | re.MULTILINE,
)


def _lexical(base: Path, value: str) -> Path:
    """Where nats-server looks for ``include value`` in a file in ``base`` (Go's Join)."""
    return Path(os.path.normpath(f"{base}/{value}"))


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _quote(path: str) -> str:
    if '"' not in path:
        return f'"{path}"'
    if "'" not in path:
        return f"'{path}'"
    raise ValueError(f"cannot write an include of {path!r}: it holds both kinds of quote")


class _Stager:
    def __init__(self, workdir: Path, include: Path, candidate: Path) -> None:
        self.workdir = workdir
        self.include = include
        self.candidate = candidate
        self._names = itertools.count()

    def copy(self, path: Path, text: str, chain: tuple[Path, ...]) -> Path | None:
        """The staged copy of ``path`` (read as ``text``) if it leads to the include, else None."""
        found = False

        def swap(match: re.Match[str]) -> str:
            nonlocal found
            value = next(v for v in match.group("dq", "sq", "raw") if v is not None)
            real = _lexical(path.parent, value)
            target: Path = real
            if _same(real, self.include):
                target = self.candidate
            elif len(chain) < DEPTH and not any(_same(real, p) for p in chain):
                target = self._nested(real, chain) or real
            found |= target != real
            relative = os.path.relpath(target, self.workdir)
            return f"{match.group('lead')}include {_quote(relative)}"

        staged = _INCLUDE.sub(swap, text)
        if not found:
            return None
        copy = self.workdir / f"{next(self._names)}-{path.name}"
        write_atomic(copy, staged.encode("utf-8", errors="surrogateescape"), 0o600, durable=False)
        return copy

    def _nested(self, path: Path, chain: tuple[Path, ...]) -> Path | None:
        """An included file; one keysetd cannot read is left to nats-server to report."""
        try:
            text = _read(path)
        except OSError:
            return None
        return self.copy(path, text, (*chain, path))


def _read(path: Path) -> str:
    """A config file's text; OSError when unreadable (symlinks followed, as nats-server does)."""
    with path.open("rb") as handle:
        data = handle.read(_LIMIT + 1)
    if len(data) > _LIMIT:
        raise OSError(errno.EFBIG, f"larger than {_LIMIT >> 20} MiB", str(path))
    return data.decode("utf-8", errors="surrogateescape")


@contextmanager
def staged(config: Path, include: Path, candidate: bytes) -> Iterator[Path]:
    """The main config to pass to ``nats-server -t -c``; the directory goes on exit.

    Raises ValueError when ``config`` does not include ``include`` (directly or
    through its includes), OSError when ``config`` cannot be read or the private
    directory cannot be written.
    """
    main = Path(os.path.abspath(config))
    with tempfile.TemporaryDirectory(prefix="keysetd-nats-") as name:
        workdir = Path(name)
        staged_include = workdir / "candidate.conf"
        write_atomic(staged_include, candidate, 0o600, durable=False)
        stager = _Stager(workdir, Path(os.path.abspath(include)), staged_include)
        copy = stager.copy(main, _read(main), (main,))
        if copy is None:
            raise ValueError(
                f"{config} does not include {include} (directly or through up to "
                f"{DEPTH} levels of includes), so the new include cannot be checked"
            )
        yield copy
