"""Key history as the pipeline holds it, how it is saved, and the revocations it follows.

``records`` may run ahead of history.json by kids only observed so far: they are
saved with the next transition (after the verifier commit), one history write
fewer before consumers are told. ``saved`` is what the file holds, which the
last-known-good digest is written with. Each change is audited before it is
saved, so a crash between the two repeats audit lines rather than losing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keysetd import failpoints
from keysetd.errors import InvalidKeyset
from keysetd.history import Records, apply_revocations, note_reused, observe
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.record import Recorder
from keysetd.state import StateStore

__all__ = ["Ledger"]


class Ledger:
    """The kids keysetd has seen, published and revoked, for one pipeline."""

    def __init__(self, state: StateStore, recorder: Recorder) -> None:
        self._state = state
        self._recorder = recorder
        self.records: Records = state.load_history()
        #: What history.json holds; ``records`` may be ahead by kids only observed so far.
        self.saved: Records = self.records
        #: The kids ``keysetd revoke`` named, as of the last sync.
        self.revoked: frozenset[str] = frozenset()
        #: Some kid waits out ``kid-reused`` (its record has ``reused_since``).
        self._reuse_waiting = any(r.reused_since is not None for r in self.records.values())

    def observe(self, keyset: Keyset, now: float) -> None:
        """Note the kids the source brings (in memory; saved with the next transition)."""
        before = self.records
        self.records = observe(before, keyset, now)
        for key in keyset:
            old = before.get(key.kid)
            if old is not None and old.material != self.records[key.kid].material:
                self._recorder.audit("kid_material_replaced", kid=key.kid)
                event("kid_material_replaced", kid=key.kid)

    def note_reused(self, refused: InvalidKeyset, retention: float, now: float) -> None:
        """Start the wait of each kid refused as ``kid-reused`` (audited once per kid)."""
        kids = [p.kid for p in refused.problems if p.rule == "kid-reused"]
        if kids:
            self.remember(*note_reused(self.records, kids, retention, now))
            self._reuse_waiting = True

    def settle_reuse(self, keyset: Keyset, now: float) -> None:
        """The source is back to the material published: the waits it began end (saved
        at once, so a restart cannot take a stale wait as served)."""
        if self._reuse_waiting:
            self.observe(keyset, now)
            self.remember(self.records)
            self._reuse_waiting = any(r.reused_since is not None for r in self.records.values())

    def sync_forgets(self, now: float) -> None:
        """Carry out ``keysetd forget``: drop each named kid's record, unless signers hold it."""
        requests = self._state.load_forgets()
        if not requests:
            return
        history = dict(self.records)
        events: list[dict[str, Any]] = []
        for kid, request in sorted(requests.items()):
            record = history.get(kid)
            by = request.get("by")
            if (
                record is not None
                and record.active_from is not None
                and record.active_until is None
            ):
                events.append(
                    {
                        "event": "forget_refused",
                        "kid": kid,
                        "by": by,
                        "reason": "signers hold it: rotate to another kid first",
                    }
                )
            elif record is not None:
                del history[kid]
                events.append({"event": "kid_forgotten", "kid": kid, "by": by})
        self.remember(history, events)
        self._state.clear_forgets(requests)

    def remember(self, history: Records, events: Sequence[dict[str, Any]] = ()) -> None:
        """Audit what changed, then persist history (a crash between repeats the lines)."""
        self._recorder.audit_all(events)
        self.records = history
        if history != self.saved:
            self._state.save_history(history)
            failpoints.hit("state.after-history-save")  # failpoint (tests only)
            self.saved = history
        for entry in events:
            event(entry["event"], **{k: v for k, v in entry.items() if k != "event"})

    def sync_revocations(self, now: float) -> bool:
        """Read revocations.json and mark history; True when a kid was newly revoked or lifted."""
        revoked = {
            kid: float(v.get("at", now)) for kid, v in self._state.load_revocations().items()
        }
        self.revoked = frozenset(revoked)
        history, events = apply_revocations(self.records, revoked, now)
        self.remember(history, events)
        return bool(events)
