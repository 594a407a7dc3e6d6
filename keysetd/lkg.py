"""The last-known-good: kept after each good cycle, trusted only as history recorded it.

After a restart with a failing source the pipeline publishes it again; a file
that is not the one history recorded the digest of (corrupt, swapped, or older
after a crash) is refused by name (log, audit, ``status.lkg_error``) and the
outputs stay as they are. Each new reason is audited once, so a refusal repeated
every cycle does not flood the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from keysetd import failpoints
from keysetd.errors import SealError
from keysetd.history import Records
from keysetd.log import event
from keysetd.record import Recorder
from keysetd.state import LastKnownGood, StateStore, UntrustedLastKnownGood

__all__ = ["Keeper"]


class Keeper:
    """Saves, loads and refuses the last-known-good of one state_dir."""

    def __init__(self, state: StateStore, recorder: Recorder) -> None:
        self._state = state
        self._recorder = recorder

    @property
    def where(self) -> str:
        """How errors name the file."""
        return f"last-known-good ({self._state.lkg_path})"

    def keep(self, lkg: LastKnownGood, saved_history: Records) -> None:
        """After a good cycle (and its notifiers): its digest write costs consumers nothing."""
        self._state.save_lkg(lkg, saved_history)
        self._recorder.status.pop("lkg_error", None)  # a good one replaces a refused one
        failpoints.hit("state.after-lkg-save")  # failpoint (tests only)

    def trusted(self) -> LastKnownGood | None:
        """The last-known-good to publish again; None when there is none or it was refused."""
        try:
            return self._state.verified_lkg()
        except UntrustedLastKnownGood as exc:
            self.refuse(str(exc))
            return None
        except SealError as exc:  # the key provider is down, or the file does not open
            self._recorder.status["state_error"] = str(exc)
            self.refuse(str(exc))
            return None

    def refuse(self, message: str) -> None:
        """Log every refusal; audit and put in status each new reason once (no flood)."""
        path = str(self._state.lkg_path)
        event("lkg_unusable", logging.ERROR, path=path, error=message)
        status = self._recorder.status
        if status.get("lkg_error") != message:
            status["lkg_error"] = message
            self._recorder.audit("lkg_refused", path=path, reason=message)

    def republished(
        self, lkg: LastKnownGood, fingerprint: str | None, changed: Sequence[str]
    ) -> None:
        """Record that outputs now hold the last-known-good again."""
        status = self._recorder.status
        status.pop("lkg_error", None)
        status.pop("state_error", None)  # it opened: the key provider answers again
        status["lkg_fetched_at"] = lkg.fetched_at
        event("published_last_known_good", fingerprint=fingerprint, outputs=",".join(changed))
        self._recorder.audit("published_last_known_good", fingerprint=fingerprint)
