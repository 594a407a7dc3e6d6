"""The ``systemd`` notifier: ``systemctl reload|restart <unit>``.

``restart`` is for consumers that cannot reload what keysetd wrote, such as
nats-server with ``trusted_keys``. systemctl runs through keysetd's bounded
subprocess runner: no shell, a minimal environment, ``--no-ask-password`` and a
timeout that kills it.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from keysetd import proc
from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifierConfig, NotifyEvent
from keysetd.tables import After
from keysetd.units import Duration

__all__ = ["SystemdNotifier", "SystemdNotifierConfig"]

# Unit names: systemd's allowed characters; a leading "-" would read as an option.
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,255}")


def _unit_name(unit: str) -> str:
    if not _UNIT.fullmatch(unit):
        raise ValueError("not a systemd unit name")
    return unit


class SystemdNotifierConfig(NotifierConfig):
    unit: Annotated[str, After(_unit_name)]
    action: Literal["reload", "restart"] = "reload"
    timeout: Duration = 30.0
    #: The systemctl program (looked up in /usr/local/bin:/usr/bin:/bin unless a path).
    systemctl: Annotated[str, After(proc.check_program)] = "systemctl"


class SystemdNotifier(Notifier):
    """Runs ``systemctl --no-ask-password <action> <unit>``; success is exit status 0."""

    Config: ClassVar[type[NotifierConfig]] = SystemdNotifierConfig

    def __init__(self, config: SystemdNotifierConfig) -> None:
        super().__init__(config)
        self.config: SystemdNotifierConfig = config

    @property
    def argv(self) -> list[str]:
        cfg = self.config
        return [cfg.systemctl, "--no-ask-password", cfg.action, cfg.unit]

    def notify(self, event: NotifyEvent) -> None:
        try:
            proc.run(
                self.argv, env=proc.minimal_env(), timeout=self.config.timeout, max_stdout=None
            )
        except proc.ProcFailure as exc:
            raise NotifyError(
                self.name, f"systemctl {self.config.action} {self.config.unit}: {exc.reason}"
            ) from exc
