"""The pid a notifier may signal: from ``pid`` or a pidfile read at that moment, never guessed."""

from __future__ import annotations

import os
from pathlib import Path

from keysetd.sources.file import read_limited

__all__ = ["PIDFILE_LIMIT", "check_process_name", "target_pid"]

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


def check_process_name(pid: int, wanted: str) -> None:
    """That ``/proc/<pid>/comm`` reads ``wanted``, so a recycled pid is never signalled.

    ProcessLookupError when the process is gone; ValueError saying why not otherwise.
    """
    try:
        comm = read_limited(Path(f"/proc/{pid}/comm"), 256)
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot check the name of process {pid}: {exc}") from exc
    name = comm.decode(errors="replace").strip()
    if name != wanted:
        raise ValueError(f"process {pid} is {name!r}, not {wanted!r}; not signalled")
