"""Reading the audit log: ``verify`` checks its chain and head, ``export`` streams it.

The writer (``keysetd.audit``) is what the daemon loads; this module is loaded only by
``keysetd audit`` and the tests, which read the log.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from keysetd.audit import (
    CHAIN_KEYED,
    GENESIS,
    Head,
    chain_link,
    head_mac,
    head_path,
    line_sha256,
    read_head,
    rotated_files,
)

if TYPE_CHECKING:
    from keysetd.state import AuditKey

__all__ = ["Verdict", "export", "verify"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking the chain: ``broken_line`` is 1-based, None when intact.

    ``reason`` says why it is broken, or, when intact, anything the check could not cover.
    ``keyed``: lines from ``AuditKey.since`` on were checked with the audit key.
    """

    lines: int
    broken_line: int | None = None
    reason: str = ""
    keyed: bool = False

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def _lines(paths: Sequence[Path]) -> Iterator[tuple[Path, bytes]]:
    for path in paths:
        with path.open("rb") as handle:
            for raw in handle:
                yield path, raw


def _broken_link(number: int, keyed: bool) -> str:
    if number == 1:
        return "prev is not the genesis value: the log does not start here"
    what = "the audit key's HMAC" if keyed else "the SHA-256"
    return (
        f"prev does not match {what} of line {number - 1}"
        f" (line {number - 1} edited, or lines removed, inserted or reordered here)"
    )


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def _cut_short(
    count: int, last_seq: int, head: Head, where: Path, *, exists: bool = True
) -> Verdict:
    """The log ends (after ``count`` good lines, at ``last_seq``) before the head in ``where``."""
    if not exists:
        ends = "there is no audit log"
    else:
        ends = f"the log ends at seq {last_seq}" if count else "the log is empty"
    return Verdict(
        count,
        count + 1,
        f"{ends} but {where.name} records seq {head.seq}:"
        f" {_seqs(last_seq + 1, head.seq)} missing (lines cut off the end)",
    )


@dataclass(slots=True)
class _Walk:
    """What ``verify`` carries from one line to the next."""

    path: Path
    first_file: Path
    key: AuditKey | None
    head: Head | None
    where: Path
    note: str = ""
    previous: bytes | None = None
    expected_seq: int | None = None
    count: int = 0
    last_seq: int = 0
    #: Unkeyed seqs from key.since on, after the last keyed line; and those a keyed line covered.
    uncovered: list[int] = field(default_factory=list)
    covered: int = 0

    def line(self, number: int, file: Path, raw: bytes) -> Verdict | None:
        """Check one line; the Verdict of the break, or None."""
        self.count = number
        named = "" if file == self.path else f" ({file.name})"
        if not raw.endswith(b"\n"):
            return Verdict(number, number, f"the line is torn (no newline){named}")
        line = raw[:-1]
        try:
            entry = json.loads(line)
        except ValueError:
            return Verdict(number, number, f"not valid JSON{named}")
        if not isinstance(entry, dict):
            return Verdict(number, number, f"not a JSON object{named}")
        seq, keyed = entry.get("seq"), entry.get("chain") == CHAIN_KEYED
        if keyed and self.key is None:
            return Verdict(
                number,
                number,
                f"the line is keyed (HMAC) but no audit key is configured to check it{named}:"
                " set [state] encryption as the daemon has it",
            )
        rotated_away = number == 1 and self.first_file != self.path
        if rotated_away and type(seq) is int and seq > 1:
            self.expected_seq = seq  # older rotated files were removed: the chain starts here
            self.note = f"starts at seq {seq} (older files rotated away)"
        else:
            key = self.key.key if keyed and self.key is not None else None
            link = chain_link(self.previous, key) if self.previous is not None else GENESIS
            if entry.get("prev") != link:
                return Verdict(number, number, _broken_link(number, keyed) + named)
        expected = 1 if self.expected_seq is None else self.expected_seq
        if type(seq) is not int or seq != expected:
            return Verdict(number, number, f"seq {seq!r}, expected {expected}{named}")
        if self.key is not None and seq >= self.key.since:
            if keyed:
                self.covered, self.uncovered = self.covered + len(self.uncovered), []
            else:
                self.uncovered.append(seq)
        self.previous, self.expected_seq, self.last_seq = line, seq + 1, seq
        head = self.head
        if head is not None and seq == head.seq and line_sha256(line) != head.sha256:
            return Verdict(
                number,
                number,
                f"the SHA-256 of seq {seq} is not the one {self.where.name} records"
                " (the line was edited or replaced)",
            )
        return None

    def end(self) -> Verdict:
        count, key = self.count, self.key
        if self.head is not None and self.last_seq < self.head.seq:
            return _cut_short(count, self.last_seq, self.head, self.where)
        if self.uncovered:
            first, last = self.uncovered[0], self.uncovered[-1]
            return Verdict(
                count,
                count - len(self.uncovered) + 1,
                f"{_seqs(first, last)} not keyed though the chain is keyed from"
                f" seq {key.since if key else '?'}: rewritten, or written while the key"
                " provider was down and not yet covered by a keyed line",
                keyed=True,
            )
        head = self.head
        if (
            key is not None
            and self.last_seq >= key.since
            and (head is None or head.seq < key.since)
        ):
            return Verdict(
                count,
                count,
                f"no {self.where.name} signed by the audit key though the chain is keyed from"
                f" seq {key.since}: removed, or replaced by an older one, so"
                " the end of the log cannot be trusted",
                keyed=True,
            )
        signed = key is not None and head is not None and head.seq >= key.since
        if signed and not _signed_by(head, key):
            return Verdict(
                count,
                count,
                f"{self.where.name} is not signed by the audit key: edited or replaced, so"
                " the end of the log cannot be trusted",
                keyed=True,
            )
        notes = [self.note] if self.note else []
        if key is not None and self.covered:
            notes.append(
                f"{self.covered} line(s) written while the key provider was down,"
                " covered by keyed lines"
            )
        return Verdict(count, None, "; ".join(notes) if count else "", keyed=key is not None)


def _signed_by(head: Head | None, key: AuditKey | None) -> bool:
    if head is None or key is None or head.mac is None:
        return False
    return hmac.compare_digest(head.mac, head_mac(key.key, head.seq, head.sha256))


def verify(path: Path, head_file: Path | None = None, *, key: AuditKey | None = None) -> Verdict:
    """Check every line's JSON, sequence number and link, across rotated files, and the end
    against the head. Stops at the first break.

    ``head_file`` defaults to ``audit.head`` beside ``path``. With ``key``, lines from
    ``key.since`` on must be linked by the key's HMAC: a full rewrite cannot forge them.
    Unkeyed lines there (written while the key provider was down) are accepted only when
    a keyed line after them covers them.
    """
    where = head_path(path) if head_file is None else head_file
    try:
        head = read_head(where)
    except ValueError as exc:
        head, note = None, f"{where.name} is unreadable ({exc}): the end of the log is unchecked"
    else:
        note = "" if head else f"no {where.name}: the end of the log is unchecked"
    files = rotated_files(path)
    if path.exists() or not files:
        files.append(path)
    walk = _Walk(path, files[0], key, head, where)
    try:
        for number, (file, raw) in enumerate(_lines(files), start=1):
            if (broken := walk.line(number, file, raw)) is not None:
                return broken
    except FileNotFoundError:
        if head is not None:
            return _cut_short(0, 0, head, where, exists=False)
        return Verdict(0, None, "no audit log yet", keyed=key is not None)
    if note and not walk.note:
        walk.note = note
    elif note:
        walk.note = f"{note}; {walk.note}"
    return walk.end()


def _open_all(path: Path) -> list[int]:
    """Read fds of every file of the log, oldest first, opened under the writers' lock, so
    a rotation meanwhile cannot move lines between the listing and the reading."""
    while True:
        try:
            lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [os.open(f, os.O_RDONLY | os.O_CLOEXEC) for f in rotated_files(path)]
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            if os.stat(path).st_ino != os.fstat(lock).st_ino:
                continue  # rotated between the open and the lock
            return [
                *(os.open(f, os.O_RDONLY | os.O_CLOEXEC) for f in rotated_files(path)),
                os.dup(lock),
            ]
        except FileNotFoundError:
            continue
        finally:
            os.close(lock)


def export(path: Path, first_seq: int = 1) -> Iterator[bytes]:
    """The log's lines (newline included) from ``first_seq`` on, across rotated files."""
    handles = [os.fdopen(fd, "rb") for fd in _open_all(path)]
    try:
        for handle in handles:
            yield from _from_seq(handle, first_seq)
    finally:
        for handle in handles:
            handle.close()


def _from_seq(lines: Iterable[bytes], first_seq: int) -> Iterator[bytes]:
    for raw in lines:
        try:
            seq = json.loads(raw).get("seq")
        except (ValueError, AttributeError):
            seq = None
        if type(seq) is int and seq < first_seq:
            continue
        yield raw if raw.endswith(b"\n") else raw + b"\n"
