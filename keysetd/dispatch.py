"""Runs the notifiers a cycle calls for: filtered by outputs, once each, with bounded retries."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from keysetd.errors import NotifyError
from keysetd.log import event
from keysetd.plugin import Notifier, NotifyEvent

__all__ = ["interested", "run_notifiers"]

RETRY_INITIAL = 0.2
RETRY_MAX = 2.0


def interested(notifier: Notifier, changed: Iterable[str]) -> bool:
    """Whether one of the outputs this notifier follows (default: all) changed."""
    wanted = notifier.config.outputs
    changed = set(changed)
    return bool(changed) if wanted is None else bool(changed.intersection(wanted))


def notify_once(notifier: Notifier, what: NotifyEvent) -> None:
    """Deliver with exponential backoff and jitter; re-raise the last NotifyError."""
    retrying = Retrying(
        stop=stop_after_attempt(max(1, notifier.config.retries + 1)),
        wait=wait_exponential(multiplier=RETRY_INITIAL, max=RETRY_MAX)
        + wait_random(0, RETRY_INITIAL),
        retry=retry_if_exception_type(NotifyError),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            notifier.notify(what)


def run_notifiers(notifiers: Sequence[Notifier], what: NotifyEvent) -> list[NotifyError]:
    """Notify each given notifier; failures are logged and returned, never raised."""
    failures: list[NotifyError] = []
    for notifier in notifiers:
        try:
            notify_once(notifier, what)
        except NotifyError as exc:
            failures.append(exc)
            event(
                "notify_failed",
                logging.ERROR,
                notifier=notifier.name,
                error=str(exc),
                fingerprint=what.fingerprint,
            )
        else:
            event(
                "notified",
                notifier=notifier.name,
                outputs=",".join(what.outputs),
                fingerprint=what.fingerprint,
            )
    return failures
