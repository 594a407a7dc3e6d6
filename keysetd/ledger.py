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
from keysetd.history import (
    Records,
    apply_revocations,
    confirm_material,
    forget,
    note_reused,
    observe,
    reused_kids,
)
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
        #: The kids ``keysetd revoke`` named (kid -> when), as of the last sync.
        self.revoked: dict[str, float] = {}
        #: Some kid waits for other material (``kid-reused``, ``forget``): ``reused_since``.
        self._waiting = any(r.reused_since is not None for r in self.records.values())

    def observe(self, keyset: Keyset, now: float) -> None:
        """Note the kids the source brings (in memory; saved with the next transition);
        a kid whose material changed starts a new record, audited."""
        before = self.records
        self.records = observe(before, keyset, now)
        for key in keyset:
            old = before.get(key.kid)
            if old is not None and old.material != self.records[key.kid].material:
                self._recorder.audit("kid_material_replaced", kid=key.kid)
                event("kid_material_replaced", kid=key.kid)

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

    def note_reused(self, refused: InvalidKeyset, retention: float, now: float) -> None:
        """Start the wait of each kid refused as ``kid-reused`` (audited once per kid)."""
        kids = reused_kids(refused)
        if kids:
            self.remember(*note_reused(self.records, kids, retention, now))
            self._waiting = True

    def confirm(self, keyset: Keyset) -> None:
        """A snapshot just fetched carries the material on record: the waits for other
        material it shows were needless end (saved at once, so a restart cannot take a
        stale wait for one that is over)."""
        if self._waiting:
            self.remember(confirm_material(self.records, keyset))
            self._waiting = any(r.reused_since is not None for r in self.records.values())

    def sync_forgets(self) -> None:
        """Carry out the ``keysetd forget`` requests written since the last cycle."""
        requests = self._state.load_forgets()
        if not requests:
            return
        history, events = self.records, []
        for kid, request in sorted(requests.items()):
            history, done = forget(history, kid)
            events += [{**entry, "by": request.get("by")} for entry in done]
        self.remember(history, events)
        self._waiting = True
        self._state.clear_forgets(requests)

    def sync_revocations(self, now: float) -> bool:
        """Read revocations.json and mark history; True when a kid was newly revoked or lifted."""
        revoked = {
            kid: float(v.get("at", now)) for kid, v in self._state.load_revocations().items()
        }
        self.revoked = revoked
        history, events = apply_revocations(self.records, revoked, now)
        self.remember(history, events)
        return bool(events)
