"""Leader election on an etcd lease, as etcd's ``concurrency.Election`` does it.

Each candidate holds one key, ``<prefix>/<lease id in hex>``, bound to its lease and created
with a create-if-absent compare. The leader is the candidate whose key was created first (the
lowest create revision); when its lease expires or is revoked, or it resigns, its key goes and
the next oldest leads. Nothing blocks: ``campaign`` is called again on every refresh.

A leader fences its writes with ``guard()``: they succeed only while its key still stands.
"""

from __future__ import annotations

from dataclasses import dataclass

from keysetd.fleet.etcd import Entry, EtcdStore, Guard

__all__ = ["Election", "Leader"]


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads: the value it proclaimed (its replica id), its key and lease."""

    value: bytes
    key: str
    create_revision: int
    lease: int


def _leader(entry: Entry) -> Leader:
    return Leader(entry.value, entry.key, entry.create_revision, entry.lease)


class Election:
    """One candidate of the election under ``prefix``, on ``lease`` (kept alive by the caller)."""

    def __init__(self, store: EtcdStore, prefix: str, lease: int, value: bytes) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self._lease = lease
        self._value = value
        self._key = f"{self._prefix}{lease:x}"
        self._create_revision = 0

    @property
    def key(self) -> str:
        return self._key

    def campaign(self) -> bool:
        """Stand (once: the key is created if absent); True when this candidate leads now."""
        result = self._store.cas(self._key, self._value, 0, lease=self._lease)
        if result.current is None:  # absent after the call: the lease is gone
            self._create_revision = 0
            return False
        self._create_revision = result.current.create_revision
        leader = self._store.oldest(self._prefix)
        return leader is not None and leader.key == self._key

    def leader(self) -> Leader | None:
        """The current leader, or None when nobody stands."""
        entry = self._store.oldest(self._prefix)
        return _leader(entry) if entry is not None else None

    def guard(self) -> Guard:
        """The condition a leader's fenced write carries: this candidate's key still stands."""
        return Guard(self._key, self._create_revision)

    def resign(self) -> None:
        """Step down: delete this candidate's key (the lease stays the caller's)."""
        entry = self._store.get(self._key)
        if entry is not None and entry.lease == self._lease:
            self._store.delete(self._key, entry.mod_revision)
        self._create_revision = 0
