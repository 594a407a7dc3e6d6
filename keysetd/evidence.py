"""``keysetd evidence``: a reproducible record of what verifiers get, for a change ticket.

``build_evidence`` is pure: the same plan, event id and previous summary give the
same bytes, so nothing time-dependent goes in. ``write_evidence`` puts the files in
``<workdir>/<event_id>/`` through the one writer. Three files:

- ``keyset.json``: the published verifier keyset, active key first then by kid,
  public members only; an HMAC key's secret ``k`` is replaced by ``k_sha256``,
  the SHA-256 (hex) of the raw secret bytes.
- ``summary.json``: ``event_id``, ``active_kid``, ``kids`` (sorted), ``key_count``,
  ``fingerprint`` (the plan's fingerprint, the value ``status`` and the audit log
  show), ``keyset_sha256`` (the SHA-256 of ``keyset.json``'s bytes),
  ``previous_active_kid`` and ``active_kid_changed``. With no previous summary
  both are null/false: there is nothing to have changed from.
- ``fingerprint.sha256``: ``<keyset_sha256>  keyset.json``, so ``sha256sum -c``
  checks the keyset inside the directory.

With a ``Capture`` (what ``keysetd evidence`` always passes: when and from where the
keyset was read), ``summary.json`` also carries the fields of open-rgs's
``keyset_rotation_evidence.sh``: ``keys_count`` (= ``key_count``), ``captured_at_utc``
(``YYYY-MM-DDTHH:MM:SSZ``), ``source_mode`` (the source type the keyset was fetched
from just now, ``file``/``command``/... , or ``last-known-good`` when that fetch failed
and the last published keyset stands in), ``rotation_state`` (``initial`` with no
previous summary, else ``rotated`` or ``unchanged``), and keysetd's ``fetched_live``.
The bytes then depend on the capture time, which is the point of that field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keysetd.atomic import fsync_dir, write_atomic
from keysetd.crypto import b64u_decode
from keysetd.model import PRIVATE_MEMBERS, Key
from keysetd.plan import Plan

__all__ = [
    "FALLBACK_SOURCE_MODE",
    "FILE_MODE",
    "FINGERPRINT_FILE",
    "KEYSET_FILE",
    "SUMMARY_FILE",
    "Capture",
    "build_evidence",
    "check_component",
    "default_event_id",
    "write_evidence",
]

KEYSET_FILE = "keyset.json"
SUMMARY_FILE = "summary.json"
FINGERPRINT_FILE = "fingerprint.sha256"
FILE_MODE = 0o644
DIR_MODE = 0o755

#: ``source_mode`` when the source failed and the last-known-good was used instead.
FALLBACK_SOURCE_MODE = "last-known-good"

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Every private member of every key type, "k" included: none may reach a file.
_SECRET_MEMBERS = frozenset(name for names in PRIVATE_MEMBERS.values() for name in names)


def check_component(name: str, what: str = "event id") -> str:
    """``name`` when it is one safe path component ([A-Za-z0-9._-]{1,128}, not . or ..)."""
    if not _SAFE_COMPONENT.fullmatch(name) or name in {".", ".."}:
        raise ValueError(
            f"{what} {name[:40]!r} is not a single path component of [A-Za-z0-9._-], 1-128 long"
        )
    return name


@dataclass(frozen=True, slots=True)
class Capture:
    """When and from where the keyset of the evidence was read."""

    captured_at: float  # Unix seconds
    source_mode: str  # the source type, or FALLBACK_SOURCE_MODE
    fetched_live: bool


def default_event_id(now: float) -> str:
    """``keyset-<UTC %Y%m%dT%H%M%SZ>``: open-rgs's event id when none is given."""
    return time.strftime("keyset-%Y%m%dT%H%M%SZ", time.gmtime(now))


def _dump(doc: object) -> bytes:
    """Indented ASCII JSON, keys sorted, trailing newline: byte-stable for the same state."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def _evidence_jwk(key: Key) -> dict[str, str | None]:
    """The public JWK; for an HMAC key the SHA-256 of the secret instead of the secret."""
    jwk: dict[str, str | None] = {
        name: value for name, value in key.public_jwk().items() if name not in _SECRET_MEMBERS
    }
    if key.is_symmetric:
        secret = key.member("k")
        jwk["k_sha256"] = (
            hashlib.sha256(b64u_decode(secret)).hexdigest() if secret is not None else None
        )
    return jwk


def _previous_active_kid(previous: Mapping[str, Any] | None) -> str | None:
    if previous is None:
        return None
    if not isinstance(previous, Mapping):  # a caller's json.loads can give any type
        raise ValueError("the previous summary is not a JSON object")
    if "active_kid" not in previous:
        raise ValueError('the previous summary has no "active_kid"')
    kid = previous["active_kid"]
    if kid is not None and not isinstance(kid, str):
        raise ValueError('the previous summary\'s "active_kid" is neither a string nor null')
    return kid


def build_evidence(
    plan: Plan,
    event_id: str,
    previous_summary: Mapping[str, Any] | None,
    capture: Capture | None = None,
) -> dict[str, bytes]:
    """The evidence files' bytes by file name; ValueError for an unsafe event id or bad summary.

    ``capture`` adds the open-rgs summary fields (module docstring).
    """
    check_component(event_id)
    previous_kid = _previous_active_kid(previous_summary)
    verifier = plan.verifier
    keyset_bytes = _dump(
        {
            "active_kid": plan.active_kid,
            "keys": [_evidence_jwk(key) for key in verifier.ordered()],
        }
    )
    keyset_sha256 = hashlib.sha256(keyset_bytes).hexdigest()
    summary: dict[str, Any] = {
        "event_id": event_id,
        "active_kid": plan.active_kid,
        "kids": sorted(verifier.kids),
        "key_count": len(verifier),
        "fingerprint": plan.fingerprint,
        "keyset_sha256": keyset_sha256,
        "previous_active_kid": previous_kid,
        "active_kid_changed": previous_summary is not None and previous_kid != plan.active_kid,
    }
    if capture is not None:
        summary.update(
            keys_count=len(verifier),
            captured_at_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(capture.captured_at)),
            source_mode=capture.source_mode,
            fetched_live=capture.fetched_live,
            rotation_state=(
                "initial"
                if previous_summary is None
                else "rotated"
                if summary["active_kid_changed"]
                else "unchanged"
            ),
        )
    return {
        KEYSET_FILE: keyset_bytes,
        SUMMARY_FILE: _dump(summary),
        FINGERPRINT_FILE: f"{keyset_sha256}  {KEYSET_FILE}\n".encode("ascii"),
    }


def _event_directory(workdir: Path, event_id: str) -> Path:
    """``<workdir>/<event_id>``, created 0755 if new; never a symlink or another file type."""
    directory = workdir / check_component(event_id)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            raise NotADirectoryError(
                f"{directory} exists and is not a directory (a symlink is refused)"
            ) from None
    else:
        os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask
        fsync_dir(workdir)
    return directory


def write_evidence(workdir: Path, event_id: str, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into ``<workdir>/<event_id>/`` atomically, mode 0644; the directory."""
    for name in files:
        check_component(name, "evidence file name")
    directory = _event_directory(workdir, event_id)
    for name, data in files.items():
        write_atomic(directory / name, data, FILE_MODE)
    return directory
