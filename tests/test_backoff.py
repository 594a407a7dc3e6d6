"""The daemon's waits, computed without a clock: backoff, jitter, planned changes, notify retry."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from keysetd.backoff import (
    FAILURE_BACKOFF_INITIAL,
    FAILURE_BACKOFF_MAX,
    JITTER,
    PLAN_SLACK,
    failure_backoff,
    next_wait,
    plan_wait,
)
from keysetd.config import load_config
from keysetd.daemon import Daemon
from keysetd.dispatch import Backlog
from keysetd.errors import NotifyError
from keysetd.pipeline import CycleResult
from keysetd.plugin import Notifier, NotifierConfig, NotifyEvent
from tests.conftest import Env
from tests.keys import jwks_doc

NOW = 1_800_000_000.0
LOW, HIGH = (lambda: 0.0), (lambda: 1.0)  # the extremes of the random draw
LOW_FACTOR, HIGH_FACTOR = 1 - JITTER, 1 + JITTER


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (64, 60.0), (1025, 60.0)],
)
def test_failure_backoff_doubles_from_one_second_to_the_cap(failures: int, expected: float) -> None:
    assert failure_backoff(failures) == expected


@pytest.mark.parametrize("failures", [1024, 1025, 1026, 10**6, 10**9, 10**30])
def test_any_failure_count_gives_a_bounded_wait(failures: int) -> None:
    """2.0 ** (failures - 1) overflowed at 1,025 failures and killed the daemon."""
    for rand in (LOW, HIGH, random.random):
        wait = next_wait(failures, 60.0, None, NOW, rand)
        assert FAILURE_BACKOFF_MAX * LOW_FACTOR <= wait <= FAILURE_BACKOFF_MAX * HIGH_FACTOR


def test_failing_waits_are_capped_by_the_refresh_interval_then_jittered() -> None:
    assert next_wait(10, 5.0, None, NOW, LOW) == pytest.approx(5.0 * LOW_FACTOR)
    assert next_wait(10, 5.0, None, NOW, HIGH) == pytest.approx(5.0 * HIGH_FACTOR)
    assert next_wait(1, 600.0, None, NOW, HIGH) == pytest.approx(FAILURE_BACKOFF_INITIAL * 1.1)


def test_healthy_waits_are_the_refresh_interval_jittered() -> None:
    assert next_wait(0, 60.0, None, NOW, LOW) == pytest.approx(60.0 * LOW_FACTOR)
    assert next_wait(0, 60.0, None, NOW, HIGH) == pytest.approx(60.0 * HIGH_FACTOR)


def test_a_fleet_started_together_does_not_poll_in_step() -> None:
    """Ten daemons, each with its own random source: their refresh waits all differ."""
    waits = [next_wait(0, 60.0, None, NOW, random.Random(seed).random) for seed in range(10)]
    assert len({round(w, 6) for w in waits}) == 10
    assert max(waits) - min(waits) > 1.0  # seconds apart, not microseconds


def test_a_planned_change_shortens_the_wait() -> None:
    assert next_wait(0, 60.0, NOW + 5, NOW, HIGH) == pytest.approx(5 + PLAN_SLACK)
    # While failing, a change still ahead is woken for too (sooner than the backoff).
    assert next_wait(4, 60.0, NOW + 0.5, NOW, HIGH) == pytest.approx(0.5 + PLAN_SLACK)
    assert next_wait(1, 60.0, NOW + 50, NOW, LOW) == pytest.approx(LOW_FACTOR)


@pytest.mark.parametrize("failures", [1, 2, 3, 7, 1025])
def test_a_due_change_that_keeps_failing_backs_off_like_any_failure(failures: int) -> None:
    """The change was due and the cycle failed: retrying at once was the 10 ms spin."""
    for due in (NOW - 3600, NOW - 0.001, NOW):
        wait = next_wait(failures, 60.0, due, NOW, LOW)
        assert wait == pytest.approx(failure_backoff(failures) * LOW_FACTOR)
        assert wait >= LOW_FACTOR


def test_outage_requests_in_the_first_ten_seconds_and_per_hour() -> None:
    """The README's promise: never a tight loop; about once a minute in a long outage."""

    def requests(refresh: float, seconds: float, rand: Any) -> int:
        now, failures, count = 0.0, 0, 0
        while now < seconds:
            count, failures = count + 1, failures + 1
            now += next_wait(failures, refresh, None, now, rand)
        return count

    assert requests(2.0, 10.0, LOW) <= 7
    assert requests(60.0, 60.0, LOW) <= 7
    hour = requests(60.0, 3600.0, LOW)
    assert hour <= 3600 / (60 * LOW_FACTOR) + 7, hour


def test_the_daemon_counts_failures_and_one_success_resets_them(env: Env) -> None:
    env.write_source(jwks_doc())
    daemon = Daemon(load_config(env.config(source={"refresh_interval": "2s"})))
    try:
        failed, good = CycleResult(ok=False, error="down"), CycleResult(ok=True)
        waits = [daemon._next_wait(failed) for _ in range(3)]
        assert daemon.failures == 3
        assert LOW_FACTOR <= waits[0] <= HIGH_FACTOR
        assert 2 * LOW_FACTOR <= waits[1] <= 2 * HIGH_FACTOR  # 2 s backoff
        assert 2 * LOW_FACTOR <= waits[2] <= 2 * HIGH_FACTOR  # 4 s capped at refresh 2 s
        assert 2 * LOW_FACTOR <= daemon._next_wait(good) <= 2 * HIGH_FACTOR
        assert daemon.failures == 0
        assert LOW_FACTOR <= daemon._next_wait(failed) <= HIGH_FACTOR  # from 1 s again
    finally:
        daemon.pipeline.close()


# -- the notification backlog ------------------------------------------------------------------


class _Named(Notifier):
    def notify(self, what: NotifyEvent) -> None:  # never called here
        raise NotImplementedError


def named(name: str) -> Notifier:
    return _Named(NotifierConfig(type="command", name=name))


FIRST, SECOND = NotifyEvent("f1", "a", ("jwks",)), NotifyEvent("f2", "b", ("jwks",))


def test_backlog_keeps_the_failed_notifiers_with_their_event_until_delivered() -> None:
    web, app = named("web"), named("app")
    backlog = Backlog()
    backlog.settle([web, app], FIRST, [NotifyError("web", "503")])
    backlog.schedule(NOW, failed=True, fresh=True, rand=HIGH)
    assert backlog.due([web, app]) == [(FIRST, [web])]
    assert backlog.errors == ["notifier web: 503"]
    assert backlog.retry_at == pytest.approx(NOW + HIGH_FACTOR)
    retries = []
    for _ in range(12):  # each failed retry waits longer, never past the cap
        backlog.settle([web], FIRST, [NotifyError("web", "503")])
        backlog.schedule(NOW, failed=True, fresh=False, rand=HIGH)
        assert backlog.retry_at is not None
        retries.append(backlog.retry_at - NOW)
    assert retries == sorted(retries) and retries[-1] == pytest.approx(60 * HIGH_FACTOR)
    backlog.settle([web], FIRST, [])
    backlog.schedule(NOW, failed=False, fresh=False)
    assert not backlog and backlog.retry_at is None and backlog.attempts == 0


def test_a_newer_change_supersedes_the_owed_one() -> None:
    web, app = named("web"), named("app")
    backlog = Backlog()
    backlog.settle([web, app], FIRST, [NotifyError("web", "503"), NotifyError("app", "refused")])
    backlog.settle([web], SECOND, [NotifyError("web", "503")])  # app follows other outputs
    assert sorted(backlog.due([web, app]), key=lambda d: d[0].fingerprint) == [
        (FIRST, [app]),
        (SECOND, [web]),
    ]
    backlog.settle([app], NotifyEvent("f3", "b", ("keyset",)), [])
    assert backlog.due([web, app]) == [(SECOND, [web])]
    backlog.keep_only(["app"])  # web was removed by a reload
    assert not backlog and backlog.retry_at is None


def test_consecutive_retry_schedules_of_a_fleet_differ() -> None:
    at = []
    for seed in range(5):
        backlog = Backlog()
        backlog.settle([named("web")], FIRST, [NotifyError("web", "503")])
        backlog.schedule(NOW, failed=True, fresh=True, rand=random.Random(seed).random)
        at.append(backlog.retry_at)
    assert all(a != b for a, b in itertools.combinations(at, 2))


def test_plan_wait_is_the_time_to_a_change_ahead_and_none_for_a_failing_due_one() -> None:
    assert plan_wait(0, None, NOW) is None
    assert plan_wait(0, NOW + 5, NOW) == pytest.approx(5 + PLAN_SLACK)
    assert plan_wait(0, NOW - 5, NOW) == pytest.approx(PLAN_SLACK)  # due: at once
    assert plan_wait(3, NOW + 5, NOW) == pytest.approx(5 + PLAN_SLACK)  # still ahead
    assert plan_wait(3, NOW - 5, NOW) is None  # due and failing: the backoff decides
