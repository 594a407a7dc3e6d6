"""Config value types: durations ("750ms", "1h30m", "7d", or seconds) and file modes ("0644").

Every duration is finite and at most ``MAX_DURATION`` (10 years): a larger one
overflows the clock and date arithmetic of ``status``, ``plan`` and the daemon's
waits. The typed variants add the floors and ceilings of one kind of key, so a
typo like ``refresh_interval = 0`` or ``every = "1ms"`` is refused at config load
instead of spinning the daemon.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from keysetd.tables import After, Before, positive

__all__ = [
    "MAX_DURATION",
    "MAX_REFRESH_INTERVAL",
    "MAX_TIMEOUT",
    "MIN_REFRESH_INTERVAL",
    "MIN_ROTATION",
    "CacheTtl",
    "Duration",
    "FileMode",
    "PositiveDuration",
    "RefreshInterval",
    "RotationPeriod",
    "Timeout",
    "between",
    "format_duration",
    "parse_duration",
    "parse_mode",
]

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

#: The longest duration any key takes: 3650 days.
MAX_DURATION = 3650 * 86400.0
#: A source is re-fetched at most this often: a shorter interval is a busy loop.
MIN_REFRESH_INTERVAL = 0.1
#: ... and at least once a day.
MAX_REFRESH_INTERVAL = 86400.0
#: A network call or a child process never gets more than an hour.
MAX_TIMEOUT = 3600.0
#: Managed keys rotate at most once a second (real deployments rotate in days).
MIN_ROTATION = 1.0

_TOO_LONG = "a duration is finite and at most 3650d (10 years)"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "30s", "5m", "1h30m", "750ms", "7d"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = _parse_text(value)
        else:
            raise ValueError("a duration is a number of seconds or a string like '30s'")
    except OverflowError:  # an integer too large for a float
        raise ValueError(_TOO_LONG) from None
    if math.isnan(seconds):
        raise ValueError("a duration is a number, not NaN")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return seconds


def _parse_text(value: str) -> float:
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration (use e.g. '750ms', '30s', '1h30m', '7d')")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The shortest config spelling of a bound: ``0.1`` -> ``"100ms"``, ``86400`` -> ``"1d"``."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def between(low: float, high: float, *, low_open: bool = False) -> Callable[[float], float]:
    """A rule: ``low <= value <= high`` (``low < value`` with ``low_open``), bounds named."""
    floor = "greater than" if low_open else "at least"

    def check(value: float) -> float:
        if value < low or (low_open and value == low):
            raise ValueError(f"must be {floor} {format_duration(low)}")
        if value > high:
            raise ValueError(f"must be at most {format_duration(high)}")
        return value

    return check


def parse_mode(value: object) -> int:
    """A file mode from an octal string ("0640") or an int; only permission bits."""
    if isinstance(value, bool):
        raise ValueError("a file mode is an octal string like '0640'")
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError("not an octal file mode (use e.g. '0640')") from None
    elif isinstance(value, int):
        mode = value
    else:
        raise ValueError("a file mode is an octal string like '0640'")
    if not 0 <= mode <= 0o777:
        raise ValueError("a file mode is between 0000 and 0777")
    return mode


#: 0 to 10 years.
Duration = Annotated[float, Before(parse_duration)]
#: Over 0, at most 10 years.
PositiveDuration = Annotated[float, Before(parse_duration), positive]
#: A deadline for one fetch, request or child process: over 0, at most an hour.
Timeout = Annotated[float, Before(parse_duration), After(between(0.0, MAX_TIMEOUT, low_open=True))]
#: How long a secret may stay cached in memory: 0 (not at all) to an hour.
CacheTtl = Annotated[float, Before(parse_duration), After(between(0.0, MAX_TIMEOUT))]
#: How often a source is re-fetched: 100ms to 1d.
RefreshInterval = Annotated[
    float, Before(parse_duration), After(between(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL))
]
#: How often managed keys rotate: 1s to 10 years.
RotationPeriod = Annotated[
    float, Before(parse_duration), After(between(MIN_ROTATION, MAX_DURATION))
]
FileMode = Annotated[int, Before(parse_mode)]
