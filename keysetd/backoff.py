"""When the daemon wakes next: the refresh interval, failure backoff and planned changes.

Pure: the time and the random source come in as arguments, so a test checks
any failure count in microseconds. The doubling is capped before it is
computed, so no count (1,025 or 10**9) can overflow.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = [
    "FAILURE_BACKOFF_INITIAL",
    "FAILURE_BACKOFF_MAX",
    "JITTER",
    "PLAN_SLACK",
    "failure_backoff",
    "jittered",
    "next_wait",
    "plan_wait",
]

FAILURE_BACKOFF_INITIAL = 1.0
FAILURE_BACKOFF_MAX = 60.0
#: Every wait is multiplied by a factor in [1 - JITTER, 1 + JITTER]: a fleet started
#: together does not poll its source (or retry its notifiers) in step.
JITTER = 0.1
#: Wake this long after a planned change (activation, end of retention) so it is due.
PLAN_SLACK = 0.01
#: More doublings than any cap needs; bounds the exponent, whatever the count.
_MAX_DOUBLINGS = 32

Random = Callable[[], float]


def failure_backoff(failures: int) -> float:
    """Seconds before retry ``failures`` (1 s doubling to FAILURE_BACKOFF_MAX); 0 for none."""
    if failures <= 0:
        return 0.0
    doublings = min(failures - 1, _MAX_DOUBLINGS)
    return min(FAILURE_BACKOFF_MAX, FAILURE_BACKOFF_INITIAL * float(1 << doublings))


def jittered(seconds: float, rand: Random = random.random) -> float:
    """``seconds`` times a factor drawn uniformly from [1 - JITTER, 1 + JITTER)."""
    return seconds * (1.0 + JITTER * (2.0 * rand() - 1.0))


def next_wait(
    failures: int,
    refresh: float,
    next_change_at: float | None,
    now: float,
    rand: Random = random.random,
) -> float:
    """Seconds until the next cycle after ``failures`` consecutive failed cycles (0: healthy).

    Healthy: the refresh interval. Failing: the failure backoff, never longer than
    the refresh interval. Both jittered. A planned change (``next_change_at``, wall
    clock like ``now``) makes the wait shorter, except a change that is already due
    while cycles fail: then the failure is what keeps it due, and retrying it at once
    would spin.
    """
    base = refresh if failures <= 0 else min(refresh, failure_backoff(failures))
    wait = jittered(max(0.0, base), rand)
    planned = plan_wait(failures, next_change_at, now)
    return wait if planned is None else min(wait, planned)


def plan_wait(failures: int, next_change_at: float | None, now: float) -> float | None:
    """Seconds until a planned change (activation, end of retention) is due; None: none.

    None too for a change already due while cycles fail: the failure keeps it due,
    so the failure backoff decides when to try again, not the plan.
    """
    if next_change_at is None or (failures > 0 and next_change_at <= now):
        return None
    return max(0.0, next_change_at - now) + PLAN_SLACK
