"""The ``signal`` notifier: send a signal to a process named by pid or pidfile.

The pidfile is re-read at every notification (the consumer may have
restarted). A missing, empty or unparsable pidfile, a stale pid, keysetd's
own pid or a ``process_name`` that does not match ``/proc/<pid>/comm`` is an
error: keysetd never signals a guessed process. Where the kernel offers
pidfds, the process is pinned before its name is checked, so a pid reused in
between is never signalled.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, ClassVar

from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifierConfig, NotifyEvent
from keysetd.pidfile import Pid, check_process_name, target_pid
from keysetd.tables import After, non_empty

__all__ = ["SignalNotifier", "SignalNotifierConfig", "parse_signal"]


def parse_signal(value: str) -> signal.Signals:
    """A signal from its name: ``"SIGHUP"``, ``"HUP"`` or ``"hup"``."""
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError("unknown signal (use a name such as SIGHUP or HUP)") from None


def _signal_name(value: str) -> str:
    return parse_signal(value).name


class SignalNotifierConfig(NotifierConfig):
    pid: Pid | None = None
    pidfile: Path | None = None
    signal: Annotated[str, After(_signal_name)] = "SIGHUP"
    process_name: Annotated[str, non_empty] | None = None

    def __post_init__(self) -> None:
        if (self.pid is None) == (self.pidfile is None):
            raise ValueError("set exactly one of pid and pidfile")


class _Refused(Exception):
    """Why this notification was not sent; becomes a NotifyError naming the target."""


class SignalNotifier(Notifier):
    """Sends ``signal`` to the process in ``pidfile`` (re-read each time) or to ``pid``."""

    Config: ClassVar[type[NotifierConfig]] = SignalNotifierConfig

    def __init__(self, config: SignalNotifierConfig) -> None:
        super().__init__(config)
        self.config: SignalNotifierConfig = config
        self.signal = parse_signal(config.signal)

    def _target(self) -> str:
        if self.config.pidfile is not None:
            return f"pidfile {self.config.pidfile}"
        return f"pid {self.config.pid}"

    def notify(self, event: NotifyEvent) -> None:
        try:
            pid = self._read_pid()
            self._send(pid)
        except _Refused as exc:
            raise NotifyError(self.name, f"{self._target()}: {exc}") from exc.__cause__

    def _read_pid(self) -> int:
        try:
            return target_pid(self.config.pid, self.config.pidfile)
        except ValueError as exc:
            raise _Refused(str(exc)) from exc

    def _send(self, pid: int) -> None:
        pidfd = _pidfd_open(pid)
        try:
            if self.config.process_name is not None:
                check_process_name(pid, self.config.process_name)
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, self.signal)
            else:
                os.kill(pid, self.signal)
        except ProcessLookupError as exc:
            raise _Refused(f"process {pid} does not exist (stale pid)") from exc
        except ValueError as exc:  # another process now holds the pid
            raise _Refused(str(exc)) from exc
        except PermissionError as exc:
            raise _Refused(f"not permitted to signal process {pid}") from exc
        except OSError as exc:
            raise _Refused(f"cannot signal process {pid}: {exc.strerror}") from exc
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd pinning ``pid``, or None where the platform has none (then plain kill)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        fd: int = opener(pid)
    except ProcessLookupError:
        raise _Refused(f"process {pid} does not exist (stale pid)") from None
    except OSError:
        return None  # ENOSYS (old kernel) or a sandbox forbidding it
    return fd
