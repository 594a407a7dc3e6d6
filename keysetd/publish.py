"""The commit and notify stages: verifier outputs and their notifiers, then signer outputs.

Crash ordering: history learns a kid was published only after the verifier
outputs holding it are on disk, and that it is active only after the signer
outputs are; so a restart never shortens an activation delay or a retention.
A notification that fails never rolls outputs back: it stays owed in the
backlog, which the daemon delivers again (``Publisher.retry``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keysetd import failpoints
from keysetd.backoff import Random
from keysetd.commit import Rendered, Written, commit_output
from keysetd.dispatch import Backlog, interested, run_notifiers
from keysetd.errors import InvalidKeyset, NotifyError
from keysetd.extension import Notifier, NotifyEvent, Output, Role
from keysetd.formats import decode
from keysetd.formats.jwks import render_keyset
from keysetd.history import mark_activating, mark_active, mark_published
from keysetd.ledger import Ledger
from keysetd.log import event
from keysetd.model import Keyset
from keysetd.plan import Plan
from keysetd.record import Recorder
from keysetd.state import StateStore

if TYPE_CHECKING:
    from keysetd.fleet.member import FleetMember

__all__ = ["Delivery", "Publisher"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one publish changed on disk and which notifications failed."""

    changed: tuple[str, ...]
    failures: tuple[NotifyError, ...]


class Publisher:
    """Commits rendered outputs in role order, marks history, notifies, owes failed notices."""

    def __init__(
        self,
        outputs: Sequence[Output],
        notifiers: Sequence[Notifier],
        *,
        state: StateStore,
        ledger: Ledger,
        recorder: Recorder,
        clock: Callable[[], float] = time.time,
        rand: Random = random.random,
        backlog: Backlog | None = None,
        fleet: FleetMember | None = None,
    ) -> None:
        self.outputs = tuple(outputs)
        #: Fleet mode: acks and the shared write-ahead around the commit (else None).
        self.fleet = fleet
        self.notifiers = tuple(notifiers)
        self._state = state
        self._ledger = ledger
        self._recorder = recorder
        self._clock = clock
        self._rand = rand
        #: Notifications that failed and are owed again (the daemon retries them).
        self.backlog = Backlog() if backlog is None else backlog
        self._written = Written()
        self._signer: Keyset | None = None
        self._signer_loaded = False

    @property
    def signer(self) -> Keyset | None:
        """The signer keyset last committed (private keys included): what signers hold.

        Read from state_dir on first use; SealError while it is sealed and cannot be
        opened (the key provider is down), so no plan is made without it.
        """
        if not self._signer_loaded:
            self._signer = _load_signer(self._state)
            self._signer_loaded = True
        return self._signer

    def publish(self, planned: Plan, rendered: list[Rendered], now: float) -> Delivery:
        """A new plan: let notifiers veto the rendered bytes, then commit, notify and announce."""
        files = {path: data for item in rendered for path, data in item.files.items()}
        for notifier in self.notifiers:
            notifier.check(files)  # pre-commit: a NotifyError here fails the cycle unwritten
        delivery = self.deliver(planned, rendered, now)
        if delivery.changed:
            event(
                "published",
                fingerprint=planned.fingerprint,
                active_kid=planned.active_kid,
                kids=",".join(planned.published_kids),
                outputs=",".join(delivery.changed),
            )
            self._recorder.audit(
                "published",
                fingerprint=planned.fingerprint,
                active_kid=planned.active_kid,
                kids=list(planned.published_kids),
                outputs=list(delivery.changed),
            )
        return delivery

    def deliver(self, planned: Plan, rendered: list[Rendered], now: float) -> Delivery:
        """Verifier outputs, their notifiers, then signer outputs and the remaining notifiers."""
        changed: list[str] = []
        failures: list[NotifyError] = []
        verifiers = [r for r in rendered if r.output.role is Role.VERIFIER]
        signers = [r for r in rendered if r.output.role is Role.SIGNER]
        signer_names = {r.output.name for r in signers}
        pending = list(self.notifiers)
        ledger = self._ledger
        fleet = self.fleet

        if fleet is not None:  # the ack shrinks before the outputs drop what it lists
            fleet.before_verifiers(planned)
        changed += self._commit_phase(verifiers)
        failpoints.hit("cycle.after-verifier-phase")  # failpoint (tests only)
        published, published_events = mark_published(ledger.records, planned, now)
        activating, activated = mark_activating(published, planned, now)
        # One history write: what verifiers now hold, and the write-ahead for the signer
        # phase (both kids count as held until its commit; holding early is safe).
        ledger.remember(activating, published_events)
        # A notifier that follows any signer output waits for the signer phase.
        early = [n for n in pending if interested(n, changed) and not interested(n, signer_names)]
        failures += self._notify(early, planned, changed)
        pending = [n for n in pending if n not in early]
        failpoints.hit("cycle.before-signer-phase")  # failpoint (tests only)
        # Sealed now: a key provider that fails stops the cycle before signers move.
        kept = self._seal_signer(planned.signer)
        if fleet is not None:  # the fleet holds the kid open before any signer uses it
            fleet.before_signers(planned, now)
        changed += self._commit_phase(signers)
        failures += self._notify([n for n in pending if interested(n, changed)], planned, changed)
        # After the notifiers: the write-ahead above already holds both kids, so a crash
        # before this write only holds them longer; consumers are told one write sooner.
        history, closed = mark_active(ledger.records, planned, now)
        ledger.remember(history, activated + closed)
        self.backlog.schedule(self._clock(), failed=bool(failures), fresh=True, rand=self._rand)
        self._keep_signer(planned.signer, kept)  # the signer files already hold it
        if fleet is not None:
            fleet.acknowledge(planned, now, verifiers_told=self._verifiers_told(verifiers))
        return Delivery(tuple(changed), tuple(failures))

    def _verifiers_told(self, verifiers: Sequence[Rendered]) -> bool:
        """No notifier that follows a verifier output is owed a delivery."""
        names = [r.output.name for r in verifiers]
        return not any(
            n.name in self.backlog.failed for n in self.notifiers if interested(n, names)
        )

    def retry(self) -> list[NotifyError]:
        """Deliver again what the backlog owes, each notifier the event it failed on.

        Failures stay owed with a longer backoff.
        """
        failures: list[NotifyError] = []
        for what, notifiers in self.backlog.due(self.notifiers):
            event(
                "notify_retry",
                notifiers=",".join(n.name for n in notifiers),
                fingerprint=what.fingerprint,
                attempt=self.backlog.attempts + 1,
            )
            found = run_notifiers(notifiers, what)
            self.backlog.settle(notifiers, what, found)
            failures += found
        self.backlog.keep_only(n.name for n in self.notifiers)
        self.backlog.schedule(self._clock(), failed=bool(failures), fresh=False, rand=self._rand)
        return failures

    def _commit_phase(self, phase: Iterable[Rendered]) -> list[str]:
        return [item.output.name for item in phase if commit_output(item, self._written)]

    def _notify(self, due: list[Notifier], planned: Plan, changed: list[str]) -> list[NotifyError]:
        if not due:
            return []
        what = NotifyEvent(planned.fingerprint, planned.active_kid, tuple(changed))
        failures = run_notifiers(due, what)
        self.backlog.settle(due, what, failures)  # a newer change supersedes an owed one
        return failures

    def _seal_signer(self, signer: Keyset) -> bytes | None:
        """The bytes ``_keep_signer`` writes for ``signer``; None when nothing is to be kept."""
        if signer == self.signer or signer.active is None:
            return None
        return self._state.seal_signer(render_keyset(signer))

    def _keep_signer(self, signer: Keyset, prepared: bytes | None) -> None:
        """Remember the signer keyset (with private keys) so a held-back key survives restarts."""
        if prepared is None:
            return
        self._state.write_signer(prepared)
        failpoints.hit("state.after-signer-save")  # failpoint (tests only)
        self._signer, self._signer_loaded = signer, True


def _load_signer(state: StateStore) -> Keyset | None:
    raw = state.load_signer()
    if raw is None:
        return None
    try:
        return decode(raw, "jwks")
    except InvalidKeyset:
        return None
