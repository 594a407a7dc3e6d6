"""What keysetd remembers in ``state_dir``: last-known-good, key history, status, the lock.

Every file is written through ``atomic.write_atomic`` with mode 0600, so a crash
leaves each one old or new. The status file is what ``keysetd status`` reads, so
it works with or without the HTTP server and while the daemon runs. (The audit
log and its head, ``audit.jsonl`` and ``audit.head``, are keysetd.audit's.)

History also records the SHA-256 of the last-known-good file (``lkg_sha256``),
written before the file itself: a last-known-good that does not match it (bytes
flipped, or the file swapped for another valid keyset) is refused by name
(``verified_lkg``), never published. A crash between the two writes leaves an
older file than history names, which is refused too: republishing it would take
outputs back to a keyset older than the one they hold. A history from before
``lkg_sha256`` existed checks nothing until the next save.

With ``[state] encryption`` (a ``Sealer``), the files holding private material,
``last-known-good.json``, ``signer-keyset.json`` and the audit chain's key
``audit.key``, are sealed (keysetd.sealing);
the digest history records is of the document (the plaintext), so sealing the same
document anew (first seal, ``rewrap``) writes no history and a crash meanwhile leaves a
file that still matches. ``secure`` seals plaintext
files left from before and then writes ``encryption.json``; from then on a
plaintext file there is refused, and a store without a sealer refuses to open
it at all: encrypted state is never silently downgraded.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keysetd.atomic import clean_temp_files, write_atomic
from keysetd.errors import ConfigError, SealError
from keysetd.model import canonical_json
from keysetd.sealing import SealedInfo, Sealer, is_sealed, open_with

__all__ = ["AuditKey", "KeyRecord", "LastKnownGood", "StateStore", "UntrustedLastKnownGood"]

STATE_MODE = 0o600
_MAX_STATE_FILE = 64 << 20
_LKG_FIELDS = ("data", "format", "origin", "fetched_at", "fingerprint")


@dataclass(frozen=True, slots=True, repr=False)
class AuditKey:
    """The HMAC key of the audit chain and the seq of the first line it keys."""

    key: bytes
    since: int

    def __repr__(self) -> str:
        return f"AuditKey(since={self.since})"

    def render(self) -> bytes:
        return canonical_json({"key": base64.b64encode(self.key).decode(), "since": self.since})

    @classmethod
    def parse(cls, raw: bytes, where: str) -> AuditKey:
        try:
            doc = json.loads(raw)
            key = base64.b64decode(doc["key"], validate=True)
            since = doc["since"]
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise SealError(where, "corrupt: not an audit key") from None
        if len(key) != 32 or type(since) is not int or since < 1:
            raise SealError(where, "corrupt: not an audit key")
        return cls(key, since)


class UntrustedLastKnownGood(ValueError):
    """The last-known-good file is missing, unreadable, corrupt or not the one history
    recorded; the message names the file and why (never its content)."""


@dataclass(frozen=True, slots=True, repr=False)
class LastKnownGood:
    """The last snapshot that passed validation, as the source sent it."""

    data: bytes
    format: str
    origin: str
    fetched_at: float
    fingerprint: str

    def __repr__(self) -> str:
        return f"LastKnownGood(origin={self.origin!r}, fingerprint={self.fingerprint[:12]})"


@dataclass(slots=True)
class KeyRecord:
    """What keysetd knows of one kid across snapshots (never private material)."""

    kid: str
    material: str
    first_seen: float
    left_source_at: float | None = None
    first_published: float | None = None
    active_from: float | None = None
    active_until: float | None = None
    revoked: float | None = None
    retired_at: float | None = None
    public_jwk: dict[str, str] | None = field(default=None)
    #: When the source first brought this kid with other key material (``kid-reused``).
    reused_since: float | None = None


_RECORD_FIELDS = tuple(f.name for f in fields(KeyRecord))


def _lkg_sha256_of(history: Any) -> str | None:
    digest = history.get("lkg_sha256") if isinstance(history, dict) else None
    return digest if isinstance(digest, str) else None


def _lkg_dict(lkg: LastKnownGood) -> dict[str, Any]:
    return {
        "data": base64.b64encode(lkg.data).decode(),
        "format": lkg.format,
        "origin": lkg.origin,
        "fetched_at": lkg.fetched_at,
        "fingerprint": lkg.fingerprint,
    }


def _parse_lkg(raw: bytes) -> LastKnownGood:
    """The last-known-good in ``raw``; ValueError saying what is wrong (never the content)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError("not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if missing := [name for name in _LKG_FIELDS if name not in doc]:
        raise ValueError(f"no {', '.join(missing)}")
    try:
        data = base64.b64decode(doc["data"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise ValueError("data is not base64") from None
    try:
        fetched_at = float(doc["fetched_at"])
    except (TypeError, ValueError, OverflowError):
        raise ValueError("fetched_at is not a number") from None
    return LastKnownGood(
        data=data,
        format=str(doc["format"]),
        origin=str(doc["origin"]),
        fetched_at=fetched_at,
        fingerprint=str(doc["fingerprint"]),
    )


def _record_dict(record: KeyRecord) -> dict[str, Any]:
    """A record as JSON-ready dict (dataclasses.asdict deep-copies: 3 s for 10,000 kids)."""
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


class StateStore:
    """Reads and writes the files of one ``state_dir``."""

    def __init__(self, directory: Path, sealer: Sealer | None = None) -> None:
        self.directory = directory
        #: Seals and opens the files holding private material (None: plaintext state).
        self.sealer = sealer
        self._audit_key: AuditKey | None = None
        self._lock_fd: int | None = None
        #: The last-known-good digest history.json holds (read with history, or on demand).
        self._lkg_sha256: str | None = None
        self._lkg_sha256_read = False

    @property
    def lkg_path(self) -> Path:
        return self.directory / "last-known-good.json"

    @property
    def history_path(self) -> Path:
        return self.directory / "history.json"

    @property
    def status_path(self) -> Path:
        return self.directory / "status.json"

    @property
    def signer_path(self) -> Path:
        """The signer keyset last published, private members included: what signers hold."""
        return self.directory / "signer-keyset.json"

    @property
    def revocations_path(self) -> Path:
        return self.directory / "revocations.json"

    @property
    def fleet_path(self) -> Path:
        """Fleet mode: the shared history and revocations as last read from etcd."""
        return self.directory / "fleet.json"

    @property
    def audit_path(self) -> Path:
        return self.directory / "audit.jsonl"

    @property
    def encryption_path(self) -> Path:
        """Written once every private file is sealed: from then on plaintext is refused."""
        return self.directory / "encryption.json"

    @property
    def audit_key_path(self) -> Path:
        """The audit chain's HMAC key, sealed (written once, with encryption only)."""
        return self.directory / "audit.key"

    @property
    def private_paths(self) -> tuple[Path, ...]:
        """The files that hold private material: sealed when encryption is configured."""
        return (self.lkg_path, self.signer_path, self.audit_key_path)

    def audit_key(self, first_seq: int | None = None, *, create: bool = True) -> AuditKey | None:
        """The audit chain's key: None without encryption. ``first_seq`` (a writer, under the
        log's lock): make the key if there is none yet (and ``create``), keyed from that
        seq on.

        SealError when it exists and cannot be opened (the key provider is down).
        """
        if self.sealer is None:
            return None
        if self._audit_key is not None:
            return self._audit_key
        path = self.audit_key_path
        try:
            raw = self._read_bytes(path)
        except FileNotFoundError:
            if first_seq is None:
                return None
            if not create:  # a new key would restart the chain after lines nobody can check
                raise SealError(
                    str(path), "is missing, but the audit log was keyed: restore it"
                ) from None
            key = AuditKey(os.urandom(32), first_seq)
            write_atomic(path, self.sealer.seal(path, key.render()), STATE_MODE)
            self._audit_key = key
            return key
        except OSError as exc:
            raise SealError(str(path), f"cannot be read: {exc.strerror or exc}") from None
        if not is_sealed(raw):  # keysetd only ever writes it sealed
            raise SealError(str(path), "is plaintext, but keysetd writes it sealed: refused")
        self._audit_key = AuditKey.parse(self._opened(path, raw), str(path))
        return self._audit_key

    # -- encryption --------------------------------------------------------------

    def encrypted(self) -> bool:
        """state_dir has been sealed (``encryption.json``, even an unreadable one)."""
        return os.path.lexists(self.encryption_path)

    def check_encryption(self) -> None:
        """ConfigError when state_dir holds sealed state but no encryption is configured."""
        if self.sealer is not None:
            return
        sealed = [p.name for p in self.private_paths if self._sealed_on_disk(p)]
        if self.encrypted() or sealed:
            what = ", ".join(sealed) if sealed else self.encryption_path.name
            raise ConfigError(
                f"state_dir {self.directory} holds encrypted state ({what}) but [state]"
                " encryption is not configured: keysetd never reads it as plaintext nor"
                " writes it back unencrypted; configure the provider that sealed it"
            )

    def _sealed_on_disk(self, path: Path) -> bool:
        try:
            return is_sealed(self._read_bytes(path))
        except OSError:
            return False

    def secure(self, now: float) -> list[str]:
        """With a sealer: seal each plaintext private file (read once, written sealed), then
        mark state_dir encrypted. The names of the files sealed; SealError if the provider
        fails (call again later: nothing is lost, nothing is written in plaintext)."""
        if self.sealer is None:
            self.check_encryption()
            return []
        marked = self.encrypted()
        sealed: list[str] = []
        for path in (self.lkg_path, self.signer_path):  # audit.key is never plaintext
            try:
                raw = self._read_bytes(path)
            except OSError:
                continue
            if is_sealed(raw) or marked:  # plaintext after the mark is refused when read
                continue
            if path == self.lkg_path:
                recorded = self._recorded_lkg_sha256()
                if recorded is not None and hashlib.sha256(raw).hexdigest() != recorded:
                    continue  # not the recorded file: verified_lkg refuses it by name
                self._store_lkg(self.sealer.seal(path, raw), raw, self.load_history())
            else:
                write_atomic(path, self.sealer.seal(path, raw), STATE_MODE)
            sealed.append(path.name)
        if not marked:
            doc = {"version": 1, "encryption": self.sealer.name, "since": now}
            self._write_json(self.encryption_path, doc)
        return sealed

    def rewrap(self, previous: Sealer | None = None) -> list[tuple[str, SealedInfo, SealedInfo]]:
        """Re-seal every sealed private file under the provider's current key version (a
        fresh data key each): (file name, sealed with, sealed now). ``previous``: the
        sealer of another provider, to open files it sealed (a move between providers).
        Hold the lock: the last-known-good's digest in history changes too."""
        assert self.sealer is not None
        done: list[tuple[str, SealedInfo, SealedInfo]] = []
        for path in self.private_paths:
            try:
                raw = self._read_bytes(path)
            except OSError:
                continue
            if not is_sealed(raw):
                continue
            openers = [self.sealer] if previous is None else [previous, self.sealer]
            opener, plain = open_with(path, raw, openers)
            before = opener.info(path, raw)
            if path == self.lkg_path:  # a replaced file is not re-sealed
                where = f"last-known-good ({path})"
                self._check_lkg_digest(raw, plain, self._recorded_lkg_sha256(), where)
            fresh = self.sealer.seal(path, plain)
            if path == self.lkg_path:
                self._store_lkg(fresh, plain, self.load_history())
            else:
                write_atomic(path, fresh, STATE_MODE)
            done.append((path.name, before, self.sealer.info(path, fresh)))
        return done

    def _sealed(self, path: Path, plaintext: bytes) -> bytes:
        return plaintext if self.sealer is None else self.sealer.seal(path, plaintext)

    def _opened(self, path: Path, raw: bytes) -> bytes:
        """The plaintext of a private file; SealError when it cannot or must not be read."""
        if is_sealed(raw):
            if self.sealer is None:
                raise SealError(str(path), "is encrypted, but [state] encryption is not configured")
            return self.sealer.open(path, raw)
        if self.sealer is not None and self.encrypted():
            raise SealError(
                str(path),
                f"is plaintext, but state_dir is encrypted ({self.encryption_path.name}):"
                " written by something other than keysetd; refused",
            )
        return raw

    def ensure(self) -> None:
        """Create the directory (0700) if it is missing."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state_dir {self.directory}: {exc.strerror or exc}") from exc

    def clean(self) -> None:
        """Drop temp files a crash left behind; only the lock holder may do this."""
        clean_temp_files(self.directory)

    def lock(self) -> None:
        """Hold an exclusive lock so two daemons never share one state_dir."""
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"state_dir {self.directory} is in use by another keysetd (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self.clean()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write_json(self, path: Path, value: object, *, durable: bool = True) -> None:
        write_atomic(path, canonical_json(value) + b"\n", STATE_MODE, durable=durable)

    def _read_json(self, path: Path) -> Any:
        """The parsed file, or None when absent; a corrupt file reads as absent."""
        try:
            return json.loads(self._read_bytes(path))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _read_bytes(path: Path) -> bytes:
        """The file's bytes; OSError for anything but a regular file (a FIFO would hang)."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            return handle.read(_MAX_STATE_FILE)

    def load_lkg(self) -> LastKnownGood | None:
        """The last-known-good as the file holds it, unchecked; None when absent or corrupt."""
        try:
            return _parse_lkg(self._opened(self.lkg_path, self._read_bytes(self.lkg_path)))
        except (OSError, ValueError, SealError):
            return None

    def verified_lkg(self) -> LastKnownGood | None:
        """The last-known-good if it is the file history recorded; None when there is none.

        Raises UntrustedLastKnownGood, naming the file, when it is missing though
        recorded, unreadable, corrupt, or another file than the one recorded; SealError
        when it is encrypted and cannot be opened now (key provider down, wrong key).
        """
        path, recorded = self.lkg_path, self._recorded_lkg_sha256()
        where = f"last-known-good ({path})"
        try:
            raw = self._read_bytes(path)
        except FileNotFoundError:
            if recorded is None:
                return None
            raise UntrustedLastKnownGood(
                f"{where} is missing, though {self.history_path.name} records one"
            ) from None
        except OSError as exc:
            raise UntrustedLastKnownGood(f"{where} cannot be read: {exc.strerror or exc}") from None
        sealed = is_sealed(raw)
        plain = self._opened(path, raw)
        if sealed:  # another document sealed right is still another document
            self._check_lkg_digest(raw, plain, recorded, where)
        try:
            lkg = _parse_lkg(plain)
        except ValueError as exc:
            raise UntrustedLastKnownGood(f"{where} is corrupt: {exc}") from None
        if not sealed:  # what is wrong with a damaged plaintext file comes first
            self._check_lkg_digest(raw, plain, recorded, where)
        return lkg

    def _check_lkg_digest(self, raw: bytes, plain: bytes, recorded: str | None, where: str) -> None:
        """The recorded digest is of the document (the plaintext), or, as recorded before,
        of the sealed bytes: re-sealing the same document needs no history write."""
        actual = hashlib.sha256(plain).hexdigest()
        if recorded is not None and recorded not in (actual, hashlib.sha256(raw).hexdigest()):
            raise UntrustedLastKnownGood(
                f"{where} does not match the digest recorded in {self.history_path}"
                f" (SHA-256 {actual[:12]}, recorded {recorded[:12]}): replaced or edited"
            )

    def save_lkg(self, lkg: LastKnownGood, history: dict[str, KeyRecord]) -> None:
        """Record the new file's SHA-256 in history (``history``: the records history.json
        holds now), then write the file: a crash between leaves it refused, not trusted."""
        plain = canonical_json(_lkg_dict(lkg)) + b"\n"
        self._store_lkg(self._sealed(self.lkg_path, plain), plain, history)

    def _store_lkg(self, raw: bytes, plain: bytes, history: dict[str, KeyRecord]) -> None:
        """Write ``raw`` (``plain``, sealed or not), its document's digest in history first;
        the same document sealed anew (first seal, rewrap) writes no history."""
        previous = self._recorded_lkg_sha256()
        digest = hashlib.sha256(plain).hexdigest()
        if digest != previous:
            self._lkg_sha256 = digest
            try:
                self.save_history(history)
            except BaseException:
                self._lkg_sha256 = previous
                raise
        write_atomic(self.lkg_path, raw, STATE_MODE)

    def load_history(self) -> dict[str, KeyRecord]:
        doc = self._read_json(self.history_path)
        self._lkg_sha256, self._lkg_sha256_read = _lkg_sha256_of(doc), True
        records: dict[str, KeyRecord] = {}
        if isinstance(doc, dict) and isinstance(doc.get("keys"), dict):
            for kid, raw in doc["keys"].items():
                with contextlib.suppress(TypeError):
                    records[kid] = KeyRecord(**raw)
        return records

    def save_history(self, records: dict[str, KeyRecord]) -> None:
        """Write the records, keeping the last-known-good digest history records."""
        doc: dict[str, Any] = {
            "version": 1,
            "keys": {kid: _record_dict(rec) for kid, rec in records.items()},
        }
        if (digest := self._recorded_lkg_sha256()) is not None:
            doc["lkg_sha256"] = digest
        self._write_json(self.history_path, doc)

    def _recorded_lkg_sha256(self) -> str | None:
        if not self._lkg_sha256_read:
            self._lkg_sha256 = _lkg_sha256_of(self._read_json(self.history_path))
            self._lkg_sha256_read = True
        return self._lkg_sha256

    def load_signer(self) -> bytes | None:
        """None when absent or unreadable; SealError when sealed and it cannot be opened."""
        try:
            raw = self._read_bytes(self.signer_path)
        except OSError:
            return None
        return self._opened(self.signer_path, raw)

    def save_signer(self, document: bytes) -> None:
        self.write_signer(self.seal_signer(document))

    def seal_signer(self, document: bytes) -> bytes:
        """What ``write_signer`` writes (sealed with encryption): SealError before any
        signer output moves, not after."""
        return self._sealed(self.signer_path, document)

    def write_signer(self, prepared: bytes) -> None:
        write_atomic(self.signer_path, prepared, STATE_MODE)

    def load_fleet(self) -> bytes | None:
        try:
            return self._read_bytes(self.fleet_path)
        except OSError:
            return None

    def save_fleet(self, document: bytes, *, durable: bool = True) -> None:
        """``durable=False`` when only the renewal time moved (re-derived by the next sync)."""
        write_atomic(self.fleet_path, document, STATE_MODE, durable=durable)

    @property
    def forgets_path(self) -> Path:
        """``keysetd forget`` requests the daemon has yet to carry out."""
        return self.directory / "forget.json"

    def load_revocations(self) -> dict[str, dict[str, Any]]:
        """kid -> {"at": time, "reason": text}; written by ``keysetd revoke``."""
        return self._load_kid_table(self.revocations_path, "revoked")

    def update_revocations(
        self, kid: str, entry: dict[str, Any] | None
    ) -> dict[str, dict[str, Any]]:
        """Add (entry) or lift (None) one revocation, serialised against other writers."""
        with self._kid_table(self.revocations_path, "revoked") as revoked:
            if entry is None:
                revoked.pop(kid, None)
            else:
                revoked[kid] = entry
            return dict(revoked)

    def load_forgets(self) -> dict[str, dict[str, Any]]:
        """kid -> {"at": time, "by": operator}; written by ``keysetd forget``."""
        return self._load_kid_table(self.forgets_path, "forget")

    def request_forget(self, kid: str, entry: dict[str, Any]) -> None:
        with self._kid_table(self.forgets_path, "forget") as requests:
            requests[kid] = entry

    def clear_forgets(self, done: Mapping[str, dict[str, Any]]) -> None:
        """Drop the requests carried out (one made again meanwhile stays)."""
        with self._kid_table(self.forgets_path, "forget") as requests:
            for kid, entry in done.items():
                if requests.get(kid) == entry:
                    del requests[kid]

    def _load_kid_table(self, path: Path, member: str) -> dict[str, dict[str, Any]]:
        doc = self._read_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get(member), dict):
            return {}
        return {k: v for k, v in doc[member].items() if isinstance(v, dict)}

    @contextlib.contextmanager
    def _kid_table(self, path: Path, member: str) -> Iterator[dict[str, dict[str, Any]]]:
        """The table in ``path`` to change in place, saved on exit, under a file lock."""
        lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, STATE_MODE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = self._load_kid_table(path, member)
            before = dict(table)
            yield table
            if table != before or not path.exists():
                self._write_json(path, {"version": 1, member: table})
        finally:
            os.close(lock)

    def load_status(self) -> dict[str, Any] | None:
        doc = self._read_json(self.status_path)
        return doc if isinstance(doc, dict) else None

    def save_status(self, status: dict[str, Any]) -> None:
        """Rewritten every cycle and re-derived by the next one: no fsync needed."""
        self._write_json(self.status_path, status, durable=False)
