"""The ``command`` notifier: run a program to make a consumer reload.

No shell, a minimal environment plus ``KEYSETD_FINGERPRINT``,
``KEYSETD_ACTIVE_KID`` and ``KEYSETD_CHANGED_OUTPUTS``, and a timeout that
kills the program's whole process group.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from keysetd import proc
from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifierConfig, NotifyEvent
from keysetd.tables import After
from keysetd.units import Duration

__all__ = ["EVENT_VARS", "CommandNotifier", "CommandNotifierConfig", "event_env"]

EVENT_VARS = ("KEYSETD_FINGERPRINT", "KEYSETD_ACTIVE_KID", "KEYSETD_CHANGED_OUTPUTS")


def _no_event_vars(env: dict[str, str]) -> dict[str, str]:
    reserved = sorted(set(env) & set(EVENT_VARS))
    if reserved:
        raise ValueError(f"set by keysetd, not configurable: {', '.join(reserved)}")
    return env


class CommandNotifierConfig(NotifierConfig):
    argv: Annotated[list[str], After(proc.check_argv)]
    timeout: Duration = 10.0
    env: Annotated[dict[str, str], After(proc.check_env), After(_no_event_vars)] = Field(
        default_factory=dict
    )


def event_env(event: NotifyEvent) -> dict[str, str]:
    """The ``KEYSETD_*`` variables describing ``event``."""
    return {
        "KEYSETD_FINGERPRINT": event.fingerprint,
        "KEYSETD_ACTIVE_KID": event.active_kid or "",
        "KEYSETD_CHANGED_OUTPUTS": ",".join(event.outputs),
    }


class CommandNotifier(Notifier):
    """Runs ``argv`` once per notification; success is exit status 0 within ``timeout``."""

    Config: ClassVar[type[NotifierConfig]] = CommandNotifierConfig

    def __init__(self, config: CommandNotifierConfig) -> None:
        super().__init__(config)
        self.config: CommandNotifierConfig = config

    def notify(self, event: NotifyEvent) -> None:
        env = proc.minimal_env({**self.config.env, **event_env(event)})
        try:
            proc.run(self.config.argv, env=env, timeout=self.config.timeout, max_stdout=None)
        except proc.ProcFailure as exc:
            raise NotifyError(self.name, f"{self.config.argv[0]}: {exc.reason}") from exc
