"""The pid a notifier may signal: from ``pid`` or a pidfile read at that moment, never guessed."""

from __future__ import annotations

import os
from pathlib import Path

from keysetd.sources.file import read_limited

__all__ = ["PIDFILE_LIMIT", "target_pid"]

PIDFILE_LIMIT = 64


def target_pid(pid: int | None, pidfile: Path | None) -> int:
    """The configured pid, or the one in ``pidfile`` now; ValueError saying why not."""
    if pidfile is not None:
        try:
            raw = read_limited(pidfile, PIDFILE_LIMIT + 1)
        except OSError as exc:
            raise ValueError(f"pidfile {pidfile}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ValueError(f"pidfile {pidfile}: cannot read: {exc}") from exc
        text = raw.decode("ascii", errors="replace").strip()
        if not text:
            raise ValueError(f"pidfile {pidfile} is empty")
        if len(raw) > PIDFILE_LIMIT or not text.isdigit():
            raise ValueError(f"pidfile {pidfile} does not hold a pid")
        pid = int(text)
    if pid is None or pid <= 0:
        raise ValueError(f"refusing to signal pid {pid}")
    if pid == os.getpid():
        raise ValueError(f"refusing to signal pid {pid}: that is keysetd itself")
    return pid
