"""The audit log: ``audit.jsonl`` in state_dir, JSON lines chained by SHA-256.

Each line carries ``prev``, the SHA-256 (hex) of the previous line's bytes, and
``seq``; the first line's ``prev`` is 64 zeros. Deleting, reordering or inserting
a line breaks the chain at that line; an edited line is caught by the next line's
``prev``. The daemon and the CLI (revoke) both append, under an exclusive flock,
so their lines never interleave. Lines carry kids, fingerprints, rules and
reasons, never key material.

The chain alone cannot show an edited last line or lines cut off the end, so
each append also records the head (seq and SHA-256 of the last line) in
``audit.head`` beside the log, after the lines are fsynced. The head is written
atomically but not fsynced (no fsync added before consumers are told): a crash
or power cut leaves it old, and a log that runs *ahead* of its head is normal.
A log that ends *before* its head, or whose line at the head's seq has another
hash, was cut or edited: ``verify`` fails, and the next append chains on from
the head, so the gap stays visible. A log without ``audit.head`` (written
before it existed, or the head lost) verifies by its chain alone, with a note.
Moving ``audit.jsonl`` away continues the chain from its head; to start a new
chain, move ``audit.head`` away too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keysetd.atomic import append_durable, write_atomic

__all__ = ["GENESIS", "AuditLog", "Head", "Verdict", "head_path", "read_head", "verify"]

GENESIS = "0" * 64
AUDIT_MODE = 0o600
_TAIL_WINDOW = 1 << 16
_RESERVED = frozenset({"seq", "time", "prev"})
_MAX_HEAD = 4096
_HEX = frozenset("0123456789abcdef")


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


def head_path(log: Path) -> Path:
    """Where the head of ``log`` is recorded: ``audit.head`` beside ``audit.jsonl``."""
    return log.with_suffix(".head")


@dataclass(frozen=True, slots=True)
class Head:
    """The last line the log had when it was last appended to: its seq and SHA-256."""

    seq: int
    sha256: str

    def render(self) -> bytes:
        return json.dumps({"seq": self.seq, "sha256": self.sha256}, sort_keys=True).encode() + b"\n"


def read_head(path: Path) -> Head | None:
    """The recorded head, or None when there is none; ValueError when it is not a head."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")  # a FIFO would hang the reader
        try:
            raw = handle.read(_MAX_HEAD + 1)
        except OSError as exc:
            raise ValueError(exc.strerror or str(exc)) from exc
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError("not valid JSON") from None
    seq = doc.get("seq") if isinstance(doc, dict) else None
    digest = doc.get("sha256") if isinstance(doc, dict) else None
    if type(seq) is not int or seq < 1:
        raise ValueError("no seq >= 1")
    if not isinstance(digest, str) or len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError("no sha256 of 64 hex digits")
    return Head(seq, digest)


def _usable_head(path: Path) -> Head | None:
    """The head to chain on from when appending; an unreadable one is treated as absent."""
    try:
        return read_head(path)
    except ValueError:
        return None


def _next_link(last: bytes | None, head: Head | None) -> tuple[int, str]:
    """The seq and ``prev`` of the next line after ``last``, the log's last complete line.

    A log that ends before its recorded head (or whose last line at the head's seq is
    not the recorded one) was cut or edited: the next line chains on from the head,
    so the gap stays visible to ``verify`` instead of being papered over.
    """
    last_seq, prev = 0, GENESIS
    if last is not None:
        prev = _digest(last)
        try:
            last_seq = int(json.loads(last).get("seq", 0))
        except (ValueError, TypeError, AttributeError, OverflowError):
            return 0, prev  # the chain is already broken there; verify reports it
    if head is not None and (last_seq < head.seq or (last_seq == head.seq and prev != head.sha256)):
        return head.seq + 1, head.sha256
    return last_seq + 1, prev


class AuditLog:
    """Appends events to one ``audit.jsonl`` and records its head in ``audit.head``."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self.head_path = head_path(path)
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
            first, prev = _next_link(_last_line(fd), _usable_head(self.head_path))
            seq = first
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
            if first > 0:  # seq 0 follows an unreadable line: no head worth recording
                # Still under the lock, so heads are written in the order of their lines.
                head = Head(seq - 1, prev).render()
                write_atomic(self.head_path, head, AUDIT_MODE, durable=False)
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
    """The result of checking the chain: ``broken_line`` is 1-based, None when intact.

    ``reason`` says why it is broken, or, when intact, anything the check could not cover.
    """

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


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def _cut_short(count: int, head: Head, where: Path, *, exists: bool = True) -> Verdict:
    """The log ends (after ``count`` good lines) before the head recorded in ``where``."""
    if not exists:
        ends = "there is no audit log"
    else:
        ends = f"the log ends at seq {count}" if count else "the log is empty"
    return Verdict(
        count,
        count + 1,
        f"{ends} but {where.name} records seq {head.seq}:"
        f" {_seqs(count + 1, head.seq)} missing (lines cut off the end)",
    )


def verify(path: Path, head_file: Path | None = None) -> Verdict:
    """Check every line's JSON, sequence number and hash link, and the end against the head.

    Stops at the first break. ``head_file`` defaults to ``audit.head`` beside ``path``.
    """
    where = head_path(path) if head_file is None else head_file
    try:
        head = read_head(where)
    except ValueError as exc:
        head, note = None, f"{where.name} is unreadable ({exc}): the end of the log is unchecked"
    else:
        note = "" if head else f"no {where.name}: the end of the log is unchecked"
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
            if head is not None and seq == head.seq and prev != head.sha256:
                return Verdict(
                    number,
                    number,
                    f"the SHA-256 of seq {seq} is not the one {where.name} records"
                    " (the line was edited or replaced)",
                )
    except FileNotFoundError:
        if head is not None:
            return _cut_short(0, head, where, exists=False)
        return Verdict(0, None, "no audit log yet")
    if head is not None and count < head.seq:
        return _cut_short(count, head, where)
    return Verdict(count, None, note if count else "")
