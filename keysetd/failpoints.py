"""Named crash points for the reliability tests: kill -9 at an exact step of a cycle.

``_KEYSETD_FAILPOINT=<name>[@<label>][:<n>]`` makes the n-th (default: first)
matching ``hit`` send SIGKILL to this process. A point without ``@<label>``
matches every label (``write.after-fsync`` is any file's, ``write.after-fsync@jwks``
only the jwks output's). The variable starts with ``_`` because the config loader
reads every ``KEYSETD_*`` variable as a config key. It is read once, at import;
unset (production), ``hit`` is one comparison.

The points, in the order a cycle reaches them (see tests/RELIABILITY.md):

    write.before-temp@L  write.after-temp@L  write.after-fsync@L  write.after-rename@L
        inside atomic.write_atomic; L is the output name (jwks, pem, ...) or the
        state file name (history.json, last-known-good.json, status.json, ...)
    dir.after-stage@L    dir.after-switch@L    dir.before-prune@L
        a pem directory (keysetd.atomicdir): its new version and links written, then
        ``..data`` switched, then the links of dropped names removed (the write.*@L
        points before these are its files, written into the new version without a rename)
    commit.before-remove@L      before a stale file of output L is unlinked
    state.after-history-save    cycle.after-verifier-phase    cycle.before-signer-phase
    state.after-signer-save     state.after-lkg-save          state.after-audit-append
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_VAR", "hit", "parse"]

ENV_VAR = "_KEYSETD_FAILPOINT"


def parse(value: str | None) -> tuple[str, str | None, int] | None:
    """``name[@label][:n]`` as (name, label or None, n); None when unset or malformed."""
    if not value:
        return None
    spec, _, count = value.partition(":")
    name, _, label = spec.partition("@")
    try:
        nth = int(count) if count else 1
    except ValueError:
        return None
    if not name or nth < 1:
        return None
    return name, label or None, nth


_TARGET = parse(os.environ.get(ENV_VAR))
_hits = 0


def hit(name: str, label: str | None = None) -> None:
    """Reached point ``name`` (for ``label``): die here if this is the armed hit."""
    global _hits  # noqa: PLW0603 (one counter per process, by design)
    if _TARGET is None:
        return
    want_name, want_label, nth = _TARGET
    if name != want_name or (want_label is not None and label != want_label):
        return
    _hits += 1
    if _hits == nth:
        os.kill(os.getpid(), signal.SIGKILL)
