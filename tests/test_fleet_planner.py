"""The fleet planner: hand-written decisions, then fleet-wide guarantees over random timelines.

The simulation replays what each replica's daemon does per refresh, on a shared store
(history, revocations, acks under leases), every step of a cycle separately so the windows
between them are checked too: plan; shrink its ack if the verifier commit drops kids; verifier
commit; write-ahead of a kid to open; signer commit; ack. The leader (lowest live replica)
runs ``follow_acks`` and observes its source into the shared history. Between cycles:
source changes, clock advances, revocations, replicas joining late, SIGSTOP, lease expiry
(the ack disappears) and resume.

After every step: a replica whose signer outputs are in use (running, or stopped with its
lease alive) signs only with a kid that every live replica's verifier outputs hold; a live
ack never lists a kid its outputs lack; a revoked kid is in no output; a kid a replica moves
signers to was published somewhere for ``activation_delay`` without a gap; and a kid signed
at time t stays in every live replica's verifier outputs until t + retention.

``make test`` runs ``FLEET_EXAMPLES`` (default 150) timelines; more:
``FLEET_EXAMPLES=5000 .venv/bin/pytest tests/test_fleet_planner.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysetd.crypto import generate
from keysetd.fleet.planner import (
    FleetPlan,
    ack_before_commit,
    ack_changed,
    acknowledge,
    follow_acks,
    open_signing,
    plan_replica,
)
from keysetd.fleet.state import (
    Ack,
    FleetDocumentError,
    Revocation,
    decode_ack,
    decode_history,
    decode_revocations,
    encode_ack,
    encode_history,
    encode_revocations,
)
from keysetd.history import Records, observe
from keysetd.model import Key, Keyset
from keysetd.plan import Decision, Policy
from tests.test_plan_properties import Advance, Revoke, Unrevoke

KIDS = tuple(f"k{i}" for i in range(5))
POOL: dict[str, Key] = {kid: generate("ES256", kid) for kid in KIDS}
REPLICAS = ("r0", "r1", "r2")
EXAMPLES = int(os.environ.get("FLEET_EXAMPLES", "150"))


def keyset(kids: tuple[str, ...], active: str | None) -> Keyset:
    return Keyset(tuple(POOL[k] for k in kids), active)


# -- hand-written decisions ---------------------------------------------------------------------


def ack(rid: str, kids: dict[str, float], signing: str | None = None, at: float = 0.0) -> Ack:
    return Ack(rid, at, "f" * 64, kids, signing)


def fleet_history(now: float, *kids: str, active: str | None = None) -> Records:
    """History as the leader keeps it: each kid observed and published at 0, ``active`` held."""
    records = observe({}, keyset(tuple(kids), active), 0.0)
    out: Records = {}
    for kid, record in records.items():
        published = replace(record, first_published=0.0)
        out[kid] = replace(published, active_from=0.0) if kid == active else published
    return out


POLICY = Policy(activation_delay=10.0, retention=20.0)


def decision(planned: FleetPlan, kid: str) -> Decision:
    found = planned.plan.decision(kid)
    assert found is not None, f"no decision for {kid}"
    return found


def signing(fleet: Fleet, index: int) -> str | None:
    signer = fleet.replicas[index].signer
    return signer.active_kid if signer is not None else None


def run(
    source: Keyset,
    history: Records,
    acks: dict[str, Ack],
    rid: str,
    now: float,
    previous: str | None,
) -> FleetPlan:
    previous_signer = keyset(tuple(source.kids), previous) if previous else None
    return plan_replica(
        source,
        history,
        acks,
        replica_id=rid,
        policy=POLICY,
        now=now,
        previous_signer=previous_signer,
    )


def test_a_new_kid_waits_for_every_live_ack() -> None:
    history = fleet_history(0, "k0", "k1", active="k0")
    source = keyset(("k0", "k1"), "k1")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 0}, "k0"),
        "r1": ack("r1", {"k0": 0}, "k0"),
    }
    planned = run(source, history, acks, "r0", 100.0, "k0")
    assert planned.signing_kid == "k0"
    assert planned.waiting_for == ("r1",)
    assert decision(planned, "k1").state == "pending"
    assert "r1" in decision(planned, "k1").reason
    assert {"k0", "k1"} <= set(planned.plan.verifier.kids)
    acks["r1"] = ack("r1", {"k0": 0, "k1": 50}, "k0")
    assert run(source, history, acks, "r0", 100.0, "k0").signing_kid == "k1"


def test_all_acked_but_the_delay_not_passed() -> None:
    """Every replica holds k1, the history's delay is over, but r1 has held it only 4 s."""
    history = fleet_history(0, "k0", "k1", active="k0")
    source = keyset(("k0", "k1"), "k1")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 0}, "k0"),
        "r1": ack("r1", {"k0": 0, "k1": 96}, "k0"),
    }
    planned = run(source, history, acks, "r0", 100.0, "k0")
    assert planned.signing_kid == "k0"
    pending = decision(planned, "k1")
    assert pending.state == "pending" and pending.until == 106.0
    assert planned.plan.next_change_at == 106.0
    assert run(source, history, acks, "r0", 106.0, "k0").signing_kid == "k1"


def test_the_history_delay_holds_even_when_every_ack_is_old() -> None:
    """plan()'s rule: activation_delay after the shared first_published, whatever acks say."""
    history = fleet_history(0, "k0", "k1", active="k0")
    history["k1"] = replace(history["k1"], first_published=95.0)
    source = keyset(("k0", "k1"), "k1")
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k0")}
    assert run(source, history, acks, "r0", 100.0, "k0").signing_kid == "k0"
    assert run(source, history, acks, "r0", 105.0, "k0").signing_kid == "k1"


def test_an_expired_lease_stops_counting() -> None:
    """r2 (lacking k1) was stopped and its lease expired: its ack is gone, rotation proceeds."""
    history = fleet_history(0, "k0", "k1", active="k0")
    source = keyset(("k0", "k1"), "k1")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 0}, "k0"),
        "r1": ack("r1", {"k0": 0, "k1": 0}, "k0"),
        "r2": ack("r2", {"k0": 0}, "k0"),
    }
    assert run(source, history, acks, "r0", 100.0, "k0").signing_kid == "k0"
    del acks["r2"]
    assert run(source, history, acks, "r0", 100.0, "k0").signing_kid == "k1"


def test_a_late_joiner_publishes_what_the_fleet_signs_before_it_signs() -> None:
    """r2 starts while the fleet signs k1: it publishes k1 (history holds it), signs nothing
    until its own ack is counted, then signs k1 once its source holds k1's private key."""
    history = fleet_history(0, "k0", "k1", active="k1")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 0}, "k1"),
        "r1": ack("r1", {"k0": 0, "k1": 0}, "k1"),
    }
    source = keyset(("k0", "k1"), "k1")
    first = run(source, history, acks, "r2", 100.0, None)
    assert first.catching_up
    assert first.signing_kid is None, "a replica with no ack of its own signs nothing new"
    assert "k1" in first.plan.verifier.kids
    acks["r2"] = acknowledge("r2", first.plan.verifier, None, 100.0)
    assert acks["r2"].holds("k1")
    second = run(source, history, acks, "r2", 101.0, None)
    assert second.signing_kid == "k1", "in use fleet-wide: no delay for the joiner"
    assert not second.catching_up
    signing_key = second.plan.signer.active
    assert signing_key is not None and signing_key.has_private


def test_a_late_joiner_without_the_fleets_private_key_withholds_signing() -> None:
    """r2's source is still on k0 while the fleet signs k1: r2 knows k1 only from history's
    public JWK. It publishes k1 but withholds signing rather than hand signers a public key,
    and signs with k0 (its own, private) only after k0's activation delay."""
    history = fleet_history(0, "k0", "k1", active="k1")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 0}, "k1"),
        "r1": ack("r1", {"k0": 0, "k1": 0}, "k1"),
    }
    stale = keyset(("k0",), "k0")
    first = run(stale, history, acks, "r2", 100.0, None)
    assert first.signing_kid is None and "k1" in first.plan.verifier.kids
    acks["r2"] = acknowledge("r2", first.plan.verifier, None, 100.0)
    for now in (101.0, 105.0):
        withheld = run(stale, history, acks, "r2", now, None)
        assert withheld.signing_kid is None, "k1's public half is nothing to sign with"
        assert withheld.plan.signer.active is None and withheld.opens is None
        published = withheld.plan.verifier.get("k1")
        assert published is not None and not published.has_private
        assert all(k.has_private for k in withheld.plan.signer), "signers get private keys"
    # k0 was published fleet-wide long ago, but r2 began publishing it only at 100.
    assert decision(run(stale, history, acks, "r2", 101.0, None), "k0").until == 110.0
    moved = run(stale, history, acks, "r2", 110.0, None)
    assert moved.signing_kid == "k0"
    signing_key = moved.plan.signer.active
    assert signing_key is not None and signing_key.has_private


def test_a_public_only_source_is_planned_as_plan_plans_it() -> None:
    """Nothing private anywhere (a JWKS URL source): there is nothing to withhold from signers;
    the kid the fleet signs is chosen as before, as the single-replica plan would."""
    history = fleet_history(0, "k0", "k1", active="k1")
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k1")}
    public = Keyset(tuple(POOL[k].without_private() for k in ("k0", "k1")), "k1")
    acks["r2"] = ack("r2", {"k0": 100, "k1": 100})
    planned = plan_replica(
        public, history, acks, replica_id="r2", policy=POLICY, now=101.0, previous_signer=None
    )
    assert planned.signing_kid == "k1"


def test_a_replica_coming_back_keeps_its_kid_only_while_the_fleet_holds_it_open() -> None:
    """Found by tests/test_fleet_e2e.py: a replica back from a SIGSTOP kept its closed kid
    from a snapshot in which r0 still held it, while r0 dropped it at the end of retention."""
    history = fleet_history(0, "k0", "k1", active="k1")
    history["k0"] = replace(history["k0"], active_from=0.0, active_until=50.0)
    source = keyset(("k0", "k1"), "k1")
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k1")}
    back = run(source, history, acks, "r2", 60.0, "k0")
    assert back.catching_up and back.signing_kid is None, "closed: r0 may drop it any time"
    assert back.plan.signer.active is None
    assert "k0" in back.plan.verifier.kids, "signers hold k0 until the signer commit"
    open_history = dict(history)
    open_history["k0"] = replace(history["k0"], active_until=None)  # another live signer
    kept = run(source, open_history, acks, "r2", 60.0, "k0")
    assert kept.catching_up and kept.signing_kid == "k0"
    acks["r2"] = ack("r2", {"k0": 60, "k1": 60})  # its first ack: caught up
    caught_up = run(source, history, acks, "r2", 61.0, "k0")
    assert caught_up.signing_kid == "k1", "what a live replica signs needs no delay"


def test_nobody_drops_a_kid_a_live_replica_signs_with() -> None:
    """k0 left r0's source and its retention is over, but r1 still signs with it."""
    history = fleet_history(0, "k0", "k1", active="k1")
    history["k0"] = replace(history["k0"], left_source_at=0.0, active_until=0.0, active_from=0.0)
    acks = {"r1": ack("r1", {"k0": 0, "k1": 0}, "k0")}
    planned = run(keyset(("k1",), "k1"), history, acks, "r0", 500.0, None)
    assert "k0" in planned.plan.verifier.kids
    assert decision(planned, "k0").state == "retained"


def test_revoked_kids_are_nowhere_even_before_history_says_so() -> None:
    history = fleet_history(0, "k0", "k1", active="k1")
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k1")}
    source = keyset(("k0", "k1"), "k1")
    planned = plan_replica(
        source,
        history,
        acks,
        replica_id="r0",
        policy=POLICY,
        now=10.0,
        previous_signer=source,
        revocations={"k1": Revocation(5.0, "leaked")},
    )
    assert "k1" not in planned.plan.verifier.kids
    assert "k1" not in planned.plan.signer.kids
    # As the single-replica plan: k0 was never signed with; no kid is usable, none is chosen.
    assert planned.signing_kid is None
    assert decision(planned, "k1").state == "revoked"
    assert history["k1"].revoked is None, "the planner never mutates what it is given"


def test_first_key_of_a_new_fleet() -> None:
    """Nothing in use anywhere: the first kid is used as soon as its replica acknowledged it."""
    source = keyset(("k0",), "k0")
    first = run(source, {}, {}, "r0", 0.0, None)
    assert first.signing_kid is None and "k0" in first.plan.verifier.kids
    acks = {"r0": acknowledge("r0", first.plan.verifier, None, 0.0)}
    second = run(source, {}, acks, "r0", 0.0, None)
    assert second.signing_kid == "k0"
    assert second.opens == "k0"


def test_acks_keep_their_since_and_shrink_before_a_commit_that_drops() -> None:
    before = acknowledge("r0", keyset(("k0", "k1"), "k0"), "k0", 10.0)
    after = acknowledge("r0", keyset(("k1", "k2"), "k1"), "k1", 20.0, before)
    assert dict(after.kids) == {"k1": 10.0, "k2": 20.0}
    assert ack_changed(before, after)
    assert not ack_changed(after, acknowledge("r0", keyset(("k1", "k2"), "k1"), "k1", 30, after))
    shrunk = ack_before_commit(before, keyset(("k1", "k2"), "k1"))
    assert shrunk is not None and dict(shrunk.kids) == {"k1": 10.0} and shrunk.signing is None
    assert ack_before_commit(before, keyset(("k0", "k1", "k2"), "k1")) is None


def test_follow_acks_closes_a_kid_only_when_nobody_signs_it() -> None:
    history = fleet_history(0, "k0", "k1", active="k0")
    acks = {
        "r0": ack("r0", {"k0": 0, "k1": 3}, "k1"),
        "r1": ack("r1", {"k0": 0, "k1": 5}, "k0"),
    }
    history, _ = follow_acks(history, acks, 50.0)
    assert history["k1"].active_from == 50.0
    assert history["k0"].active_until is None, "r1 still signs with k0"
    acks["r1"] = ack("r1", {"k0": 0, "k1": 5}, "k1")
    history, events = follow_acks(history, acks, 60.0)
    assert history["k0"].active_until == 60.0
    assert {"event": "key_deactivated", "kid": "k0", "fleet": True} in events
    # Everyone withholds: the newest kid stays the fleet's, so the next one still waits.
    history, _ = follow_acks(history, {"r0": ack("r0", {"k1": 3})}, 70.0)
    assert history["k1"].active_until is None
    # No live replica publishes k0 any more: retired; published again starts anew.
    assert history["k0"].retired_at == 70.0
    history, _ = follow_acks(history, {"r0": ack("r0", {"k0": 80, "k1": 3})}, 90.0)
    assert history["k0"].first_published == 80.0 and history["k0"].retired_at is None


def test_open_signing_inserts_a_record_the_leader_has_not_seen() -> None:
    source = keyset(("k0",), "k0")
    acks = {"r0": acknowledge("r0", source, None, 0.0)}
    planned = run(source, {}, acks, "r0", 1.0, None)
    opened = open_signing({}, planned, 1.0)
    assert opened["k0"].active_from == 1.0 and opened["k0"].active_until is None
    assert open_signing(opened, run(source, opened, acks, "r0", 2.0, "k0"), 2.0) is opened


# -- the simulation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    kids: tuple[str, ...]
    active: str | None


@dataclass(frozen=True, slots=True)
class Cycle:
    """Replica ``index`` runs one refresh (starting it, or resuming it if stopped)."""

    index: int


@dataclass(frozen=True, slots=True)
class Lead:
    """The leader's history maintenance alone, between replica cycles."""


@dataclass(frozen=True, slots=True)
class Stop:
    """SIGSTOP: no refresh, no keepalive; the lease (and ack) stays until Expire."""

    index: int


@dataclass(frozen=True, slots=True)
class Expire:
    """A stopped replica's lease runs out: its ack disappears."""

    index: int


@dataclass(frozen=True, slots=True)
class Rotate:
    """What a rotation does to the source: add the next kid, make the newest active, or drop
    the oldest (kids cycle through the pool, as managed rotation's do)."""

    move: str  # add | activate | drop


@dataclass(frozen=True, slots=True)
class CycleAll:
    """Every started replica refreshes once, in order (a quiet fleet catching up)."""


Step = Source | Cycle | Lead | Stop | Expire | Advance | Revoke | Unrevoke | Rotate | CycleAll


@st.composite
def sources(draw: st.DrawFn) -> Source:
    kids = draw(st.lists(st.sampled_from(KIDS), min_size=1, max_size=3, unique=True))
    active = draw(st.sampled_from(kids)) if draw(st.integers(0, 5)) else None
    return Source(tuple(sorted(kids)), active)


def steps(horizon: int) -> st.SearchStrategy[Step]:
    """Weighted toward what rotation looks like: source moves, refreshes and time passing."""
    replica = st.integers(0, len(REPLICAS) - 1)
    rotate = st.builds(Rotate, st.sampled_from(["add", "activate", "drop"]))
    cycle = st.builds(Cycle, replica)
    advance = st.builds(Advance, st.integers(0, horizon).map(float))
    rare = st.one_of(
        sources(),
        st.builds(Revoke, st.sampled_from(KIDS)),
        st.builds(Unrevoke, st.sampled_from(KIDS)),
    )
    leases = st.one_of(st.builds(Stop, replica), st.builds(Expire, replica))
    weighted: list[st.SearchStrategy[Step]] = [
        *[rotate] * 3,
        *[cycle] * 5,
        *[st.just(CycleAll())] * 2,
        st.just(Lead()),
        *[advance] * 3,
        leases,
        rare,
    ]
    return st.one_of(weighted)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Policy, list[Step]]:
    delay = draw(st.sampled_from([0, 1, 3, 10]))
    retention = draw(st.sampled_from([0, 1, 4, 10]))
    horizon = 2 * max(delay, retention, 1)
    first = draw(sources())
    rest = draw(st.lists(steps(horizon), min_size=30, max_size=80))
    return Policy(float(delay), float(retention)), [first, Cycle(0), *rest]


@dataclass(slots=True)
class Replica:
    rid: str
    started: bool = False
    running: bool = False
    verifier: Keyset | None = None
    signer: Keyset | None = None
    previous_signer: Keyset | None = None
    fetched: Keyset | None = None
    last_ack: Ack | None = None
    #: Lost its lease while stopped: its outputs are stale until its next signer commit.
    stale: bool = False


@dataclass(slots=True)
class Fleet:
    policy: Policy
    now: float = 1_700_000_000.0
    source: Keyset | None = None
    history: Records = field(default_factory=dict)
    revocations: dict[str, Revocation] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=lambda: [Replica(r) for r in REPLICAS])
    #: Per kid: since when some replica's verifier outputs have held it without a gap.
    published_since: dict[str, float] = field(default_factory=dict)
    #: Per replica and kid: since when its verifier outputs have held it without a gap.
    held_since: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Kids some replica has signed with since they were last published nowhere.
    ever_signed: set[str] = field(default_factory=set)
    #: Per kid: the last time a replica whose signer outputs are in use held it.
    last_signed: dict[str, float] = field(default_factory=dict)
    #: Per replica: kids revoked since its last cycle. Its signer outputs may still hold one
    #: (even after the revocation is lifted): tokens signed with it are meant to fail.
    unseen_revocations: dict[str, set[str]] = field(default_factory=dict)

    # -- the actors ------------------------------------------------------------------------

    def run(self, step: Step) -> None:
        if isinstance(step, Source):
            self.source = keyset(step.kids, step.active)
        elif isinstance(step, Rotate):
            self.rotate(step.move)
        elif isinstance(step, CycleAll):
            for replica in self.replicas:
                if replica.started:
                    self.cycle(replica)
                    self.check()
        elif isinstance(step, Advance):
            self.now += step.seconds
        elif isinstance(step, Revoke):
            self.revocations.setdefault(step.kid, Revocation(self.now, "test"))
            self.last_signed.pop(step.kid, None)  # revocation breaks the token's lifetime
            for replica in self.replicas:
                self.unseen_revocations.setdefault(replica.rid, set()).add(step.kid)
        elif isinstance(step, Unrevoke):
            self.revocations.pop(step.kid, None)
        elif isinstance(step, Stop):
            self.replicas[step.index].running = False
        elif isinstance(step, Expire):
            replica = self.replicas[step.index]
            if replica.started and not replica.running:
                self.acks.pop(replica.rid, None)
                replica.stale = True
        elif isinstance(step, Lead):
            self.lead()
        elif isinstance(step, Cycle):
            self.cycle(self.replicas[step.index])
        self.check()

    def rotate(self, move: str) -> None:
        source = self.source or Keyset(())
        kids = list(source.kids)
        if move == "add":
            newest = max((KIDS.index(k) for k in kids), default=-1)
            kid = KIDS[(newest + 1) % len(KIDS)]
            if kid not in kids:
                kids.append(kid)
        elif move == "activate" and kids:
            active = max(kids, key=KIDS.index)
            self.source = keyset(tuple(kids), active)
            return
        elif move == "drop" and len(kids) > 1:
            oldest = min((k for k in kids if k != source.active_kid), key=KIDS.index, default=None)
            if oldest is not None:
                kids.remove(oldest)
        self.source = keyset(tuple(kids), source.active_kid if source.active_kid in kids else None)

    def leader(self) -> Replica | None:
        live = [r for r in self.replicas if r.running and r.rid in self.acks]
        return live[0] if live else None

    def lead(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        history = self.history
        if leader.fetched is not None:
            history = observe(history, leader.fetched, self.now)
        self.history = follow_acks(history, self.acks, self.now, self.revocations)[0]

    def cycle(self, replica: Replica) -> None:
        replica.started = replica.running = True
        if self.source is None:
            return
        replica.fetched = self.source
        if self.leader() is replica:
            self.lead()
        planned = plan_replica(
            self.source,
            self.history,
            dict(self.acks),
            replica_id=replica.rid,
            policy=self.policy,
            now=self.now,
            previous_signer=replica.previous_signer,
            revocations=dict(self.revocations),
        )
        check_plan(planned, self.revocations)
        before = replica.signer.active_kid if replica.signer is not None else None
        kept = replica.previous_signer.active_kid if replica.previous_signer else None
        own = self.acks.get(replica.rid)
        if planned.signing_kid not in (None, kept):
            assert own is not None and own.holds(planned.signing_kid), (
                f"{replica.rid} starts signing {planned.signing_kid} before acknowledging it"
            )
        if (shrunk := ack_before_commit(self.acks.get(replica.rid), planned.plan.verifier)) and (
            replica.rid in self.acks
        ):
            self.acks[replica.rid] = shrunk
            self.check()
        replica.verifier = planned.plan.verifier
        self.check()
        self.history = open_signing(self.history, planned, self.now)
        self.check()
        replica.signer = planned.plan.signer
        replica.stale = False
        self.unseen_revocations.pop(replica.rid, None)
        if planned.plan.signer.active is not None:
            replica.previous_signer = planned.plan.signer
        self.check_activation(before, planned.signing_kid, replica)
        self.check()
        new = acknowledge(
            replica.rid, planned.plan.verifier, planned.signing_kid, self.now, replica.last_ack
        )
        if ack_changed(self.acks.get(replica.rid), new):
            self.acks[replica.rid] = new
        replica.last_ack = self.acks[replica.rid]

    # -- the guarantees, after every step and between the steps of a cycle ------------------

    def in_use(self) -> list[Replica]:
        """Replicas whose signer outputs count: running, or stopped with the lease alive.

        Not one that lost its lease while stopped, until its first signer commit after it
        resumed: what its files held meanwhile is the cost of the stop (the fleet went on).
        """
        return [
            r
            for r in self.replicas
            if r.started and not r.stale and (r.running or r.rid in self.acks)
        ]

    def check(self) -> None:
        live = [r for r in self.replicas if r.rid in self.acks]
        # A revoked kid leaves each replica's outputs at its next cycle (check_plan); tokens
        # signed with it are meant to fail everywhere from then on.
        revoked = set(self.revocations)
        for replica in live:
            held = set(replica.verifier.kids) if replica.verifier is not None else set()
            listed = set(self.acks[replica.rid].kids)
            assert listed <= held, f"{replica.rid}'s ack lists {listed - held} it lacks"
        for replica in self.in_use():
            kid = replica.signer.active_kid if replica.signer is not None else None
            if kid is None or kid in revoked | self.unseen_revocations.get(replica.rid, set()):
                continue
            self.last_signed[kid] = self.now
            assert replica.verifier is not None and kid in replica.verifier.kids
            for other in live:
                assert kid in self.acks[other.rid].kids, (
                    f"{replica.rid} signs with {kid}; live {other.rid}'s verifier lacks it"
                )
        for kid, signed in self.last_signed.items():
            if kid in revoked or self.now >= signed + self.policy.retention:
                continue
            for other in live:
                assert other.verifier is not None and kid in other.verifier.kids, (
                    f"{kid} signed at {signed}: {other.rid} dropped it at {self.now}"
                )
        self.track_publication()

    def track_publication(self) -> None:
        held = {k for r in self.replicas if r.verifier is not None for k in r.verifier.kids}
        for kid in held:
            self.published_since.setdefault(kid, self.now)
        for kid in set(self.published_since) - held:
            del self.published_since[kid]
            self.ever_signed.discard(kid)
        for replica in self.replicas:
            mine = set(replica.verifier.kids) if replica.verifier is not None else set()
            since = self.held_since.setdefault(replica.rid, {})
            for kid in mine:
                since.setdefault(kid, self.now)
            for kid in set(since) - mine:
                del since[kid]
        for replica in self.in_use():
            if replica.signer is not None and replica.signer.active_kid is not None:
                self.ever_signed.add(replica.signer.active_kid)

    def check_activation(self, before: str | None, after: str | None, replica: Replica) -> None:
        """Signers move to a kid only activation_delay after it was first published anywhere,
        unless they had no usable kid (bootstrap, revocation) to keep; and a kid nobody has
        signed with yet, only once every live replica has published it that long."""
        if after is None or after == before or before is None or before in self.revocations:
            return
        since = self.published_since.get(after, self.now)
        delay = self.policy.activation_delay
        assert self.now - since >= delay, (
            f"signers moved {before} -> {after} at {self.now}, published only since {since}"
        )
        if after in self.ever_signed:  # updated by check(), which has not run since the commit
            return
        for other in self.replicas:
            if other.rid not in self.acks or other is replica:
                continue
            held = self.held_since.get(other.rid, {}).get(after, self.now)
            assert self.now - held >= delay, (
                f"{replica.rid} moved to {after} at {self.now}; {other.rid} holds it since {held}"
            )


def check_plan(planned: FleetPlan, revocations: dict[str, Revocation]) -> None:
    plan = planned.plan
    verifier, signer = set(plan.verifier.kids), set(plan.signer.kids)
    assert len(verifier) == len(plan.verifier) and len(signer) == len(plan.signer)
    assert signer <= verifier
    assert not (verifier | signer) & set(revocations)
    if plan.active_kid is not None:
        assert plan.active_kid in verifier
        # Every source here holds private keys: signers never get a public half to sign with.
        active = plan.signer.active
        assert active is not None and active.has_private, f"{active} has no private half"
    assert plan.fingerprint == plan.verifier.fingerprint()


FLEET = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FLEET
@given(scenarios())
def test_no_replica_signs_with_a_kid_a_live_verifier_lacks(
    scenario: tuple[Policy, list[Step]],
) -> None:
    policy, script = scenario
    fleet = Fleet(policy)
    for step in script:
        fleet.run(step)


@pytest.mark.parametrize("delay", [0.0, 5.0])
def test_the_fleet_rotates_once_a_stopped_replica_expires(delay: float) -> None:
    """Rotation does not wait for ever for a stopped replica; the one that comes back catches
    up before it signs with the new kid."""
    fleet = Fleet(Policy(activation_delay=delay, retention=30.0))
    fleet.run(Source(("k0",), "k0"))
    for index in range(3):
        fleet.run(Cycle(index))
    for index in range(3):
        fleet.run(Cycle(index))
    assert [r.signer.active_kid for r in fleet.replicas if r.signer] == ["k0"] * 3
    fleet.run(Stop(2))
    fleet.run(Source(("k0", "k1"), "k1"))
    for _ in range(3):
        fleet.run(Advance(delay))
        fleet.run(Cycle(0))
        fleet.run(Cycle(1))
    assert signing(fleet, 0) == "k0", "r2 is live and lacks k1"
    fleet.run(Expire(2))
    for _ in range(2):
        fleet.run(Advance(delay))
        fleet.run(Cycle(0))
        fleet.run(Cycle(1))
    assert [signing(fleet, 0), signing(fleet, 1)] == ["k1", "k1"]
    closed = fleet.history["k0"].active_until is not None
    fleet.run(Cycle(2))
    # Came back: keeps its kid one cycle while the fleet holds it open, else signs nothing.
    assert signing(fleet, 2) == (None if closed else "k0")
    fleet.run(Cycle(2))
    assert signing(fleet, 2) == "k1"


def test_follow_acks_reopens_a_closed_kid_a_replica_signs_again() -> None:
    """A replica back from a stop keeps k0 after the fleet closed it: retention restarts from
    its move off k0, not from the earlier close."""
    history = fleet_history(0, "k0", "k1", active="k1")
    history["k0"] = replace(history["k0"], active_from=0.0, active_until=50.0)
    history["k1"] = replace(history["k1"], active_from=40.0)
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k1"), "r2": ack("r2", {"k0": 0, "k1": 60}, "k0")}
    history, _ = follow_acks(history, acks, 61.0)
    assert history["k0"].active_until is None and history["k0"].active_from == 0.0
    acks["r2"] = ack("r2", {"k0": 0, "k1": 60}, "k1")
    history, _ = follow_acks(history, acks, 70.0)
    assert history["k0"].active_until == 70.0


def test_signers_previous_kid_stays_published_through_the_signer_commit() -> None:
    """r0 comes back signing k0, which left its source and the history, and r1 lacks it: r0
    withholds, and its verifier outputs keep k0 until the signer commit has replaced it."""
    source = keyset(("k1",), "k1")
    acks = {"r1": ack("r1", {"k1": 0}, None)}
    planned = plan_replica(
        source,
        {},
        acks,
        replica_id="r0",
        policy=POLICY,
        now=100.0,
        previous_signer=keyset(("k0",), "k0"),
    )
    assert planned.signing_kid is None
    kept = planned.plan.verifier.get("k0")
    assert kept is not None and not kept.has_private


# -- the shared documents ----------------------------------------------------------------------


def test_documents_round_trip_canonically() -> None:
    history = fleet_history(0, "k0", "k1", active="k1")
    raw = encode_history(history)
    assert decode_history(raw) == history
    assert encode_history(dict(reversed(history.items()))) == raw, "same records, same bytes"
    revoked = {"k0": Revocation(12.5, "leaked in a log")}
    assert decode_revocations(encode_revocations(revoked)) == revoked
    acked = acknowledge("r0", keyset(("k0", "k1"), "k1"), "k1", 7.0)
    decoded = decode_ack(encode_ack(acked))
    assert decoded == acked and decoded.kids == {"k0": 7.0, "k1": 7.0}
    # The shape of state_dir/history.json: a local history reads as a fleet one.
    assert json.loads(raw)["keys"]["k1"]["active_from"] == 0.0


def _mangled(raw: bytes, *path: str, value: object) -> bytes:
    doc = json.loads(raw)
    node = doc
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(doc).encode()


SECRET = "d-private-member-value"


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("version",), 2, "fleet history.version"),
        (("keys",), [], "fleet history.keys: not a JSON object"),
        (("keys", "k0", "first_seen"), "yesterday", "fleet history.keys.k0.first_seen"),
        (("keys", "k0", "first_seen"), KeyError, "fleet history.keys.k0.first_seen: missing"),
        (("keys", "k0", "active_from"), float("nan"), "keys.k0.active_from: not a finite time"),
        (("keys", "k0", "active_until"), True, "fleet history.keys.k0.active_until"),
        (("keys", "k0", "kid"), "k9", "fleet history.keys.k0.kid: does not match"),
        (("keys", "k0", "material"), 5, "fleet history.keys.k0.material"),
        (("keys", "k0", "public_jwk", "d"), SECRET, "keys.k0.public_jwk: holds private"),
        (("keys", "k0", "public_jwk", "x"), 5, "fleet history.keys.k0.public_jwk.x"),
        (("keys", "k0", "extra"), SECRET, "fleet history.keys.k0: unknown field 'extra'"),
        (("lkg_sha256",), "00", "fleet history: unknown field 'lkg_sha256'"),
    ],
)
def test_a_malformed_history_is_refused_by_name(
    path: tuple[str, ...], value: object, named: str
) -> None:
    raw = _mangled(encode_history(fleet_history(0, "k0", active="k0")), *path, value=value)
    with pytest.raises(FleetDocumentError, match="fleet history") as info:
        decode_history(raw)
    assert named in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("replica_id",), "", "fleet ack.replica_id"),
        (("kids",), ["k0"], "fleet ack of r0.kids: not a JSON object"),
        (("kids", "k0"), -1, "fleet ack of r0.kids.k0: not a finite time"),
        (("signing",), "k9", "fleet ack of r0.signing: a kid its verifier outputs do not hold"),
        (("at",), None, "fleet ack of r0.at"),
        (("fingerprint",), 3, "fleet ack of r0.fingerprint"),
        (("version",), "1", "fleet ack.version"),
    ],
)
def test_a_malformed_ack_is_refused_by_name(
    path: tuple[str, ...], value: object, named: str
) -> None:
    raw = _mangled(
        encode_ack(acknowledge("r0", keyset(("k0",), "k0"), "k0", 1.0)), *path, value=value
    )
    with pytest.raises(FleetDocumentError) as info:
        decode_ack(raw)
    assert named in str(info.value)


def test_malformed_revocations_are_refused_by_name() -> None:
    good = encode_revocations({"k0": Revocation(1.0)})
    for path, value, named in [
        (("revoked", "k0", "at"), "now", "fleet revocations.revoked.k0.at"),
        (("revoked", "k0", "reason"), 1, "fleet revocations.revoked.k0.reason"),
        (("revoked", "k0", "at"), 10**400, "fleet revocations.revoked.k0.at"),
        (("revoked",), None, "fleet revocations.revoked"),
    ]:
        with pytest.raises(FleetDocumentError) as info:
            decode_revocations(_mangled(good, *path, value=value))
        assert named in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"[]", b"null", b"{}", b"[" * 100_000, b"1e999"])
def test_garbage_is_a_document_error(raw: bytes) -> None:
    for decode in (decode_history, decode_revocations, decode_ack):
        with pytest.raises(FleetDocumentError):
            decode(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from(["history", "ack", "revocations"]),
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "keys",
                "revoked",
                "replica_id",
                "at",
                "kids",
                "signing",
                "fingerprint",
                "k0",
            ]
        ),
        JSON,
    ),
)
def test_any_json_decodes_or_is_a_document_error(kind: str, doc: dict[str, object]) -> None:
    """A value another version or a hand wrote: decoded, or refused by name, nothing else."""
    doc.setdefault("version", 1)
    raw = json.dumps(doc).encode()
    decode = {"history": decode_history, "ack": decode_ack, "revocations": decode_revocations}
    with contextlib.suppress(FleetDocumentError):
        decode[kind](raw)


def test_follow_acks_keeps_open_a_kid_whose_signer_vanished() -> None:
    """r1 signed k0 and its lease ended (cut off, perhaps still signing): not closed yet."""
    history = fleet_history(0, "k0", "k1", active="k0")
    history["k1"] = replace(history["k1"], active_from=10.0)
    acks = {"r0": ack("r0", {"k0": 0, "k1": 0}, "k1")}
    kept, _ = follow_acks(history, acks, 20.0, keep_open={"k0"})
    assert kept["k0"].active_until is None
    closed, _ = follow_acks(history, acks, 20.0)
    assert closed["k0"].active_until == 20.0
