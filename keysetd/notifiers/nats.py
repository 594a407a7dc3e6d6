"""The ``nats`` notifier: check nats-server's config, then ask the server to reload it.

Each notification runs ``nats-server -t -c <config>`` first. When that check
fails, the nats output file (``include``) gets back the bytes it held at the
last successful check (or when keysetd started), no reload is sent, and the
error carries the check's output: a broken config never reaches a running
server, and a later restart still finds a config it can read. Only then is
``nats-server --signal reload=<pid>`` run, the pid read from ``pidfile`` at
that moment (or ``pid``) and checked against ``process_name``.

nats-server cannot reload ``trusted_keys``; a nats notifier on a
``kind = "trusted_keys"`` output is a configuration error (restart the server
with a ``systemd`` notifier, ``action = "restart"``, or a ``command``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from keysetd import proc
from keysetd.atomic import read_current, write_atomic
from keysetd.errors import NotifyError
from keysetd.outputs.nats import NatsOutputConfig, header_kind
from keysetd.pidfile import Pid, check_process_name, target_pid
from keysetd.plugin import Notifier, NotifierConfig, NotifyEvent, Output
from keysetd.units import Duration

__all__ = ["NatsNotifier", "NatsNotifierConfig"]

_INCLUDE_LIMIT = 16 << 20
_RESTART_HINT = (
    'restart the server instead: a systemd notifier with action = "restart", or a command'
)


class NatsNotifierConfig(NotifierConfig):
    #: The server's main config file, the one ``nats-server -t -c`` checks.
    config: Path
    #: The nats output's file that ``config`` includes: what a failed check restores.
    include: Path
    pid: Pid | None = None
    pidfile: Path | None = None
    #: Must match ``/proc/<pid>/comm``; "" skips the check.
    process_name: str = "nats-server"
    #: The nats-server program (looked up in /usr/local/bin:/usr/bin:/bin unless a path).
    nats_server: Annotated[str, proc.check_program] = "nats-server"
    timeout: Duration = 10.0

    def __post_init__(self) -> None:
        if (self.pid is None) == (self.pidfile is None):
            raise ValueError("set exactly one of pid and pidfile")


class NatsNotifier(Notifier):
    """Check with ``nats-server -t``, restore the include if that fails, else signal reload."""

    Config: ClassVar[type[NotifierConfig]] = NatsNotifierConfig

    @classmethod
    def check_outputs(cls, config: Any, outputs: Sequence[Output]) -> list[str]:
        """A reload of a trusted_keys include cannot work: say so when the config loads."""
        include = config.include.absolute()
        for output in outputs:
            cfg = output.config
            if (
                isinstance(cfg, NatsOutputConfig)
                and cfg.kind == "trusted_keys"
                and cfg.path.absolute() == include
            ):
                return [
                    f"include {config.include} is a nats output of kind trusted_keys, which "
                    "nats-server cannot reload (it logs 'config reload not supported for "
                    f"TrustedKeys'); {_RESTART_HINT}"
                ]
        return []

    def __init__(self, config: NatsNotifierConfig) -> None:
        super().__init__(config)
        self.config: NatsNotifierConfig = config
        #: The include as the server last accepted it (as found at start, then each pass).
        self._good: bytes | None = read_current(config.include, _INCLUDE_LIMIT)
        #: Why the last check failed, once it restored ``_good``: a retry must not report
        #: success for bytes the server never got.
        self._restored: str | None = None

    def notify(self, event: NotifyEvent) -> None:
        include = self.config.include
        current = read_current(include, _INCLUDE_LIMIT)
        if current is not None and header_kind(current) == "trusted_keys":
            raise self._fail(f"{include} holds trusted_keys, which nats-server cannot reload")
        if self._restored is not None and current == self._good:
            raise self._fail(
                f"{include} was restored to its previous bytes after a failed config check "
                f"({self._restored}); no reload until the next change"
            )
        try:
            self._run("-t", "-c", str(self.config.config))
        except proc.ProcExit as exc:
            restored = self._restore(current, exc.reason)
            raise self._fail(
                f"config check `nats-server -t -c {self.config.config}` failed "
                f"({exc.reason}); {restored}; no reload sent"
            ) from exc
        except proc.ProcFailure as exc:
            raise self._fail(f"config check could not run: {exc.reason}; no reload sent") from exc
        self._good, self._restored = current, None
        pid = self._read_pid()
        try:
            self._run("--signal", f"reload={pid}")
        except proc.ProcFailure as exc:
            raise self._fail(f"nats-server --signal reload={pid}: {exc.reason}") from exc

    def _fail(self, reason: str) -> NotifyError:
        return NotifyError(self.name, reason)

    def _run(self, *args: str) -> None:
        proc.run(
            [self.config.nats_server, *args],
            env=proc.minimal_env(),
            timeout=self.config.timeout,
            max_stdout=None,
        )

    def _restore(self, current: bytes | None, reason: str) -> str:
        """Put the last accepted bytes back; says what happened, for the error."""
        include, good = self.config.include, self._good
        if good is None:
            return f"{include} left as it is (no accepted version is known)"
        if current == good:
            return f"{include} unchanged since the last accepted version"
        try:
            mode = include.stat().st_mode & 0o7777
        except OSError:
            mode = 0o644
        try:
            write_atomic(include, good, mode)
        except OSError as exc:
            return f"restoring {include} failed: {exc.strerror or exc}"
        self._restored = reason
        return f"{include} restored to its previous bytes"

    def _read_pid(self) -> int:
        try:
            pid = target_pid(self.config.pid, self.config.pidfile)
        except ValueError as exc:
            raise self._fail(str(exc)) from exc
        self._check_name(pid)
        return pid

    def _check_name(self, pid: int) -> None:
        wanted = self.config.process_name
        if not wanted or not Path("/proc/self/comm").exists():
            return  # "" skips the check, and so does a system without /proc
        try:
            check_process_name(pid, wanted)
        except ProcessLookupError as exc:
            raise self._fail(f"process {pid} does not exist (stale pid)") from exc
        except ValueError as exc:
            raise self._fail(str(exc)) from exc
