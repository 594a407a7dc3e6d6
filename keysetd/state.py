"""What keysetd remembers in ``state_dir``: last-known-good, key history, status, the lock.

Every file is written through ``atomic.write_atomic`` with mode 0600, so a crash
leaves each one old or new. The status file is what ``keysetd status`` reads, so
it works with or without the HTTP server and while the daemon runs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keysetd.atomic import clean_temp_files, write_atomic
from keysetd.errors import ConfigError
from keysetd.model import canonical_json

__all__ = ["KeyRecord", "LastKnownGood", "StateStore"]

STATE_MODE = 0o600
_MAX_STATE_FILE = 64 << 20


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


_RECORD_FIELDS = tuple(f.name for f in fields(KeyRecord))


def _record_dict(record: KeyRecord) -> dict[str, Any]:
    """A record as JSON-ready dict (dataclasses.asdict deep-copies: 3 s for 10,000 kids)."""
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


class StateStore:
    """Reads and writes the files of one ``state_dir``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None

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
    def audit_path(self) -> Path:
        return self.directory / "audit.jsonl"

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
            with path.open("rb") as handle:
                raw = handle.read(_MAX_STATE_FILE)
            return json.loads(raw)
        except (OSError, ValueError):
            return None

    def load_lkg(self) -> LastKnownGood | None:
        doc = self._read_json(self.lkg_path)
        if not isinstance(doc, dict):
            return None
        try:
            return LastKnownGood(
                data=base64.b64decode(doc["data"], validate=True),
                format=str(doc["format"]),
                origin=str(doc["origin"]),
                fetched_at=float(doc["fetched_at"]),
                fingerprint=str(doc["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            return None

    def save_lkg(self, lkg: LastKnownGood) -> None:
        self._write_json(
            self.lkg_path,
            {
                "data": base64.b64encode(lkg.data).decode(),
                "format": lkg.format,
                "origin": lkg.origin,
                "fetched_at": lkg.fetched_at,
                "fingerprint": lkg.fingerprint,
            },
        )

    def load_history(self) -> dict[str, KeyRecord]:
        doc = self._read_json(self.history_path)
        records: dict[str, KeyRecord] = {}
        if isinstance(doc, dict) and isinstance(doc.get("keys"), dict):
            for kid, raw in doc["keys"].items():
                with contextlib.suppress(TypeError):
                    records[kid] = KeyRecord(**raw)
        return records

    def save_history(self, records: dict[str, KeyRecord]) -> None:
        self._write_json(
            self.history_path,
            {"version": 1, "keys": {kid: _record_dict(rec) for kid, rec in records.items()}},
        )

    def load_signer(self) -> bytes | None:
        try:
            with self.signer_path.open("rb") as handle:
                return handle.read(_MAX_STATE_FILE)
        except OSError:
            return None

    def save_signer(self, document: bytes) -> None:
        write_atomic(self.signer_path, document, STATE_MODE)

    def load_revocations(self) -> dict[str, dict[str, Any]]:
        """kid -> {"at": time, "reason": text}; written by ``keysetd revoke``."""
        doc = self._read_json(self.revocations_path)
        if not isinstance(doc, dict) or not isinstance(doc.get("revoked"), dict):
            return {}
        return {k: v for k, v in doc["revoked"].items() if isinstance(v, dict)}

    def update_revocations(
        self, kid: str, entry: dict[str, Any] | None
    ) -> dict[str, dict[str, Any]]:
        """Add (entry) or lift (None) one revocation, serialised against other writers."""
        lock = os.open(self.directory / "revocations.lock", os.O_RDWR | os.O_CREAT, STATE_MODE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            revoked = self.load_revocations()
            if entry is None:
                revoked.pop(kid, None)
            else:
                revoked[kid] = entry
            self._write_json(self.revocations_path, {"version": 1, "revoked": revoked})
            return revoked
        finally:
            os.close(lock)

    def load_status(self) -> dict[str, Any] | None:
        doc = self._read_json(self.status_path)
        return doc if isinstance(doc, dict) else None

    def save_status(self, status: dict[str, Any]) -> None:
        """Rewritten every cycle and re-derived by the next one: no fsync needed."""
        self._write_json(self.status_path, status, durable=False)
