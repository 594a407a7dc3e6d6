"""Managed rotation write-back: keysetd writing the next keyset into a source it owns.

The one write path for the daemon's schedule (``ManagedRotation.step``, what
``keysetd.rotation`` decides) and ``keysetd rotate``: ``write_source``, a
compare-and-swap against the bytes keysetd last read, so an edit made meanwhile
is never overwritten. A ``RotatableSource`` (a KMS-held key) is asked for its
next version instead, on the same schedule. Only these two can be managed; any
other is a ConfigError naming its type.

With ``[state] encryption`` the managed source holds keys keysetd generated, so it
is sealed like state_dir's private files (``SealedSource``): written sealed, opened
on every fetch, and a plaintext file found there (a seed written by hand, or one
from before encryption) is read once and written back sealed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from keysetd.errors import ConfigError, SealError, SourceError
from keysetd.extension import RotatableSource, WritableSource
from keysetd.formats.jwks import render_keyset
from keysetd.log import event
from keysetd.model import Keyset, Snapshot
from keysetd.record import Recorder
from keysetd.rotation import next_source, next_version
from keysetd.sealing import Sealer, is_sealed
from keysetd.state import KeyRecord

if TYPE_CHECKING:
    from keysetd.config import Config, RotationSettings

__all__ = ["ManagedRotation", "SealedSource", "writable_source", "write_source"]


def writable_source(
    config: Config, sealer: Sealer | None = None, *, upgrade: bool = True
) -> WritableSource | RotatableSource:
    """Build the config's source if keysetd may write or rotate it; ConfigError if not.

    With a ``sealer`` (``[state] encryption``), a source keysetd writes is sealed at rest;
    ``upgrade`` False (read-only commands): a plaintext one is read but not written back
    sealed. A ``RotatableSource`` keeps its keys in its KMS: nothing to seal.
    """
    if not issubclass(config.source_class, WritableSource | RotatableSource):
        raise ConfigError(
            f"source type {config.source.type!r} cannot be written by keysetd: managed rotation"
            " ([rotation], keysetd rotate) needs a source it owns, such as 'file', or one that"
            " rotates its own keys, such as 'vault_transit'"
        )
    source = config.build_source()
    assert isinstance(source, WritableSource | RotatableSource)
    if sealer is None or not isinstance(source, WritableSource):
        return source
    return SealedSource(source, sealer, upgrade=upgrade)


class SealedSource(WritableSource):
    """A managed file source kept sealed: fetch opens it, writes seal it (keysetd.sealing).

    Compare-and-swap still compares what is on disk: the sealed bytes last read stand
    for the plaintext the caller passes as ``expected``.
    """

    def __init__(self, inner: WritableSource, sealer: Sealer, *, upgrade: bool = True) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self._upgrades = upgrade
        self._sealer = sealer
        self._path = Path(getattr(inner.config, "path", inner.config.type))
        #: (bytes on disk, their plaintext) of the last fetch.
        self._last: tuple[bytes, bytes] | None = None

    def describe(self) -> str:
        return self.inner.describe()

    def fetch(self) -> Snapshot:
        snapshot = self.inner.fetch()
        raw = snapshot.data
        if is_sealed(raw):
            try:
                plain = self._sealer.open(self._path, raw)
            except SealError as exc:
                raise SourceError(self.describe(), str(exc)) from None
        else:
            plain = raw
            raw = self._upgrade(raw) if self._upgrades else raw
        self._last = (raw, plain)
        return Snapshot(plain, origin=snapshot.origin, format=snapshot.format)

    def _upgrade(self, raw: bytes) -> bytes:
        """Write a plaintext managed source back sealed; what is on disk afterwards."""
        try:
            sealed = self._sealer.seal(self._path, raw)
            if self.inner.replace_if_unchanged(raw, sealed):
                event("managed_source_sealed", source=self.describe())
                return sealed
        except (OSError, SealError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            event("managed_source_seal_failed", logging.ERROR, source=self.describe(), error=reason)
        return raw

    def watch_paths(self) -> tuple[Path, ...]:
        return self.inner.watch_paths()

    def missing(self) -> bool:
        return self.inner.missing()

    def replace_if_unchanged(self, expected: bytes | None, data: bytes) -> bool:
        """Raises OSError when the source cannot be written, SealError when not sealed."""
        on_disk = expected
        if expected is not None and self._last is not None and self._last[1] == expected:
            on_disk = self._last[0]
        written = self.inner.replace_if_unchanged(on_disk, self._sealer.seal(self._path, data))
        if written:
            self._last = None
        return written

    def close(self) -> None:
        self.inner.close()


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
        except SealError as exc:  # the key provider is down: nothing written, tried again
            event("rotation_failed", logging.ERROR, source=where, error=str(exc))
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
