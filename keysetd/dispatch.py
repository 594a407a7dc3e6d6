"""Runs the notifiers a cycle calls for: filtered by outputs, once each, with bounded retries.

A notification still failing after its retries goes to the ``Backlog``: the
daemon delivers it again, with failure backoff, until it succeeds or a newer
change for that notifier supersedes it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from keysetd.backoff import FAILURE_BACKOFF_MAX, Random, next_wait
from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifyEvent
from keysetd.log import event

__all__ = ["Backlog", "interested", "run_notifiers"]

RETRY_INITIAL = 0.2
RETRY_MAX = 2.0


def interested(notifier: Notifier, changed: Iterable[str]) -> bool:
    """Whether one of the outputs this notifier follows (default: all) changed."""
    wanted = notifier.config.outputs
    changed = set(changed)
    return bool(changed) if wanted is None else bool(changed.intersection(wanted))


def notify_once(notifier: Notifier, what: NotifyEvent) -> None:
    """Deliver with exponential backoff and jitter; re-raise the last NotifyError."""
    # Imported at the first notification, not at start: a daemon without notifiers
    # (or before its first change) never pays for it.
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        wait_exponential,
        wait_random,
    )

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


@dataclass(slots=True)
class Backlog:
    """Per notifier, the event it last failed on and why; and when to deliver again."""

    failed: dict[str, tuple[NotifyEvent, str]] = field(default_factory=dict)
    #: Consecutive delivery rounds that left a failure behind: the backoff's count.
    attempts: int = 0
    #: Wall-clock time of the next delivery; None when nothing is owed.
    retry_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.failed)

    @property
    def errors(self) -> list[str]:
        return [error for _, error in self.failed.values()]

    def settle(
        self, called: Sequence[Notifier], what: NotifyEvent, failures: Sequence[NotifyError]
    ) -> None:
        """After a delivery of ``what``: failures are owed it, the others owe nothing now."""
        errors = {f.notifier: str(f) for f in failures}
        for notifier in called:
            if notifier.name in errors:
                self.failed[notifier.name] = (what, errors[notifier.name])
            else:
                self.failed.pop(notifier.name, None)

    def schedule(
        self, now: float, *, failed: bool, fresh: bool, rand: Random = random.random
    ) -> None:
        """Set the next delivery after a round; ``fresh``: it delivered a new change."""
        if not self.failed:
            self.attempts, self.retry_at = 0, None
        elif failed:
            self.attempts = 1 if fresh else self.attempts + 1
            self.retry_at = now + next_wait(self.attempts, FAILURE_BACKOFF_MAX, None, now, rand)

    def due(self, notifiers: Sequence[Notifier]) -> list[tuple[NotifyEvent, list[Notifier]]]:
        """The owed deliveries, grouped by event, for the notifiers still configured."""
        by_name = {n.name: n for n in notifiers}
        groups: dict[NotifyEvent, list[Notifier]] = {}
        for name, (what, _) in self.failed.items():
            if name in by_name:
                groups.setdefault(what, []).append(by_name[name])
        return list(groups.items())

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget notifiers that are no longer configured (after a reload)."""
        kept = set(names)
        self.failed = {k: v for k, v in self.failed.items() if k in kept}
        if not self.failed:
            self.attempts, self.retry_at = 0, None
