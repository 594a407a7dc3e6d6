"""keysetd.wake: the lock-free wake-up flag the daemon's signal handlers set."""

from __future__ import annotations

import os
import signal
import threading
import time

from keysetd.wake import Wake


def test_set_stays_until_cleared_and_wait_times_out() -> None:
    wake = Wake()
    assert not wake.is_set()
    started = time.monotonic()
    assert wake.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    wake.set()
    wake.set()
    assert wake.wait(5) and wake.wait(0) and wake.is_set()
    wake.clear()
    assert not wake.is_set()


def test_many_sets_never_block_and_one_clear_resets() -> None:
    wake = Wake()
    for _ in range(200_000):  # more than a pipe holds: the extra writes are dropped
        wake.set()
    wake.clear()
    assert not wake.is_set()


def test_set_from_another_thread_wakes_the_waiter() -> None:
    wake = Wake()
    timer = threading.Timer(0.05, wake.set)
    timer.start()
    assert wake.wait(5)
    timer.join()


def test_a_signal_handler_may_set_it_while_the_main_thread_waits_or_clears() -> None:
    wake = Wake()
    previous = signal.signal(signal.SIGUSR1, lambda *_: wake.set())
    try:
        deadline = time.monotonic() + 2
        fired = 0
        while time.monotonic() < deadline and fired < 2000:
            os.kill(os.getpid(), signal.SIGUSR1)
            fired += 1
            assert wake.wait(1)
            wake.clear()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert fired > 100


def test_a_timeout_longer_than_poll_takes_is_cut_not_overflowed() -> None:
    wake = Wake()
    wake.set()
    assert wake.wait(1e12) is True  # past poll()'s C int of milliseconds
    assert wake.wait(float("inf")) is True
    wake.clear()
    assert wake.wait(float("-inf")) is False
    assert wake.wait(-5) is False
