"""Managed keys (the A/B rotating key manager): what the owned source file should hold now.

keysetd writes the next key into its own file source ahead of time, with
``active_kid`` already pointing at it; the planner then holds signers on the
old key until the new one has been published for ``activation_delay``. Once
signers have moved, the old key is dropped from the source and stays published
from history for ``retention``. So the file holds at most two keys, and every
timing guarantee comes from the planner, not from this schedule.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from keysetd.crypto import generate
from keysetd.model import Keyset
from keysetd.plan import current_signer_kid
from keysetd.state import KeyRecord

__all__ = ["RotationStep", "VersionStep", "new_kid", "next_source", "next_version"]


@dataclass(frozen=True, slots=True)
class RotationStep:
    """The source keyset to write (None: nothing to do now) and when to look again."""

    keyset: Keyset | None
    reason: str
    next_at: float | None


@dataclass(frozen=True, slots=True)
class VersionStep:
    """For a source that rotates its own keys: create the next version now, or look again."""

    due: bool
    reason: str
    next_at: float | None
    #: The kid signers use, and the kids they left at least the retention ago (retirable).
    signer_kid: str | None = None
    left: tuple[str, ...] = ()


def next_version(
    keyset: Keyset | None,
    history: Mapping[str, KeyRecord],
    *,
    every: float,
    activation_delay: float,
    now: float,
    retention: float = 0.0,
) -> VersionStep:
    """When a KMS-held key (vault_transit) gets its next version: the file schedule, less
    the writing; and which versions signers left long enough ago to retire.

    Retirable: left by signers at least ``retention`` (and ``activation_delay``) ago, so no
    live token and no signer still reading an old signer output needs it in the KMS.
    """
    signer_kid = current_signer_kid(history)
    if keyset is None or signer_kid is None or keyset.active_kid is None:
        return VersionStep(False, "waiting for the first publish", None)
    wait = max(retention, activation_delay)
    left: list[str] = []
    later: list[float] = []
    for kid in keyset.kids:
        until = history[kid].active_until if kid in history else None
        if kid == signer_kid or until is None:
            continue
        if now >= until + wait:
            left.append(kid)
        else:
            later.append(until + wait)
    retire = min(later, default=None)
    if keyset.active_kid != signer_kid:
        reason = f"{keyset.active_kid} waits for its activation delay"
        return VersionStep(False, reason, retire, signer_kid, tuple(left))
    started = history[signer_kid].active_from or now
    due = started + max(0.0, every - activation_delay)
    if now < due:
        when = due if retire is None else min(due, retire)
        return VersionStep(False, f"next version due at {due:.0f}", when, signer_kid, tuple(left))
    reason = f"signers use {signer_kid} since {started:.0f}"
    return VersionStep(True, reason, None, signer_kid, tuple(left))


def new_kid(prefix: str, now: float) -> str:
    """A sortable, unique kid: ``<prefix><UTC time>-<random>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{prefix}{stamp}-{secrets.token_hex(3)}"


def next_source(
    keyset: Keyset | None,
    history: Mapping[str, KeyRecord],
    *,
    every: float,
    activation_delay: float,
    alg: str,
    kid_prefix: str,
    now: float,
) -> RotationStep:
    """Decide the managed source's next content from what signers use and when they started."""
    if keyset is None or len(keyset) == 0:
        key = generate(alg, new_kid(kid_prefix, now))
        return RotationStep(Keyset((key,), key.kid), "first key", None)
    signer_kid = current_signer_kid(history)
    if signer_kid is None or keyset.active_kid is None:
        return RotationStep(None, "waiting for the first publish", None)
    if keyset.active_kid != signer_kid:
        return RotationStep(None, f"{keyset.active_kid} waits for its activation delay", None)
    retired = [k for k in keyset if k.kid != signer_kid]
    if retired:
        kept = Keyset(tuple(k for k in keyset if k.kid == signer_kid), signer_kid)
        names = ", ".join(k.kid for k in retired)
        return RotationStep(kept, f"signers moved to {signer_kid}; dropping {names}", None)
    started = history[signer_kid].active_from or now
    due = started + max(0.0, every - activation_delay)
    if now < due:
        return RotationStep(None, f"next key due at {due:.0f}", due)
    key = generate(alg, new_kid(kid_prefix, now))
    step = Keyset((*keyset.keys, key), key.kid)
    return RotationStep(step, f"{key.kid} published ahead of its activation", None)
