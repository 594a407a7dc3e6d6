"""Config value types: durations ("750ms", "1h30m", "7d", or seconds) and file modes ("0644")."""

from __future__ import annotations

import re
from typing import Annotated

from keysetd.schema import Before, positive

__all__ = ["Duration", "FileMode", "PositiveDuration", "parse_duration", "parse_mode"]

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "30s", "5m", "1h30m", "750ms", "7d"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError("not a duration (use e.g. '750ms', '30s', '1h30m', '7d')")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


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


Duration = Annotated[float, Before(parse_duration)]
PositiveDuration = Annotated[float, Before(parse_duration), positive]
FileMode = Annotated[int, Before(parse_mode)]
