"""The audit log: ``audit.jsonl`` in state_dir, JSON lines chained by SHA-256 or an HMAC.

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

The chain alone is unkeyed: whoever can write the files can rewrite them whole.
With ``[state] encryption`` it is keyed from ``AuditKey.since`` on: ``prev`` is the
HMAC-SHA256 of the previous line under the audit key (sealed in ``audit.key``),
lines say ``"chain": "hmac-sha256"``, and the head carries a ``mac``; a rewrite
without the key fails ``verify``. Past ``max_bytes`` the log is moved to
``audit.<first seq>.jsonl`` and the next line chains on from its last one;
``verify`` and ``export`` (``keysetd.audit_read``, loaded only by the commands that
read the log) read the rotated files first, oldest to newest.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keysetd.atomic import append_durable, fsync_dir, write_atomic

if TYPE_CHECKING:
    from keysetd.state import AuditKey

__all__ = [
    "CHAIN_KEYED",
    "GENESIS",
    "AuditLog",
    "Head",
    "chain_link",
    "head_mac",
    "head_path",
    "line_sha256",
    "read_head",
    "rotated_files",
    "was_keyed",
]

GENESIS = "0" * 64
AUDIT_MODE = 0o600
_TAIL_WINDOW = 1 << 16
_RESERVED = frozenset({"seq", "time", "prev", "chain"})
#: ``chain`` of a line whose ``prev`` is the HMAC-SHA256 of the line before, under the audit key.
CHAIN_KEYED = "hmac-sha256"
_MAX_HEAD = 4096
_HEX = frozenset("0123456789abcdef")


def line_sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def chain_link(line: bytes, key: bytes | None) -> str:
    """What the next line's ``prev`` holds: the HMAC-SHA256 under the audit key, or SHA-256."""
    if key is None:
        return line_sha256(line)
    return hmac.new(key, line, hashlib.sha256).hexdigest()


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


def was_keyed(log: Path) -> bool:
    """Whether the log was last written with a keyed chain (its head carries a MAC, or its
    last line is keyed): then a missing audit key was removed, not never made."""
    try:
        head = json.loads(head_path(log).read_bytes())
        if isinstance(head, dict) and head.get("mac"):
            return True
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        last = _last_line(fd)
    finally:
        os.close(fd)
    try:
        doc = json.loads(last) if last else None
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("chain") == CHAIN_KEYED


def head_path(log: Path) -> Path:
    """Where the head of ``log`` is recorded: ``audit.head`` beside ``audit.jsonl``."""
    return log.with_suffix(".head")


@dataclass(frozen=True, slots=True)
class Head:
    """The last line the log had when it was last appended to: its seq and SHA-256."""

    seq: int
    sha256: str
    #: With a keyed chain: the HMAC of seq and sha256 under the audit key (``head_mac``), so
    #: the last line cannot be edited with the head rewritten to match.
    mac: str | None = None

    def render(self) -> bytes:
        doc: dict[str, Any] = {"seq": self.seq, "sha256": self.sha256}
        if self.mac is not None:
            doc["mac"] = self.mac
        return json.dumps(doc, sort_keys=True).encode() + b"\n"


def head_mac(key: bytes, seq: int, sha256: str) -> str:
    return hmac.new(key, f"audit.head:{seq}:{sha256}".encode(), hashlib.sha256).hexdigest()


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
    mac = doc.get("mac")
    return Head(seq, digest, mac if isinstance(mac, str) else None)


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
        prev = line_sha256(last)
        try:
            last_seq = int(json.loads(last).get("seq", 0))
        except (ValueError, TypeError, AttributeError, OverflowError):
            return 0, prev  # the chain is already broken there; verify reports it
    if head is not None and (last_seq < head.seq or (last_seq == head.seq and prev != head.sha256)):
        return head.seq + 1, head.sha256
    return last_seq + 1, prev


class AuditLog:
    """Appends events to one ``audit.jsonl`` and records its head in ``audit.head``.

    ``key`` (with ``[state] encryption``): called under the lock with the seq of the next
    line, it returns the audit key (made then if there is none), or None when it cannot be
    had now (the key provider is down): those lines are chained unkeyed, and ``verify``
    fails until a keyed line covers them. ``max_bytes``: past it the log is rotated to
    ``audit.<first seq>.jsonl`` and a new file chains on from its last line; ``keep``
    rotated files are kept.
    """

    def __init__(
        self,
        path: Path,
        clock: Any = time.time,
        *,
        key: Callable[[int], AuditKey | None] | None = None,
        max_bytes: int | None = None,
        keep: int = 8,
    ) -> None:
        self.path = path
        self.head_path = head_path(path)
        self.clock = clock
        self._key = key
        self._max_bytes = max_bytes
        self._keep = keep

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
        fd = self._open_locked()
        try:
            self._repair_torn_tail(fd)
            last = _last_line(fd)
            if last is None:  # a new file after a rotation chains on from the rotated one
                last = _last_rotated_line(self.path)
            head = _usable_head(self.head_path)
            first, prev = _next_link(last, head)
            audit_key = self._key(first) if self._key is not None and first > 0 else None
            key = audit_key.key if audit_key is not None and first >= audit_key.since else None
            if last is not None and (first, prev) == _next_link(last, None):
                prev = chain_link(last, key)  # not a gap after a cut: chain to the line itself
            seq = first
            now = round(self.clock(), 3)
            lines = []
            for fields in entries:
                entry = {"seq": seq, "time": now, "event": fields["event"]}
                entry.update({k: v for k, v in fields.items() if v is not None})
                entry["prev"] = prev
                if key is not None:
                    entry["chain"] = CHAIN_KEYED
                line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
                lines.append(line.encode())
                seq, prev = seq + 1, chain_link(lines[-1], key)
            append_durable(fd, b"\n".join(lines) + b"\n")
            if first > 0:  # seq 0 follows an unreadable line: no head worth recording
                # Still under the lock, so heads are written in the order of their lines.
                last_sha = line_sha256(lines[-1])
                mac = head_mac(key, seq - 1, last_sha) if key is not None else None
                head_line = Head(seq - 1, last_sha, mac).render()
                write_atomic(self.head_path, head_line, AUDIT_MODE, durable=False)
            if self._max_bytes is not None and os.fstat(fd).st_size >= self._max_bytes:
                self._rotate(fd)
        finally:
            os.close(fd)

    def _open_locked(self) -> int:
        """The log's fd, locked; reopened when another writer rotated it meanwhile."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, AUDIT_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _rotate(self, fd: int) -> None:
        """Move the full log aside as ``audit.<first seq>.jsonl``; drop the oldest past keep."""
        first_line = _first_line(fd)
        try:
            first = int(json.loads(first_line)["seq"])
        except (ValueError, TypeError, KeyError, OverflowError):
            return  # a broken log stays where verify can name the break
        os.rename(self.path, rotated_path(self.path, first))
        fsync_dir(self.path.parent)
        for old in rotated_files(self.path)[: -self._keep or None] if self._keep else []:
            old.unlink(missing_ok=True)

    @staticmethod
    def _repair_torn_tail(fd: int) -> None:
        """Cut a last line that a crash left without its newline."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # A torn tail longer than one window must not cut the whole log.
        os.ftruncate(fd, _last_newline(fd, size) + 1)
        os.fsync(fd)


def _first_line(fd: int) -> bytes:
    """The file's first line, however long (a ``published`` line lists every kid)."""
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, _TAIL_WINDOW, offset):
        head, newline, _ = chunk.partition(b"\n")
        chunks.append(head)
        if newline:
            break
        offset += len(chunk)
    return b"".join(chunks)


def rotated_path(log: Path, first_seq: int) -> Path:
    """Where a rotated log goes: ``audit.<first seq, 12 digits>.jsonl`` beside ``audit.jsonl``."""
    return log.with_name(f"{log.stem}.{first_seq:012d}{log.suffix}")


def rotated_files(log: Path) -> list[Path]:
    """The rotated files of ``log``, oldest first."""
    pattern = re.compile(rf"{re.escape(log.stem)}\.(\d{{12}}){re.escape(log.suffix)}")
    try:
        names = os.listdir(log.parent)
    except FileNotFoundError:
        return []
    return [log.parent / name for name in sorted(names) if pattern.fullmatch(name)]


def _last_rotated_line(log: Path) -> bytes | None:
    rotated = rotated_files(log)
    if not rotated:
        return None
    fd = os.open(rotated[-1], os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _last_line(fd)
    finally:
        os.close(fd)
