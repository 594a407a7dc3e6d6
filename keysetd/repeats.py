"""Identical consecutive failures reach the audit log once, then as a count.

A source down for a day fails a cycle every minute; one fsynced audit line
each would bury the lines that matter. The first failure of a kind (its stage
and message) is written in full; repeats are only counted, and the count goes
to the log as one ``failure_repeated`` line when the failure changes, when the
cycles recover, when anything else is audited, and at least every
``REPEAT_SUMMARY_EVERY`` seconds while it lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["REPEAT_SUMMARY_EVERY", "RepeatedFailures"]

REPEAT_SUMMARY_EVERY = 3600.0

AuditLine = dict[str, Any]


@dataclass(slots=True)
class RepeatedFailures:
    """The failure last written to the audit log and how often it repeated since."""

    every: float = REPEAT_SUMMARY_EVERY
    key: tuple[str, str] | None = None
    event: str = ""
    repeats: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    written_at: float = 0.0

    def admit(self, stage: str, message: str, entry: AuditLine, now: float) -> list[AuditLine]:
        """The audit lines for this failure: ``entry`` when it is new, a count now and then."""
        if (stage, message) != self.key:
            lines = self.flush()
            self.key, self.event, self.written_at = (stage, message), str(entry["event"]), now
            return [*lines, entry]
        if not self.repeats:
            self.first_at = now
        self.repeats += 1
        self.last_at = now
        if now - self.written_at >= self.every:
            self.written_at = now
            return self.flush()
        return []

    def flush(self) -> list[AuditLine]:
        """One line counting the repeats not yet in the log; none when there are none."""
        if not self.repeats or self.key is None:
            return []
        line: AuditLine = {
            "event": "failure_repeated",
            "failed": self.event,
            "stage": self.key[0],
            "repeats": self.repeats,
            "first_at": round(self.first_at, 3),
            "last_at": round(self.last_at, 3),
        }
        self.repeats = 0
        return [line]

    def recovered(self) -> list[AuditLine]:
        """The count still owed, and forget the failure: the next one is written in full."""
        lines = self.flush()
        self.key = None
        return lines
