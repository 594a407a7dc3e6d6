"""Rotation guarantees of the pure planner and history, over random snapshot and clock sequences.

A small harness replays what ``keysetd.pipeline`` and ``keysetd.publish`` do
each cycle (apply revocations; refuse a source that brings a revoked kid;
observe; plan; verifier commit; mark_published; signer commit; mark_active;
remember the signer keyset) and records every plan, so each guarantee of
DESIGN.md section 6 is checked over the whole timeline, the crash window
between the two commits included.

``make test`` runs ``PLAN_EXAMPLES`` (default 200) sequences for the guarantees and
3/8 of that for the settling and revocation properties; ``make stress`` runs more.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from keysetd.crypto import generate
from keysetd.history import (
    Records,
    apply_revocations,
    mark_activating,
    mark_active,
    mark_published,
    observe,
)
from keysetd.model import Key, Keyset
from keysetd.plan import Plan, Policy, plan

KIDS = tuple(f"k{i}" for i in range(6))
#: One key per kid for the whole module: keysetd refuses a kid reused for other material.
POOL: dict[str, Key] = {kid: generate("ES256", kid) for kid in KIDS}
EPOCHS = (0.0, 1_700_000_000.0)


# -- steps -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The source now holds ``kids`` with ``active`` (None: no active_kid)."""

    kids: tuple[str, ...]
    active: str | None


@dataclass(frozen=True, slots=True)
class Advance:
    seconds: float


@dataclass(frozen=True, slots=True)
class WaitForChange:
    """Sleep until the last plan's ``next_change_at``, as the daemon does."""


@dataclass(frozen=True, slots=True)
class Revoke:
    kid: str


@dataclass(frozen=True, slots=True)
class Unrevoke:
    kid: str


Step = Snapshot | Advance | WaitForChange | Revoke | Unrevoke


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    kids = draw(st.lists(st.sampled_from(KIDS), min_size=1, max_size=4, unique=True))
    # Mostly with an active kid, sometimes without (a source for verifier outputs only).
    active = draw(st.sampled_from(kids)) if draw(st.integers(0, 5)) else None
    return Snapshot(tuple(sorted(kids)), active)


def steps(horizon: int) -> st.SearchStrategy[Step]:
    return st.one_of(
        snapshots(),
        snapshots(),
        st.builds(Advance, st.integers(0, horizon).map(float)),
        st.builds(Advance, st.integers(0, horizon).map(float)),
        st.just(WaitForChange()),
        st.builds(Revoke, st.sampled_from(KIDS)),
        st.builds(Unrevoke, st.sampled_from(KIDS)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Policy, float, list[Step]]:
    delay = draw(st.sampled_from([0, 0, 1, 3, 10]))
    retention = draw(st.sampled_from([0, 0, 1, 4, 10]))
    horizon = 3 * max(delay, retention, 1)
    start = draw(st.sampled_from(EPOCHS))
    first = draw(snapshots())
    rest = draw(st.lists(steps(horizon), max_size=30))
    return Policy(float(delay), float(retention)), start, [first, *rest]


# -- the harness ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cycle:
    """One committed plan and what was true when it was made."""

    now: float
    planned: Plan
    source: frozenset[str]  # the accepted source keyset's kids
    revoked: frozenset[str]  # kids flagged revoked in history when planning
    signer_before: str | None  # the active kid signer outputs held before this plan


@dataclass(slots=True)
class Sim:
    """The pipeline's memory between cycles, and the timeline of every plan."""

    policy: Policy
    now: float
    history: Records = field(default_factory=dict)
    revocations: dict[str, float] = field(default_factory=dict)
    keyset: Keyset | None = None
    previous_signer: Keyset | None = None
    signer_on_disk: Keyset | None = None
    cycles: list[Cycle] = field(default_factory=list)

    def run(self, step: Step) -> None:
        if isinstance(step, Advance):
            self.now += step.seconds
        elif isinstance(step, WaitForChange):
            due = self.cycles[-1].planned.next_change_at if self.cycles else None
            if due is None:
                return
            self.now = max(self.now, due)
        elif isinstance(step, Revoke):
            self.revocations.setdefault(step.kid, self.now)
        elif isinstance(step, Unrevoke):
            self.revocations.pop(step.kid, None)
        self.cycle(step if isinstance(step, Snapshot) else None)

    def cycle(self, snapshot: Snapshot | None) -> None:
        """``Pipeline.cycle``: revocations first, then the new source or a re-plan."""
        with untouched(self.history, "apply_revocations"):
            history, events = apply_revocations(self.history, self.revocations, self.now)
        self.history = history
        if events and self.keyset is not None:
            self.publish(self.keyset)
        if snapshot is None:
            if self.keyset is not None:
                self.publish(self.keyset)
            return
        # `keysetd revoke` promises a revoked kid "is refused if it appears", even one
        # never seen before; a refused snapshot is a failed cycle and changes nothing.
        if any(kid in self.revocations for kid in snapshot.kids):
            return
        keyset = Keyset(tuple(POOL[k] for k in snapshot.kids), snapshot.active)
        with untouched(self.history, "observe"):
            history = observe(self.history, keyset, self.now)
        self.history = history
        self.keyset = keyset
        self.publish(keyset)

    def publish(self, keyset: Keyset) -> None:
        now, policy = self.now, self.policy
        with untouched(self.history, "plan"):
            planned = plan(keyset, self.history, policy, now, self.previous_signer)
        again = plan(keyset, copy.deepcopy(self.history), policy, now, self.previous_signer)
        assert again == planned, "plan is not deterministic"
        revoked = frozenset(k for k, r in self.history.items() if r.revoked is not None)
        signer_before = self.signer_on_disk.active_kid if self.signer_on_disk else None

        # Verifier commit, then mark_published. Crash window: signer outputs on disk
        # are still the previous plan's, so their active kid must be verifiable.
        with untouched(self.history, "mark_published"):
            history = mark_published(self.history, planned, now)[0]
        self.history = history
        if signer_before is not None and signer_before not in revoked:
            assert signer_before in planned.verifier.kids, (
                f"crash window: signers hold {signer_before} but verifiers lost it"
            )

        # Write-ahead before the signer commit. Crash there and restart: whichever signer
        # keyset is on disk (old or new), its active kid must be in the re-planned verifiers.
        with untouched(self.history, "mark_activating"):
            history = mark_activating(self.history, planned, now)[0]
        self.history = history
        restarted = plan(keyset, self.history, policy, now, self.previous_signer)
        for held in (signer_before, planned.active_kid):
            if held is not None and held not in revoked:
                assert held in restarted.verifier.kids, (
                    f"restart mid hand-over: signers may hold {held} but verifiers lack it"
                )

        # Signer commit, then mark_active; the pipeline keeps a signer keyset with an active.
        with untouched(self.history, "mark_active"):
            history = mark_active(self.history, planned, now)[0]
        self.history = history
        self.signer_on_disk = planned.signer
        if planned.signer.active is not None:
            self.previous_signer = planned.signer
        self.cycles.append(Cycle(now, planned, frozenset(keyset.kids), revoked, signer_before))
        check_plan(self.cycles[-1], keyset, policy)
        check_quiet_until_next_change(self, keyset)


@contextmanager
def untouched(history: Records, what: str) -> Iterator[None]:
    """Check the block left the history it read as it was: the transitions are pure."""
    before = copy.deepcopy(history)
    yield
    assert history == before, f"{what} mutated the history it was given"


# -- properties of one plan ----------------------------------------------------------


def check_plan(cycle: Cycle, keyset: Keyset, policy: Policy) -> None:
    planned, now = cycle.planned, cycle.now
    verifier, signer = set(planned.verifier.kids), set(planned.signer.kids)
    assert len(verifier) == len(planned.verifier), "a kid published twice"
    assert len(signer) == len(planned.signer), "a kid given to signers twice"
    assert not (verifier | signer) & cycle.revoked, "a revoked kid is published"
    assert planned.active_kid not in cycle.revoked
    assert cycle.source - cycle.revoked <= verifier, "a source key is not published"
    assert planned.verifier.active_kid == planned.active_kid
    if planned.active_kid is not None:
        assert planned.active_kid in verifier, "signers use a kid verifiers do not have"
        active = planned.signer.active
        assert active is not None and active.has_private, "signers got no private key"
    assert signer <= verifier
    assert planned.fingerprint == planned.verifier.fingerprint()
    # Signers get their previous kid or the source's active kid, nothing else; they
    # lose their key only to a revocation.
    usable = cycle.signer_before not in (None, *cycle.revoked)
    assert planned.active_kid in (None, cycle.signer_before, keyset.active_kid)
    if usable or keyset.active_kid not in (None, *cycle.revoked):
        assert planned.active_kid is not None, "signers got no key though one is usable"
    # Signers keep their key while the source has no active_kid.
    if keyset.active_kid is None and usable:
        assert planned.active_kid == cycle.signer_before
    if planned.next_change_at is not None:
        assert planned.next_change_at >= now
        if planned.next_change_at == now:
            # Only a signer leaving its key with retention 0: drop it right after the commit.
            assert policy.retention == 0
            assert cycle.signer_before not in (None, planned.active_kid)


def check_quiet_until_next_change(sim: Sim, keyset: Keyset) -> None:
    """Between this commit and ``next_change_at``, re-planning changes nothing."""
    planned = sim.cycles[-1].planned
    horizon = 3 * max(sim.policy.activation_delay, sim.policy.retention, 1.0)
    due = planned.next_change_at
    if due is not None and due <= sim.now:
        return
    last = sim.now + horizon if due is None else due
    for when in {sim.now, (sim.now + last) / 2, last - 1e-3}:
        if when < sim.now:
            continue
        later = plan(keyset, sim.history, sim.policy, when, sim.previous_signer)
        assert later.active_kid == planned.active_kid, f"active changed at {when} before {due}"
        assert set(later.verifier.kids) == set(planned.verifier.kids), (
            f"verifier set changed at {when}, before next_change_at {due}"
        )


# -- properties of the whole timeline ----------------------------------------------


def check_timeline(cycles: list[Cycle], policy: Policy) -> None:
    check_activation_delay(cycles, policy)
    check_retention_after_active(cycles, policy)
    check_retention_after_source(cycles, policy)
    check_nothing_kept_without_reason(cycles, policy)


def check_activation_delay(cycles: list[Cycle], policy: Policy) -> None:
    """A kid signers move to was published, without a gap, activation_delay before.

    Exceptions by design: signers held no usable key (bootstrap, or their kid was
    revoked), so there is nothing to keep signing with while waiting.
    """
    for i, cycle in enumerate(cycles):
        kid = cycle.planned.active_kid
        if kid is None or kid == cycle.signer_before:
            continue
        if cycle.signer_before is None or cycle.signer_before in cycle.revoked:
            continue
        start = i
        while start > 0 and kid in cycles[start - 1].planned.verifier.kids:
            start -= 1
        since = cycles[start].now
        assert cycle.now - since >= policy.activation_delay, (
            f"{kid} signs at {cycle.now} but is published only since {since}"
        )


def check_retention_after_active(cycles: list[Cycle], policy: Policy) -> None:
    """A kid signers moved off stays published for retention after they moved (unless revoked)."""
    for i, cycle in enumerate(cycles):
        old = cycle.signer_before
        if old is None or old == cycle.planned.active_kid:
            continue
        for later in cycles[i:]:
            if later.now >= cycle.now + policy.retention:
                break
            if old in later.revoked:
                break
            assert old in later.planned.verifier.kids, (
                f"{old} stopped signing at {cycle.now}, unpublished at {later.now}"
            )


def check_retention_after_source(cycles: list[Cycle], policy: Policy) -> None:
    """A kid that left the source stays published for retention after (unless revoked)."""
    for i in range(1, len(cycles)):
        gone = cycles[i - 1].source - cycles[i].source
        left_at = cycles[i].now
        for kid in gone:
            if kid in cycles[i - 1].revoked:
                continue
            for later in cycles[i:]:
                if later.now >= left_at + policy.retention or kid in later.revoked:
                    break
                if kid in later.source:
                    break
                assert kid in later.planned.verifier.kids, (
                    f"{kid} left the source at {left_at}, unpublished at {later.now}"
                )


def check_nothing_kept_without_reason(cycles: list[Cycle], policy: Policy) -> None:
    """Every published kid is in the source, signing, or within its retention."""
    left_at: dict[str, float] = {}
    active_until: dict[str, float] = {}
    for i, cycle in enumerate(cycles):
        previous = cycles[i - 1] if i else None
        if previous is not None:
            for kid in previous.source - cycle.source:
                left_at[kid] = cycle.now
        for kid in cycle.source:
            left_at.pop(kid, None)
        old = cycle.signer_before
        if old is not None and old != cycle.planned.active_kid:
            active_until[old] = cycle.now
        for kid in cycle.planned.verifier.kids:
            if kid in cycle.source or kid in (cycle.planned.active_kid, old):
                continue
            until = max(left_at.get(kid, -1.0), active_until.get(kid, -1.0)) + policy.retention
            assert cycle.now < until, f"{kid} still published at {cycle.now}, retention ended"


# -- the tests -------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("PLAN_EXAMPLES", "200"))
FEWER = max(1, EXAMPLES * 3 // 8)


def simulate(policy: Policy, start: float, script: list[Step]) -> Sim:
    sim = Sim(policy, start)
    for step in script:
        sim.run(step)
    return sim


@settings(max_examples=EXAMPLES, deadline=None)
@given(scenarios())
def test_rotation_guarantees_hold_for_any_sequence(
    scenario: tuple[Policy, float, list[Step]],
) -> None:
    policy, start, script = scenario
    sim = simulate(policy, start, script)
    check_timeline(sim.cycles, policy)


@settings(max_examples=FEWER, deadline=None)
@given(scenarios())
def test_following_next_change_at_settles(scenario: tuple[Policy, float, list[Step]]) -> None:
    """With the source unchanged, waking at each next_change_at reaches a plan with none.

    Each wake-up must change what is published or be the last: no busy loop.
    """
    policy, start, script = scenario
    sim = simulate(policy, start, script)
    if sim.keyset is None:
        return
    for _ in range(2 * len(KIDS) + 2):
        due = sim.cycles[-1].planned.next_change_at
        if due is None:
            break
        sim.now = max(sim.now, due)
        sim.cycle(None)
    else:
        raise AssertionError("next_change_at keeps waking the daemon")
    check_timeline(sim.cycles, policy)


@settings(max_examples=FEWER, deadline=None)
@given(scenarios(), st.sampled_from(KIDS))
def test_revoked_kid_is_nowhere(scenario: tuple[Policy, float, list[Step]], kid: str) -> None:
    """Revoking any kid removes it from both sets in the very next plan, whatever came before."""
    policy, start, script = scenario
    sim = simulate(policy, start, script)
    if kid not in sim.history or sim.keyset is None:
        return
    sim.run(Revoke(kid))
    last = sim.cycles[-1].planned
    assert kid not in last.verifier.kids
    assert kid not in last.signer.kids
    assert last.active_kid != kid
