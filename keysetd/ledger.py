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
from keysetd.history import Records, apply_revocations, observe
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

    def observe(self, keyset: Keyset, now: float) -> None:
        """Note the kids the source brings (in memory; saved with the next transition)."""
        self.records = observe(self.records, keyset, now)

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
