"""Prometheus metrics of the daemon (``GET /metrics``): kids, fingerprints and counts, no keys.

Imported only when ``[server]`` is configured, so a daemon without a listener
never loads prometheus-client.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from keysetd.pipeline import CycleResult
from keysetd.validate import skipped_counts

__all__ = ["Metrics", "fetch_reason"]

_REASONS = (
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"HTTP 5\d\d|sealed|unavailable", re.I), "server_error"),
    (re.compile(r"HTTP 40[13]|forbidden|denied|permission", re.I), "denied"),
    (re.compile(r"HTTP 4\d\d", re.I), "client_error"),
    (re.compile(r"refused|unreachable|resolve|connection", re.I), "unreachable"),
    (re.compile(r"no such file|not found|missing", re.I), "missing"),
    (re.compile(r"exit(ed)? (code|status)?|killed", re.I), "command_failed"),
    (re.compile(r"larger than|too large|exceeds", re.I), "too_large"),
)


def fetch_reason(message: str) -> str:
    """A small, fixed set of label values for source failures (bounded cardinality)."""
    for pattern, reason in _REASONS:
        if pattern.search(message):
            return reason
    return "other"


class Metrics:
    """The daemon's metric families in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.last_success = Gauge(
            "keysetd_last_success_timestamp_seconds",
            "End of the last successful cycle",
            registry=r,
        )
        self.cycles = Counter("keysetd_cycles", "Cycles run, by outcome", ["outcome"], registry=r)
        self.fetch_errors = Counter(
            "keysetd_fetch_errors", "Source fetch failures, by reason", ["reason"], registry=r
        )
        self.validation_errors = Counter(
            "keysetd_validation_errors", "Rejected keysets, by rule broken", ["rule"], registry=r
        )
        self.keys_skipped = Counter(
            "keysetd_keys_skipped",
            "Keys set aside by validation as unusable (use enc, Ed448, RSA under 2048 bits...)"
            " in the documents it accepted, by rule",
            ["rule"],
            registry=r,
        )
        self._skipped_seen: dict[str, int] = {}
        self.commit_errors = Counter("keysetd_commit_errors", "Failed commits", registry=r)
        self.notify_errors = Counter(
            "keysetd_notify_errors", "Notifier failures after retries", ["notifier"], registry=r
        )
        self.publish_seconds = Histogram(
            "keysetd_publish_duration_seconds",
            "Duration of cycles that changed outputs",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.keyset = Info("keysetd_keyset", "What is published now", registry=r)
        self.keys = Gauge("keysetd_keys", "Published kids by state", ["state"], registry=r)
        self.lkg_age = Gauge(
            "keysetd_last_known_good_age_seconds", "Age of the last good fetch", registry=r
        )
        self.retained = Gauge(
            "keysetd_retained_key_seconds_remaining",
            "Seconds until a retained kid leaves the verifier outputs",
            ["kid"],
            registry=r,
        )
        self._lkg_fetched_at: float | None = None
        self.lkg_age.set_function(self._lkg_age)

    def _lkg_age(self) -> float:
        return float("nan") if self._lkg_fetched_at is None else time.time() - self._lkg_fetched_at

    def observe(self, result: CycleResult, duration: float, status: dict[str, Any]) -> None:
        """Record one cycle and the status the pipeline wrote after it."""
        self.cycles.labels("ok" if result.ok else "failed").inc()
        if result.ok:
            self.last_success.set(time.time())
            if result.changed:
                self.publish_seconds.observe(duration)
        elif result.stage == "fetch":
            self.fetch_errors.labels(fetch_reason(result.error or "")).inc()
        elif result.stage == "validate":
            for rule in result.rules or ("unknown",):
                self.validation_errors.labels(rule).inc()
        else:
            self.commit_errors.inc()
        for notifier in result.failed_notifiers:
            self.notify_errors.labels(notifier).inc()
        for rule, total in skipped_counts().items():
            new = total - self._skipped_seen.get(rule, 0)
            if new > 0:
                self.keys_skipped.labels(rule).inc(new)
            self._skipped_seen[rule] = total
        fetched = status.get("lkg_fetched_at")
        self._lkg_fetched_at = float(fetched) if isinstance(fetched, int | float) else None
        self.keyset.info(
            {
                "active_kid": str(status.get("active_kid") or ""),
                "fingerprint": str(status.get("fingerprint") or ""),
            }
        )
        states: dict[str, int] = {}
        self.retained.clear()
        now = time.time()
        for key in status.get("keys") or []:
            states[key["state"]] = states.get(key["state"], 0) + 1
            if key["state"] == "retained" and key.get("until") is not None:
                self.retained.labels(key["kid"]).set(max(0.0, key["until"] - now))
        self.keys.clear()
        for state, count in states.items():
            self.keys.labels(state).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
