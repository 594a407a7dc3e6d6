"""The audit log: ``audit.jsonl`` in state_dir, JSON lines chained by SHA-256.

Each line carries ``prev``, the SHA-256 (hex) of the previous line's bytes, and
``seq``; the first line's ``prev`` is 64 zeros. Deleting, reordering or inserting
a line breaks the chain at that line; an edited line is caught by the next line's
``prev``. The chain alone cannot show an edited last line or lines cut off the end:
that needs the head's hash kept elsewhere. The daemon and the CLI (revoke)
both append, under an exclusive flock, so their lines never interleave. Lines
carry kids, fingerprints, rules and reasons, never key material.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keysetd.atomic import append_durable

__all__ = ["GENESIS", "AuditLog", "Verdict", "verify"]

GENESIS = "0" * 64
AUDIT_MODE = 0o600
_TAIL_WINDOW = 1 << 16
_RESERVED = frozenset({"seq", "time", "prev"})


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_newline(fd: int, end: int) -> int:
    """The offset of the last newline before ``end``, or -1; read backwards in widening windows."""
    window = _TAIL_WINDOW
    while True:
        start = max(0, end - window)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        if start == 0:
            return -1
        window *= 2


def _last_line(fd: int) -> bytes | None:
    """The last complete line of the file (a torn tail from a crash does not count)."""
    end = _last_newline(fd, os.fstat(fd).st_size)
    if end < 0:
        return None
    begin = _last_newline(fd, end) + 1
    return os.pread(fd, end - begin, begin)


class AuditLog:
    """Appends events to one ``audit.jsonl``."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock

    def append(self, event: str, **fields: Any) -> None:
        """Write one event line, chained to the line before it."""
        self.append_all([{"event": event, **fields}])

    def append_all(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Write several events (each with an ``event`` key) in one locked write and one fsync."""
        if not entries:
            return
        for fields in entries:
            if reserved := _RESERVED & fields.keys():
                raise ValueError(f"audit fields {sorted(reserved)} are set by the log itself")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, AUDIT_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._repair_torn_tail(fd)
            last = _last_line(fd)
            seq, prev = 1, GENESIS
            if last is not None:
                prev = _digest(last)
                try:
                    seq = int(json.loads(last).get("seq", 0)) + 1
                except (ValueError, TypeError, AttributeError):
                    seq = 0  # the chain is already broken there; verify reports it
            now = round(self.clock(), 3)
            lines = []
            for fields in entries:
                entry = {"seq": seq, "time": now, "event": fields["event"]}
                entry.update({k: v for k, v in fields.items() if v is not None})
                entry["prev"] = prev
                line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
                lines.append(line.encode())
                seq, prev = seq + 1, _digest(lines[-1])
            append_durable(fd, b"\n".join(lines) + b"\n")
        finally:
            os.close(fd)

    @staticmethod
    def _repair_torn_tail(fd: int) -> None:
        """Cut a last line that a crash left without its newline."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # A torn tail longer than one window must not cut the whole log.
        os.ftruncate(fd, _last_newline(fd, size) + 1)
        os.fsync(fd)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking the chain: ``broken_line`` is 1-based, None when intact."""

    lines: int
    broken_line: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


def _broken_link(number: int) -> str:
    if number == 1:
        return "prev is not the genesis value: the log does not start here"
    return (
        f"prev does not match the SHA-256 of line {number - 1}"
        f" (line {number - 1} edited, or lines removed, inserted or reordered here)"
    )


def verify(path: Path) -> Verdict:
    """Check every line's JSON, sequence number and hash link; stop at the first break."""
    prev, expected_seq, count = GENESIS, 1, 0
    try:
        lines = _lines(path)
        for number, raw in enumerate(lines, start=1):
            count = number
            if not raw.endswith(b"\n"):
                return Verdict(number, number, "the line is torn (no newline)")
            line = raw[:-1]
            try:
                entry = json.loads(line)
            except ValueError:
                return Verdict(number, number, "not valid JSON")
            if not isinstance(entry, dict):
                return Verdict(number, number, "not a JSON object")
            if entry.get("prev") != prev:
                return Verdict(number, number, _broken_link(number))
            seq = entry.get("seq")
            if type(seq) is not int or seq != expected_seq:
                return Verdict(number, number, f"seq {entry.get('seq')!r}, expected {expected_seq}")
            prev, expected_seq = _digest(line), expected_seq + 1
    except FileNotFoundError:
        return Verdict(0, None, "no audit log yet")
    return Verdict(count)
