"""The daemon's wake-up flag: a self-pipe that signal handlers may set, because it takes no lock.

``threading.Event.set`` takes the Event's lock. A Python signal handler runs on
the main thread between two bytecodes, also while that same thread holds the lock
inside ``Event.wait`` or ``Event.clear``; ``set`` then waits for itself forever
(a SIGTERM that never stops the daemon), or a burst of signals nests handlers
until the RecursionError. Writing one byte to a non-blocking pipe does neither.
"""

from __future__ import annotations

import contextlib
import math
import os
import select

__all__ = ["Wake"]


#: The largest timeout poll() takes, in milliseconds (a C int).
_POLL_MAX_MS = 2**31 - 1


class Wake:
    """Set from any thread or signal handler, waited on by one thread; set until cleared.

    Lives as long as the process: closing it while a watcher thread may still
    call ``set`` would let that byte land in whatever file reuses the number.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe is set already
            os.write(self._write, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def is_set(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        """True once set, False after ``timeout`` seconds (None: no limit).

        poll() takes a C int of milliseconds: a longer timeout is cut to ~24 days (the
        caller loops on its own deadline), never an OverflowError.
        """
        poller = select.poll()  # one per call: a poll object refuses two threads at once
        poller.register(self._read, select.POLLIN)
        if timeout is None or not math.isfinite(timeout):
            return bool(poller.poll(None if timeout is None or timeout > 0 else 0))
        return bool(poller.poll(min(_POLL_MAX_MS, max(0, math.ceil(timeout * 1000)))))
