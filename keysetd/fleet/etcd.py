"""The etcd store of fleet mode: keys, compare-and-swap on revisions, leases.

Pure of daemon logic: it knows etcd, not keysets. Every call has one total deadline
(``EtcdSettings.timeout``) across all endpoints; an endpoint that does not answer, or answers
that it cannot serve (no leader), is passed over for the next, and the one that answered is
tried first next time. Everything that goes wrong is a ``StoreError`` naming the operation and
the endpoint(s), never a value; so is an answer that is not what etcd's API gives (not JSON,
a field of the wrong type, a value that is not base64, a number out of int64's range).

A call that timed out may still have been applied (the answer was lost): a compare-and-swap
retried elsewhere then fails its compare and reports the value it wrote itself as current.
Callers compare ``CasResult.current`` with what they meant to write.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from keysetd.errors import ConfigError, StoreError
from keysetd.fleet.transport import HttpTransport, PostJson, TransportError, tls_context
from keysetd.httpcheck import check_http_url, safe_url

__all__ = [
    "CasResult",
    "Entry",
    "EtcdSettings",
    "EtcdStore",
    "Guard",
    "LeaseNotFound",
    "prefix_end",
]

_LEASE_NOT_FOUND = 5  # gRPC NOT_FOUND: etcd's "requested lease not found"
_INT64 = 1 << 63
_T = TypeVar("_T")


class LeaseNotFound(StoreError):
    """The lease named in the call has expired or was revoked: grant a new one."""


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Where etcd is and how long one call may take (seconds, across every endpoint)."""

    endpoints: tuple[str, ...]
    timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as etcd holds it. The value stays out of repr: it may be keyset state."""

    key: str
    value: bytes = field(repr=False)
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition on another key for a fenced write: ``key`` exists with this create revision
    (an elected leader's key: ``FleetMember`` fences the shared history with it)."""

    key: str
    create_revision: int


@dataclass(frozen=True, slots=True)
class CasResult:
    """A compare-and-swap's outcome.

    ``current`` is the key after the call: what was written when ``succeeded``, else the value
    that made the compare fail (``None``: absent). ``guard_lost`` is True when a ``Guard`` failed.
    """

    succeeded: bool
    current: Entry | None
    revision: int
    guard_lost: bool = False


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


class _Malformed(Exception):
    """etcd's answer lacks the shape its API gives; the message names the field, never a value."""


def _object(value: object, name: str) -> Mapping[str, Any]:
    """A JSON object field; omitted (None) reads as empty, as etcd omits empty messages."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{name}: not a JSON object")
    return value


def _objects(doc: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """A JSON array of objects; omitted reads as empty."""
    value = doc.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{name}: not a JSON array")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Malformed(f"{name}[{index}]: not a JSON object")
    return value


def _int(doc: Mapping[str, Any], name: str, *, signed: bool = False) -> int:
    """etcd's int64 fields arrive as JSON strings of digits, and are omitted when zero."""
    value = doc.get(name)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (
        isinstance(value, str)
        and 0 < len(value) <= 20
        and value.isascii()
        and value.removeprefix("-").isdigit()
    ):
        number = int(value)
    else:
        raise _Malformed(f"{name}: not an integer")
    if not (-_INT64 if signed else 0) <= number < _INT64:
        raise _Malformed(f"{name}: out of range")
    return number


def _bool(doc: Mapping[str, Any], name: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise _Malformed(f"{name}: not a boolean")
    return value


def _bytes(kv: Mapping[str, Any], name: str) -> bytes:
    value = kv.get(name, "")
    if not isinstance(value, str):
        raise _Malformed(f"{name}: not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed(f"{name}: not base64") from None


def _entry(kv: Mapping[str, Any]) -> Entry:
    if "key" not in kv:
        raise _Malformed("kvs: an entry without a key")
    return Entry(
        key=_bytes(kv, "key").decode(errors="replace"),
        value=_bytes(kv, "value"),
        mod_revision=_int(kv, "mod_revision"),
        create_revision=_int(kv, "create_revision"),
        version=_int(kv, "version"),
        lease=_int(kv, "lease"),
    )


def _first(doc: Mapping[str, Any]) -> Entry | None:
    """The first entry of a range answer, None when there is none."""
    kvs = _objects(doc, "kvs")
    return _entry(kvs[0]) if kvs else None


def _revision(doc: Mapping[str, Any]) -> int:
    """The store's revision from the answer's header: etcd always sends it, at least 1."""
    revision = _int(_object(doc.get("header"), "header"), "revision")
    if revision <= 0:
        raise _Malformed("header.revision: missing")
    return revision


def _cas_result(doc: Mapping[str, Any], guards: Sequence[Guard]) -> CasResult:
    """A compare-and-swap's answer: success holds (put, range), failure a range per key."""
    succeeded = _bool(doc, "succeeded")
    responses = _objects(doc, "responses")
    expected = 2 if succeeded else 1 + len(guards)
    if len(responses) != expected:
        raise _Malformed(f"responses: {len(responses)} where the txn asked for {expected}")
    ranges = [
        _object(r.get("response_range"), f"responses[{i}].response_range")
        for i, r in enumerate(responses)
        if not succeeded or i == 1
    ]
    revision = _revision(doc)
    if succeeded:
        return CasResult(True, _first(ranges[0]), revision)
    lost = False
    for guard, found in zip(guards, ranges[1:], strict=True):
        leader = _first(found)
        if leader is None or leader.create_revision != guard.create_revision:
            lost = True
    return CasResult(False, _first(ranges[0]), revision, guard_lost=lost)


def _lease_id(doc: Mapping[str, Any]) -> int:
    lease = _int(doc, "ID")
    if not lease:
        raise _Malformed("ID: missing")
    return lease


def _keepalive_ttl(doc: Mapping[str, Any]) -> int:
    """A keepalive's TTL: 0 (omitted) when the lease is gone."""
    result = _object(doc.get("result"), "result")
    return max(_int(result or doc, "TTL", signed=True), 0)


def _unchanged(revisions: Mapping[str, int]) -> list[dict[str, str]]:
    """Compares: each key's mod revision is still the given one (0 matches an absent key)."""
    return [
        {"target": "MOD", "key": _b64(key), "mod_revision": str(revision)}
        for key, revision in sorted(revisions.items())
    ]


class EtcdStore:
    """A client of an etcd cluster through its v3 JSON gateway; safe to share between threads."""

    def __init__(self, settings: EtcdSettings, transport: PostJson | None = None) -> None:
        if not settings.endpoints:
            raise ConfigError("fleet: endpoints must name at least one etcd URL")
        for url in settings.endpoints:
            try:
                check_http_url(url)
            except ValueError as exc:
                raise ConfigError(f"fleet: endpoint {safe_url(url)}: {exc}") from None
            if "@" in urlsplit(url).netloc:
                raise ConfigError(f"fleet: endpoint {safe_url(url)}: must not hold credentials")
        if settings.timeout <= 0:
            raise ConfigError("fleet: timeout must be positive")
        if transport is None:
            context = None
            if any(url.startswith("https:") for url in settings.endpoints) or settings.ca_file:
                try:
                    context = tls_context(settings.ca_file, settings.cert_file, settings.key_file)
                except (OSError, ValueError) as exc:
                    files = ", ".join(
                        f for f in (settings.ca_file, settings.cert_file, settings.key_file) if f
                    )
                    reason = getattr(exc, "strerror", None) or type(exc).__name__
                    raise ConfigError(f"fleet: TLS files ({files}): {reason}") from None
            transport = HttpTransport(context)
        self._settings = settings
        self._endpoints = tuple(url.rstrip("/") for url in settings.endpoints)
        self._post = transport
        self._preferred = 0
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    def requests(self) -> dict[str, int]:
        """HTTP requests sent to etcd so far, per operation (failover attempts count)."""
        with self._lock:
            return dict(self._counts)

    # --- keys ------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The key's value and revisions, or None when it is absent."""
        return self._call("range", "/v3/kv/range", {"key": _b64(key)}, _first)

    def list(self, prefix: str) -> list[Entry]:
        """Every key under ``prefix``, in key order."""
        raw = prefix.encode()
        body = {"key": _b64(raw), "range_end": _b64(prefix_end(raw))}
        return self._call(
            "range", "/v3/kv/range", body, lambda doc: [_entry(kv) for kv in _objects(doc, "kvs")]
        )

    def list_at(self, prefix: str) -> tuple[Sequence[Entry], int]:
        """Every key under ``prefix`` and the store revision they were read at."""
        raw = prefix.encode()
        body = {"key": _b64(raw), "range_end": _b64(prefix_end(raw))}
        return self._call(
            "range",
            "/v3/kv/range",
            body,
            lambda doc: ([_entry(kv) for kv in _objects(doc, "kvs")], _revision(doc)),
        )

    def revision(self) -> int:
        """The store's current revision: it moves with every write and every deletion
        (lease expiry included), not with keepalives. A small answer (count only)."""
        body = {"key": _b64(b"\0"), "count_only": True}
        return self._call("range", "/v3/kv/range", body, _revision)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally (bound to ``lease`` if non-zero); the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self._call("put", "/v3/kv/put", body, _revision)

    def cas(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        *,
        lease: int = 0,
        guards: Sequence[Guard] = (),
        unchanged: Mapping[str, int] | None = None,
    ) -> CasResult:
        """Write ``value`` only if the key's mod revision is still ``mod_revision``.

        ``mod_revision`` 0 means create-if-absent. Each guard must also hold, and each key of
        ``unchanged`` must still have that mod revision (0: absent). One request.
        """
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        if mod_revision:
            compare = {"target": "MOD", "key": _b64(key), "mod_revision": str(mod_revision)}
        else:
            compare = {"target": "CREATE", "key": _b64(key), "create_revision": "0"}
        compares = [compare] + [
            {"target": "CREATE", "key": _b64(g.key), "create_revision": str(g.create_revision)}
            for g in guards
        ]
        compares += _unchanged(unchanged or {})
        read = {"request_range": {"key": _b64(key)}}
        failure = [read] + [{"request_range": {"key": _b64(g.key)}} for g in guards]
        body = {"compare": compares, "success": [{"request_put": put}, read], "failure": failure}
        return self._call("txn", "/v3/kv/txn", body, lambda doc: _cas_result(doc, guards))

    def put_if_unchanged(
        self, key: str, value: bytes, unchanged: Mapping[str, int], *, lease: int = 0
    ) -> bool:
        """Write ``value`` only if every key of ``unchanged`` still has that mod revision
        (0: absent); True when written. One request."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {"compare": _unchanged(unchanged), "success": [{"request_put": put}]}
        return self._call("txn", "/v3/kv/txn", body, lambda doc: _bool(doc, "succeeded"))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete the key (only at ``mod_revision`` if given); True if a key was deleted."""
        delete = {"key": _b64(key)}
        if mod_revision is None:
            return self._call(
                "delete", "/v3/kv/deleterange", delete, lambda doc: _int(doc, "deleted") > 0
            )
        body = {
            "compare": [{"target": "MOD", "key": _b64(key), "mod_revision": str(mod_revision)}],
            "success": [{"request_delete_range": delete}],
        }
        return self._call("txn", "/v3/kv/txn", body, lambda doc: _bool(doc, "succeeded"))

    # --- leases ----------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return self._call("lease_grant", "/v3/lease/grant", {"TTL": str(ttl)}, _lease_id)

    def keepalive(self, lease: int) -> int:
        """Renew the lease; its TTL in seconds, 0 when it has expired or was revoked."""
        return self._call(
            "lease_keepalive", "/v3/lease/keepalive", {"ID": str(lease)}, _keepalive_ttl
        )

    def time_to_live(self, lease: int) -> int:
        """Seconds the lease has left without a keepalive; -1 when it is gone."""
        return self._call(
            "lease_ttl",
            "/v3/lease/timetolive",
            {"ID": str(lease)},
            lambda doc: _int(doc, "TTL", signed=True),
        )

    def revoke(self, lease: int) -> bool:
        """Revoke the lease, deleting its keys; False when it was already gone."""
        try:
            self._call("lease_revoke", "/v3/lease/revoke", {"ID": str(lease)}, _revision)
        except LeaseNotFound:
            return False
        return True

    def close(self) -> None:
        close = getattr(self._post, "close", None)
        if callable(close):
            close()

    # --- the one call path -----------------------------------------------------------------

    def _call(
        self,
        operation: str,
        path: str,
        body: Mapping[str, Any],
        read: Callable[[Mapping[str, Any]], _T],
    ) -> _T:
        """POST to one endpoint after another until one answers, within the total deadline;
        ``read`` of the answer. An answer ``read`` finds malformed is a ``StoreError`` at once
        (as a 200 that is not JSON is): an endpoint that garbles is not passed over silently."""
        start = time.monotonic()
        deadline = start + self._settings.timeout
        count = len(self._endpoints)
        failures: dict[str, str] = {}
        pause = 0.05
        while True:
            with self._lock:
                first = self._preferred
            for step in range(count):
                index = (first + step) % count
                endpoint = self._endpoints[index]
                now = time.monotonic()
                if now >= deadline:
                    break
                # Leave the endpoints still to try their share of the time left.
                attempt = now + max((deadline - now) / (count - step), min(deadline - now, 0.25))
                with self._lock:
                    self._counts[operation] += 1
                try:
                    doc = self._post(endpoint + path, body, min(attempt, deadline))
                except TransportError as exc:
                    if not exc.retryable:
                        kind = LeaseNotFound if exc.code == _LEASE_NOT_FOUND else StoreError
                        raise kind(operation, safe_url(endpoint), exc.reason) from None
                    failures[safe_url(endpoint)] = exc.reason
                    continue
                try:
                    result = read(doc)
                except _Malformed as exc:
                    raise StoreError(
                        operation, safe_url(endpoint), f"malformed answer: {exc}"
                    ) from None
                with self._lock:
                    self._preferred = index
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))  # every endpoint refused at once (e.g. no leader yet)
            pause = min(pause * 2, 0.5)
        elapsed = time.monotonic() - start
        names = ", ".join(safe_url(e) for e in self._endpoints)
        detail = "; ".join(f"{url}: {reason}" for url, reason in failures.items())
        raise StoreError(
            operation, names, f"no endpoint answered within {elapsed:.1f} s ({detail or 'no try'})"
        )
