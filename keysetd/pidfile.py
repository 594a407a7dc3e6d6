"""The pid a notifier may signal: from ``pid`` or a pidfile read at that moment, never guessed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from keysetd.readfile import read_limited
from keysetd.tables import After

__all__ = ["PIDFILE_LIMIT", "Pid", "check_pid", "check_process_name", "pid_max", "target_pid"]

PIDFILE_LIMIT = 64
#: The kernel's default ceiling on 64-bit Linux, used where /proc cannot tell.
PID_MAX_FALLBACK = 1 << 22


def pid_max() -> int:
    """The largest pid the kernel hands out (``/proc/sys/kernel/pid_max``)."""
    try:
        value = int(read_limited(Path("/proc/sys/kernel/pid_max"), 32).strip())
    except (OSError, ValueError):
        return PID_MAX_FALLBACK
    return value if 1 < value <= PID_MAX_FALLBACK else PID_MAX_FALLBACK


def check_pid(value: int) -> int:
    """A config rule: a pid the kernel could have given (a larger one overflows ``kill``)."""
    ceiling = pid_max()
    if not 1 <= value <= ceiling:
        raise ValueError(f"must be a pid from 1 to {ceiling} (the kernel's pid_max)")
    return value


#: A ``pid =`` config value.
Pid = Annotated[int, After(check_pid)]


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
        if pid > pid_max():
            raise ValueError(
                f"pidfile {pidfile} does not hold a pid (its number is above the kernel's "
                f"pid_max {pid_max()})"
            )
    if pid is None or not 0 < pid <= pid_max():
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
