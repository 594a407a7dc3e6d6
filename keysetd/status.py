"""The status document (``keysetd status --json``, ``GET /status``) and readiness, from state_dir.

Both read what the daemon records in ``status.json``, so they agree, work while
the daemon runs, and need no connection to it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from keysetd.state import StateStore

__all__ = ["readiness", "status_document"]


def status_document(state_dir: Path, now: float | None = None) -> dict[str, Any]:
    """At least fingerprint, active_kid, published_kids, last_error and lkg_age_seconds."""
    recorded = StateStore(state_dir).load_status() or {}
    now = time.time() if now is None else now
    fetched = recorded.get("lkg_fetched_at")
    doc: dict[str, Any] = {
        "fingerprint": recorded.get("fingerprint"),
        "active_kid": recorded.get("active_kid"),
        "published_kids": recorded.get("published_kids", []),
        "last_error": recorded.get("last_error"),
        "lkg_age_seconds": _age(now, fetched),
    }
    doc.update({k: v for k, v in recorded.items() if k not in doc and k != "lkg_fetched_at"})
    return doc


def _age(now: float, fetched: object) -> float | None:
    """Seconds since ``fetched``; None for anything that is not a usable time."""
    if isinstance(fetched, bool) or not isinstance(fetched, int | float):
        return None
    try:
        age = round(now - fetched, 3)
    except OverflowError:  # an integer beyond any float
        return None
    return age if math.isfinite(age) else None


#: /healthz fails when one cycle runs longer than this (or 3x the source timeout); a fleet
#: replica's keepalive thread lets its lease lapse after as long without a sync.
STUCK_CYCLE_MIN = 120.0


def stuck_limit(source_timeout: float) -> float:
    """Seconds after which a cycle (or a loop without one) counts as stuck."""
    return max(STUCK_CYCLE_MIN, 3 * source_timeout)


def readiness(doc: dict[str, Any], max_staleness: float) -> tuple[bool, str]:
    """Ready when outputs were published and the last good fetch is younger than the limit."""
    if doc.get("fingerprint") is None:
        return False, "nothing published yet"
    if state_error := doc.get("state_error"):
        # Encrypted state cannot be opened or sealed (key provider down): outputs stay as
        # they are, but nothing new is kept, so this replica is not ready.
        return False, f"encrypted state unusable: {state_error}"
    age = doc.get("lkg_age_seconds")
    if age is None or age > max_staleness:
        return False, f"last good fetch {age}s ago, older than max_staleness {max_staleness:g}s"
    fleet = doc.get("fleet")
    if isinstance(fleet, dict) and fleet.get("store") != "ok":
        # Serving is what readiness is about: outputs stay, only rotation waits for etcd.
        return (
            True,
            "ready; fleet store unreachable: planning from the last fleet snapshot, signers stay",
        )
    return True, "ready"
