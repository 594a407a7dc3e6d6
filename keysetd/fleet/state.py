"""The documents fleet replicas share under the etcd prefix, and their canonical JSON.

Three documents, pure values with no I/O:

- the key history: the same ``KeyRecord`` per kid as ``state_dir/history.json``, in the same
  ``{"version": 1, "keys": {kid: record}}`` shape (without ``lkg_sha256``, which is local);
- the revocations: ``{"version": 1, "revoked": {kid: {"at": t, "reason": text}}}``, the shape
  ``keysetd revoke`` writes to ``revocations.json``;
- a replica's acknowledgement (``Ack``): which kids its verifier outputs hold and since when,
  their fingerprint, the kid its signer outputs use, and when it was written.

An etcd value may come from another keysetd version or from a hand with ``etcdctl put``: the
decoders check every field and raise ``FleetDocumentError`` naming the document and the field
(never the value), so a replica refuses the document instead of crashing or planning from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from keysetd.history import Records
from keysetd.model import canonical_json
from keysetd.state import KeyRecord

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "Ack",
    "FleetDocumentError",
    "Revocation",
    "decode_ack",
    "decode_history",
    "decode_revocations",
    "encode_ack",
    "encode_history",
    "encode_revocations",
]

VERSION = 1
#: etcd's default request limit is 1.5 MiB; a larger value is not one keysetd wrote.
MAX_DOCUMENT_BYTES = 2 << 20
_OPTIONAL_TIMES = (
    "reused_since",
    "left_source_at",
    "first_published",
    "active_from",
    "active_until",
    "revoked",
    "retired_at",
)


class FleetDocumentError(ValueError):
    """A shared document is malformed; the message names the document and the field."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One break-glass revocation: when, and why (free text from the operator)."""

    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """What one replica's outputs hold, written under its lease after its verifier notifiers
    succeeded: present in etcd = the replica is live and counted.

    ``kids`` maps each kid its verifier outputs hold to the time they began holding it without
    a gap (activation waits ``activation_delay`` after the latest of these among live replicas);
    ``signing`` is the kid its signer outputs use (None: signing withheld), so no replica stops
    publishing a kid another live replica still signs with. ``fingerprint`` is the verifier
    keyset's, or empty while the outputs are between two commits (the ack shrank first).
    """

    replica_id: str
    at: float
    fingerprint: str
    kids: Mapping[str, float] = field(default_factory=dict)
    signing: str | None = None

    def holds(self, kid: str) -> bool:
        return kid in self.kids


# -- checks ----------------------------------------------------------------------------------


def _load(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise FleetDocumentError(f"{what}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise FleetDocumentError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise FleetDocumentError(f"{what}: not a JSON object")
    version = doc.get("version")
    if version != VERSION or isinstance(version, bool):
        raise FleetDocumentError(f"{what}.version: expected {VERSION} (another keysetd's?)")
    return doc


def _time(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FleetDocumentError(f"{where}: not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise FleetDocumentError(f"{where}: not a finite time >= 0") from None
    if not math.isfinite(number) or number < 0:
        raise FleetDocumentError(f"{where}: not a finite time >= 0")
    return number


def _text(value: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise FleetDocumentError(f"{where}: not a {'' if empty else 'non-empty '}string")
    return value


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FleetDocumentError(f"{where}: not a JSON object")
    return value


def _unknown(doc: Mapping[str, Any], known: set[str], where: str) -> None:
    if extra := sorted(set(doc) - known):
        raise FleetDocumentError(f"{where}: unknown field {extra[0]!r}")


# -- history ---------------------------------------------------------------------------------

_RECORD_FIELDS = {f.name for f in fields(KeyRecord)}


def encode_history(records: Mapping[str, KeyRecord]) -> bytes:
    """Canonical JSON: the same bytes for the same records, on every replica."""
    keys = {
        kid: {
            name: getattr(record, name)
            for name in sorted(_RECORD_FIELDS)
            # Left out while unset: replicas of an older keysetd read the document too.
            if name != "reused_since" or record.reused_since is not None
        }
        for kid, record in records.items()
    }
    return canonical_json({"version": VERSION, "keys": keys})


def _record(kid: str, raw: object, where: str) -> KeyRecord:
    doc = _table(raw, where)
    _unknown(doc, _RECORD_FIELDS, where)
    if doc.get("kid") != kid:
        raise FleetDocumentError(f"{where}.kid: does not match its key")
    times = {
        name: None if doc.get(name) is None else _time(doc[name], f"{where}.{name}")
        for name in _OPTIONAL_TIMES
    }
    if "first_seen" not in doc:
        raise FleetDocumentError(f"{where}.first_seen: missing")
    jwk = doc.get("public_jwk")
    if jwk is not None:
        table = _table(jwk, f"{where}.public_jwk")
        for name, value in table.items():
            _text(value, f"{where}.public_jwk.{name}", empty=True)
        for name in ("kty", "alg"):
            if name not in table:
                raise FleetDocumentError(f"{where}.public_jwk.{name}: missing")
        if any(name in table for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise FleetDocumentError(f"{where}.public_jwk: holds private members")
    return KeyRecord(
        kid=kid,
        material=_text(doc.get("material"), f"{where}.material"),
        first_seen=_time(doc["first_seen"], f"{where}.first_seen"),
        public_jwk=dict(jwk) if jwk is not None else None,
        **times,
    )


def decode_history(raw: bytes) -> Records:
    """The records of a shared history document; FleetDocumentError naming what is wrong."""
    doc = _load(raw, "fleet history")
    _unknown(doc, {"version", "keys"}, "fleet history")
    keys = _table(doc.get("keys"), "fleet history.keys")
    records: Records = {}
    for kid, raw_record in keys.items():
        _text(kid, "fleet history.keys (a kid)")
        records[kid] = _record(kid, raw_record, f"fleet history.keys.{kid}")
    return records


# -- revocations -----------------------------------------------------------------------------


def encode_revocations(revoked: Mapping[str, Revocation]) -> bytes:
    body = {kid: {"at": r.at, "reason": r.reason} for kid, r in revoked.items()}
    return canonical_json({"version": VERSION, "revoked": body})


def decode_revocations(raw: bytes) -> dict[str, Revocation]:
    doc = _load(raw, "fleet revocations")
    _unknown(doc, {"version", "revoked"}, "fleet revocations")
    table = _table(doc.get("revoked"), "fleet revocations.revoked")
    out: dict[str, Revocation] = {}
    for kid, raw_entry in table.items():
        where = f"fleet revocations.revoked.{kid}"
        entry = _table(raw_entry, where)
        _unknown(entry, {"at", "reason"}, where)
        reason = _text(entry.get("reason", ""), f"{where}.reason", empty=True)
        out[kid] = Revocation(at=_time(entry.get("at"), f"{where}.at"), reason=reason)
    return out


# -- acknowledgements ------------------------------------------------------------------------

_ACK_FIELDS = {"version", "replica_id", "at", "fingerprint", "kids", "signing"}


def encode_ack(ack: Ack) -> bytes:
    return canonical_json(
        {
            "version": VERSION,
            "replica_id": ack.replica_id,
            "at": ack.at,
            "fingerprint": ack.fingerprint,
            "kids": dict(ack.kids),
            "signing": ack.signing,
        }
    )


def decode_ack(raw: bytes) -> Ack:
    """A replica's acknowledgement; FleetDocumentError naming what is wrong."""
    doc = _load(raw, "fleet ack")
    _unknown(doc, _ACK_FIELDS, "fleet ack")
    replica = _text(doc.get("replica_id"), "fleet ack.replica_id")
    where = f"fleet ack of {replica}"
    kids_table = _table(doc.get("kids"), f"{where}.kids")
    kids = {
        _text(kid, f"{where}.kids (a kid)"): _time(since, f"{where}.kids.{kid}")
        for kid, since in kids_table.items()
    }
    signing = doc.get("signing")
    if signing is not None:
        _text(signing, f"{where}.signing")
        if signing not in kids:
            raise FleetDocumentError(f"{where}.signing: a kid its verifier outputs do not hold")
    return Ack(
        replica_id=replica,
        at=_time(doc.get("at"), f"{where}.at"),
        fingerprint=_text(doc.get("fingerprint"), f"{where}.fingerprint", empty=True),
        kids=kids,
        signing=signing,
    )
