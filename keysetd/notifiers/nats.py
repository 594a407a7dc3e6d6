"""The ``nats`` notifier: check the new include with nats-server before it is written; reload.

Pre-commit (:meth:`NatsNotifier.check`, before any output of the cycle is
written): when the nats output's new bytes for ``include`` differ from the file,
``nats-server -t -c`` checks them inside a private copy of ``config`` (see
:mod:`keysetd.notifiers.natsconf`; the real include is never touched). A failed
check fails the whole cycle: every output keeps its old bytes, the error names
this notifier, ``config`` and nats-server's message, and the next change tries
again. So only the commit stage writes outputs, and a broken include never
reaches the running server nor a later restart. After the commit,
:meth:`NatsNotifier.notify` only runs ``nats-server --signal reload=<pid>``, the
pid read from ``pidfile`` at that moment (or ``pid``) and checked against
``process_name``.

nats-server cannot reload ``trusted_keys``; a nats notifier on a
``kind = "trusted_keys"`` output is a configuration error (restart the server
with a ``systemd`` notifier, ``action = "restart"``, or a ``command``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from keysetd import proc
from keysetd.atomic import read_current
from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifierConfig, NotifyEvent, Output
from keysetd.notifiers.natsconf import staged
from keysetd.outputs.nats import NatsOutputConfig, header_kind
from keysetd.pidfile import Pid, check_process_name, target_pid
from keysetd.tables import After
from keysetd.units import Duration

__all__ = ["NatsNotifier", "NatsNotifierConfig"]

_INCLUDE_LIMIT = 16 << 20
_RESTART_HINT = (
    'restart the server instead: a systemd notifier with action = "restart", or a command'
)


class NatsNotifierConfig(NotifierConfig):
    #: The server's main config file, the one ``nats-server -t -c`` checks.
    config: Path
    #: The nats output's file that ``config`` includes: its new bytes are checked first.
    include: Path
    pid: Pid | None = None
    pidfile: Path | None = None
    #: Must match ``/proc/<pid>/comm``; "" skips the check.
    process_name: str = "nats-server"
    #: The nats-server program (looked up in /usr/local/bin:/usr/bin:/bin unless a path).
    nats_server: Annotated[str, After(proc.check_program)] = "nats-server"
    timeout: Duration = 10.0

    def __post_init__(self) -> None:
        if (self.pid is None) == (self.pidfile is None):
            raise ValueError("set exactly one of pid and pidfile")


class NatsNotifier(Notifier):
    """Check a new include with ``nats-server -t`` before the commit; signal reload after it."""

    Config: ClassVar[type[NotifierConfig]] = NatsNotifierConfig

    @classmethod
    def check_outputs(cls, config: Any, outputs: Sequence[Output]) -> list[str]:
        """``include`` must be a nats output of kind users: the one file checked before commit."""
        include = os.path.realpath(config.include)
        for output in outputs:
            cfg = output.config
            if not (isinstance(cfg, NatsOutputConfig) and os.path.realpath(cfg.path) == include):
                continue
            if cfg.kind == "trusted_keys":
                return [
                    f"include {config.include} is a nats output of kind trusted_keys, which "
                    "nats-server cannot reload (it logs 'config reload not supported for "
                    f"TrustedKeys'); {_RESTART_HINT}"
                ]
            return []
        return [
            f"include {config.include} is not the path of a nats output: keysetd checks the "
            "include it writes with `nats-server -t` before committing it"
        ]

    def __init__(self, config: NatsNotifierConfig) -> None:
        super().__init__(config)
        self.config: NatsNotifierConfig = config

    def check(self, rendered: Mapping[Path, bytes]) -> None:
        """Run ``nats-server -t`` on the new include in a private copy of the config."""
        include = self.config.include
        wanted = os.path.realpath(include)  # the config check made sure it is a nats output
        candidate = next((b for p, b in rendered.items() if os.path.realpath(p) == wanted), None)
        if candidate is None or read_current(include, _INCLUDE_LIMIT) == candidate:
            return  # not a file of this cycle, or unchanged: nothing new reaches the server
        if header_kind(candidate) == "trusted_keys":
            raise self._fail(f"{include} would hold trusted_keys, which nats-server cannot reload")
        config = self.config.config
        try:
            with staged(config, include, candidate) as main:
                self._run("-t", "-c", str(main))
        except proc.ProcExit as exc:
            raise self._fail(
                f"config check `nats-server -t -c {config}` with the new {include} failed "
                f"({exc.reason}); nothing was written"
            ) from exc
        except proc.ProcFailure as exc:
            raise self._fail(
                f"config check could not run: {exc.reason}; nothing was written"
            ) from exc
        except OSError as exc:
            where = exc.filename or config
            raise self._fail(
                f"config check: {where}: {exc.strerror or exc}; nothing was written"
            ) from exc
        except ValueError as exc:
            raise self._fail(f"config check: {exc}; nothing was written") from exc

    def notify(self, event: NotifyEvent) -> None:
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
