"""Source calls in flight that SIGTERM cuts short: a command's process group, an HTTP exchange.

The daemon's stop handler calls :func:`cancel_all`. A signal handler must not take
a lock (``keysetd.wake`` says why), so the registry is a dict changed only by
single, atomic dict operations, and each registered cancel function is one
syscall that is safe in a handler (``killpg``, ``shutdown``). Once
:func:`cancel_all` has run, a call that registers afterwards is cancelled at
once: a fetch that starts after SIGTERM has nobody waiting for its answer.
Notifiers never register: a consumer is still told about outputs already written.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

__all__ = ["cancel_all", "cancellable", "reset", "stopping"]

_active: dict[int, Callable[[], None]] = {}
_ids = itertools.count()
_stopping = False


@contextlib.contextmanager
def cancellable(cancel: Callable[[], None]) -> Iterator[None]:
    """Register ``cancel`` for the block; it runs now if keysetd is already stopping."""
    token = next(_ids)
    _active[token] = cancel
    try:
        if _stopping:
            _run(cancel)
        yield
    finally:
        _active.pop(token, None)


def cancel_all() -> None:
    """Cancel every registered call, and every later one. Safe in a signal handler."""
    global _stopping  # noqa: PLW0603 (process-wide by design: SIGTERM stops the process)
    _stopping = True
    for cancel in list(_active.values()):
        _run(cancel)


def stopping() -> bool:
    """Whether :func:`cancel_all` has run (a call about to start should not)."""
    return _stopping


def reset() -> None:
    """Forget a past :func:`cancel_all` (tests that cancel in their own process)."""
    global _stopping  # noqa: PLW0603
    _stopping = False


def _run(cancel: Callable[[], None]) -> None:
    with contextlib.suppress(OSError):
        cancel()
