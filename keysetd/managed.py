"""Managed rotation write-back: keysetd writing the next keyset into a source it owns.

The one write path for the daemon's schedule (``ManagedRotation.step``, what
``keysetd.rotation`` decides) and ``keysetd rotate``: ``write_source``, a
compare-and-swap against the bytes keysetd last read, so an edit made meanwhile
is never overwritten. A ``RotatableSource`` (a KMS-held key) is asked for its
next version instead, on the same schedule. Only these two can be managed; any
other is a ConfigError naming its type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from keysetd.errors import ConfigError, SourceError
from keysetd.extension import RotatableSource, WritableSource
from keysetd.formats.jwks import render_keyset
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.record import Recorder
from keysetd.rotation import next_source, next_version
from keysetd.state import KeyRecord

if TYPE_CHECKING:
    from keysetd.config import Config, RotationSettings

__all__ = ["ManagedRotation", "writable_source", "write_source"]


def writable_source(config: Config) -> WritableSource | RotatableSource:
    """Build the config's source if keysetd may write or rotate it; ConfigError if not."""
    if not issubclass(config.source_class, WritableSource | RotatableSource):
        raise ConfigError(
            f"source type {config.source.type!r} cannot be written by keysetd: managed rotation"
            " ([rotation], keysetd rotate) needs a source it owns, such as 'file', or one that"
            " rotates its own keys, such as 'vault_transit'"
        )
    source = config.build_source()
    assert isinstance(source, WritableSource | RotatableSource)
    return source


def write_source(source: WritableSource, expected: bytes | None, keyset: Keyset) -> bool:
    """Write ``keyset`` as the source's JWKS if it still holds ``expected``; False if it moved.

    Raises OSError when the source cannot be written.
    """
    return source.replace_if_unchanged(expected, render_keyset(keyset))


class ManagedRotation:
    """With ``[rotation]``: write the owned source's next content when the schedule says so."""

    def __init__(
        self,
        source: WritableSource | RotatableSource,
        settings: RotationSettings,
        *,
        activation_delay: float,
        recorder: Recorder,
        retention: float = 0.0,
    ) -> None:
        self.source = source
        self._settings = settings
        self._activation_delay = activation_delay
        self._retention = retention
        self._recorder = recorder

    def missing(self) -> bool:
        """The managed source is gone: keysetd writes it again (or its first key)."""
        return isinstance(self.source, WritableSource) and self.source.missing()

    def step(
        self,
        keyset: Keyset | None,
        history: Mapping[str, KeyRecord],
        expected: bytes | None,
        now: float,
    ) -> float | None:
        """Write the next content if one is due; return when to look again (None: no sooner).

        ``expected`` is what keysetd last read from the source (None: nothing yet).
        """
        settings = self._settings
        if isinstance(self.source, RotatableSource):
            return self._rotate(self.source, keyset, history, now)
        step = next_source(
            keyset,
            history,
            every=settings.every,
            activation_delay=self._activation_delay,
            alg=settings.alg,
            kid_prefix=settings.kid_prefix,
            now=now,
        )
        if step.keyset is None:
            return step.next_at
        where = self.source.describe()
        try:
            written = write_source(self.source, expected, step.keyset)
        except OSError as exc:
            event("rotation_failed", logging.ERROR, source=where, error=exc.strerror or str(exc))
            return None
        if not written:
            event(
                "rotation_skipped",
                logging.WARNING,
                source=where,
                reason="the source changed meanwhile; the next cycle reads it",
            )
            return now
        event("rotation_step", reason=step.reason, active_kid=step.keyset.active_kid)
        self._recorder.audit(
            "managed_rotation",
            reason=step.reason,
            active_kid=step.keyset.active_kid,
            kids=list(step.keyset.kids),
        )
        return now

    def _rotate(
        self,
        source: RotatableSource,
        keyset: Keyset | None,
        history: Mapping[str, KeyRecord],
        now: float,
    ) -> float | None:
        """Ask a KMS-held key for its next version when due (compare-and-swap on active_kid)."""
        step = next_version(
            keyset,
            history,
            every=self._settings.every,
            activation_delay=self._activation_delay,
            now=now,
            retention=self._retention,
        )
        where = source.describe()
        retired = False
        if step.left and step.signer_kid is not None:
            retired = self._retire(source, step.left, step.signer_kid)
        if not step.due:
            return now if retired else step.next_at
        assert keyset is not None
        try:
            kid = source.rotate(keyset.active_kid)
        except SourceError as exc:
            event("rotation_failed", logging.ERROR, source=where, error=exc.reason)
            return None
        if kid is None:
            event(
                "rotation_skipped",
                logging.WARNING,
                source=where,
                reason="the source's active key moved meanwhile; the next cycle reads it",
            )
            return now
        event("rotation_step", reason=step.reason, active_kid=kid)
        self._recorder.audit(
            "managed_rotation", reason=f"{step.reason}; created {kid}", active_kid=kid, kids=[kid]
        )
        return now

    def _retire(self, source: RotatableSource, left: tuple[str, ...], signer_kid: str) -> bool:
        """Let the source drop the versions signers left long ago; True when it did."""
        try:
            retired = source.retire(left, signer_kid)
        except SourceError as exc:
            event("retire_failed", logging.ERROR, source=source.describe(), error=exc.reason)
            return False
        if not retired:
            return False
        reason = f"signers use {signer_kid}; retired {', '.join(retired)}"
        event("rotation_step", reason=reason, active_kid=signer_kid)
        self._recorder.audit(
            "managed_rotation", reason=reason, active_kid=signer_kid, kids=list(retired)
        )
        return True
