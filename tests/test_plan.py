"""The planner and the history transitions by example: each rotation rule of DESIGN.md section 6."""

from __future__ import annotations

import copy

import pytest

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

KEYS: dict[str, Key] = {kid: generate("ES256", kid) for kid in ("a", "b", "c")}
T0 = 1_700_000_000.0


class Rotation:
    """The pipeline's cycle on pure values: observe, plan, mark_published, mark_active."""

    def __init__(self, delay: float = 0.0, retention: float = 0.0) -> None:
        self.policy = Policy(activation_delay=delay, retention=retention)
        self.history: Records = {}
        self.revoked: dict[str, float] = {}
        self.keyset: Keyset | None = None
        self.signer: Keyset | None = None
        self.last: Plan | None = None

    def source(self, *kids: str, active: str | None, at: float) -> Plan:
        """The source changes: observe it, then publish."""
        self.keyset = Keyset(tuple(KEYS[k] for k in kids), active)
        self.history = observe(self.history, self.keyset, at)
        return self.tick(at)

    def revoke(self, kid: str, at: float) -> Plan:
        self.revoked[kid] = at
        return self.tick(at)

    def unrevoke(self, kid: str, at: float) -> Plan:
        del self.revoked[kid]
        return self.tick(at)

    def tick(self, at: float) -> Plan:
        """A cycle with the source unchanged: re-plan at ``at`` and commit."""
        assert self.keyset is not None
        self.history = apply_revocations(self.history, self.revoked, at)[0]
        planned = self.peek(at)
        self.history = mark_published(self.history, planned, at)[0]
        self.history = mark_activating(self.history, planned, at)[0]
        self.history = mark_active(self.history, planned, at)[0]
        if planned.signer.active is not None:
            self.signer = planned.signer
        self.last = planned
        return planned

    def peek(self, at: float) -> Plan:
        """What a cycle at ``at`` would publish, committing nothing."""
        assert self.keyset is not None
        return plan(self.keyset, self.history, self.policy, at, self.signer)


def kids(keyset: Keyset) -> set[str]:
    return set(keyset.kids)


# -- bootstrap and activation delay -------------------------------------------------


def test_first_active_key_signs_at_once() -> None:
    first = Rotation(delay=60).source("a", active="a", at=T0)
    assert first.active_kid == "a" and kids(first.verifier) == {"a"}
    assert first.next_change_at is None
    decision = first.decision("a")
    assert decision is not None and decision.state == "active"


def test_new_active_kid_waits_for_the_activation_delay() -> None:
    run = Rotation(delay=60)
    run.source("a", active="a", at=T0)
    pending = run.source("a", "b", active="b", at=T0 + 10)
    assert pending.active_kid == "a"
    assert kids(pending.verifier) == {"a", "b"}
    assert pending.next_change_at == T0 + 70
    decision = pending.decision("b")
    assert decision is not None and (decision.state, decision.until) == ("pending", T0 + 70)
    assert run.tick(T0 + 69.999).active_kid == "a"
    moved = run.tick(T0 + 70)
    assert moved.active_kid == "b" and kids(moved.verifier) == {"a", "b"}


def test_zero_delay_moves_signers_in_the_cycle_that_first_publishes() -> None:
    run = Rotation(delay=0)
    run.source("a", active="a", at=T0)
    moved = run.source("a", "b", active="b", at=T0 + 1)
    assert moved.active_kid == "b" and "b" in moved.verifier.kids


def test_source_without_active_kid_keeps_the_signers_key() -> None:
    run = Rotation(delay=60)
    run.source("a", active="a", at=T0)
    kept = run.source("b", active=None, at=T0 + 5)
    assert kept.active_kid == "a" and kids(kept.verifier) == {"a", "b"}
    signing = kept.signer.active
    assert signing is not None and signing.has_private


# -- the signer's key when the source drops it ----------------------------------------


def test_dropped_signer_key_is_held_back_until_the_new_one_is_eligible() -> None:
    run = Rotation(delay=60, retention=30)
    run.source("a", active="a", at=T0)
    held = run.source("b", active="b", at=T0 + 1)
    assert held.active_kid == "a"
    assert kids(held.verifier) == {"a", "b"} and kids(held.signer) == {"a", "b"}
    signing = held.signer.active
    assert signing is not None and signing.has_private, "signers need the private half"
    assert run.tick(T0 + 30).active_kid == "a"
    moved = run.tick(T0 + 61)
    assert moved.active_kid == "b" and kids(moved.signer) == {"b"}
    assert kids(moved.verifier) == {"a", "b"}, "a is still what signers hold until the commit"


def test_crash_window_previous_signer_key_stays_in_the_next_verifier_set() -> None:
    """Between the verifier and the signer commit, signers still hold the previous active."""
    run = Rotation(delay=10, retention=0)
    run.source("a", active="a", at=T0)
    before = run.source("b", active="b", at=T0)
    after = run.tick(T0 + 10)
    assert before.active_kid == "a" and after.active_kid == "b"
    assert "a" in after.verifier.kids
    assert after.next_change_at == T0 + 10, "re-plan right after the commit to drop a"
    assert run.tick(T0 + 10).published_kids == ("b",)


# -- retention --------------------------------------------------------------------


def test_old_signer_key_is_retained_from_when_signers_moved_off_it() -> None:
    run = Rotation(delay=10, retention=100)
    run.source("a", active="a", at=T0)
    run.source("b", active="b", at=T0 + 1)  # a leaves the source at T0 + 1
    moved = run.tick(T0 + 11)  # ... and stops signing at T0 + 11
    assert moved.active_kid == "b" and moved.next_change_at == T0 + 111
    kept = run.tick(T0 + 110.5)
    assert kids(kept.verifier) == {"a", "b"}
    decision = kept.decision("a")
    assert decision is not None and (decision.state, decision.until) == ("retained", T0 + 111)
    assert kept.next_change_at == T0 + 111
    gone = run.tick(T0 + 111)
    assert kids(gone.verifier) == {"b"} and gone.next_change_at is None


def test_key_that_leaves_the_source_is_retained_from_when_it_left() -> None:
    run = Rotation(retention=50)
    run.source("a", "c", active="a", at=T0)
    left = run.source("a", active="a", at=T0 + 5)
    assert kids(left.verifier) == {"a", "c"} and left.next_change_at == T0 + 55
    assert "c" not in left.signer.kids
    assert "c" in run.tick(T0 + 54.9).verifier.kids
    assert run.tick(T0 + 55).published_kids == ("a",)


def test_key_coming_back_within_retention_is_published_from_the_source_again() -> None:
    run = Rotation(retention=50)
    run.source("a", "c", active="a", at=T0)
    run.source("a", active="a", at=T0 + 5)
    back = run.source("a", "c", active="a", at=T0 + 10)
    assert back.next_change_at is None
    assert "c" in run.tick(T0 + 1000).verifier.kids


# -- revocation -------------------------------------------------------------------


def test_revoked_kid_is_in_no_output_at_once() -> None:
    run = Rotation(delay=60, retention=1000)
    run.source("a", "c", active="a", at=T0)
    revoked = run.revoke("c", at=T0 + 1)
    assert "c" not in revoked.verifier.kids and "c" not in revoked.signer.kids
    decision = revoked.decision("c")
    assert decision is not None and decision.state == "revoked"
    assert run.history["c"].retired_at == T0 + 1


def test_revoking_the_signers_key_ignores_retention_and_the_delay() -> None:
    """Break-glass: the source's new active kid signs at once; the revoked one is nowhere."""
    run = Rotation(delay=60, retention=1000)
    run.source("a", active="a", at=T0)
    assert run.source("a", "b", active="b", at=T0 + 1).active_kid == "a"
    revoked = run.revoke("a", at=T0 + 2)
    assert revoked.active_kid == "b"
    assert "a" not in revoked.verifier.kids and "a" not in revoked.signer.kids


def test_revoking_the_source_active_kid_leaves_signers_without_a_key() -> None:
    run = Rotation(delay=60)
    run.source("a", "b", active="a", at=T0)
    revoked = run.revoke("a", at=T0 + 1)
    assert revoked.active_kid is None and kids(revoked.verifier) == {"b"}


def test_revoked_kid_held_only_by_previous_signer_is_not_brought_back() -> None:
    run = Rotation(delay=60, retention=1000)
    run.source("a", active="a", at=T0)
    run.source("b", active="b", at=T0 + 1)  # a held back from the signer keyset
    revoked = run.revoke("a", at=T0 + 2)
    assert revoked.active_kid == "b" and kids(revoked.verifier) == {"b"}
    assert "a" not in run.tick(T0 + 3).verifier.kids


# -- purity ----------------------------------------------------------------------


def test_plan_is_deterministic_and_leaves_history_untouched() -> None:
    run = Rotation(delay=60, retention=30)
    run.source("a", active="a", at=T0)
    run.source("b", "c", active="b", at=T0 + 1)
    frozen = copy.deepcopy(run.history)
    first, second = run.peek(T0 + 2), run.peek(T0 + 2)
    assert first == second and first.fingerprint == second.fingerprint
    assert run.history == frozen


# -- regressions: bugs these tests found ---------------------------------------------


def test_clock_at_zero_does_not_hold_the_new_key_back_forever() -> None:
    """first_published == 0.0 was read as "never published": eligible always 'now + delay'."""
    run = Rotation(delay=10)
    run.source("a", active="a", at=0.0)
    run.source("a", "b", active="b", at=0.0)
    assert run.tick(10.0).active_kid == "b"


def test_key_that_left_at_time_zero_is_not_retained_forever() -> None:
    """left_source_at == 0.0 was read as "now": the retention never ended."""
    run = Rotation(retention=5)
    run.source("a", "b", active="a", at=0.0)
    run.source("a", active="a", at=0.0)
    assert run.tick(5.0).published_kids == ("a",)
    assert run.last is not None and run.last.next_change_at is None


def test_key_back_after_its_retention_waits_the_full_delay_again() -> None:
    """A kid verifiers dropped (retention over) and see again is new to them."""
    run = Rotation(delay=10, retention=0)
    run.source("a", "b", active="a", at=T0)
    run.source("a", active="a", at=T0 + 1)  # b retired
    assert run.history["b"].retired_at == T0 + 1
    back = run.source("a", "b", active="b", at=T0 + 50)
    assert back.active_kid == "a", "b was published again only now"
    assert back.next_change_at == T0 + 60
    assert run.history["b"].first_published == T0 + 50
    assert run.tick(T0 + 59).active_kid == "a"
    assert run.tick(T0 + 60).active_kid == "b"


def test_unrevoked_key_waits_the_full_delay_again() -> None:
    run = Rotation(delay=10)
    run.source("a", "b", active="a", at=T0)
    run.revoke("b", at=T0 + 1)
    run.unrevoke("b", at=T0 + 50)
    assert run.source("a", "b", active="b", at=T0 + 50).active_kid == "a"
    assert run.tick(T0 + 60).active_kid == "b"


def test_mark_published_restarts_publication_of_a_retired_kid() -> None:
    run = Rotation(retention=0)
    run.source("a", "b", active="a", at=T0)
    run.source("a", active="a", at=T0 + 1)
    records = run.history
    assert records["b"].first_published == T0 and records["b"].retired_at == T0 + 1
    again = Plan(
        verifier=Keyset((KEYS["a"], KEYS["b"]), "a"),
        signer=Keyset((KEYS["a"],), "a"),
        fingerprint="",
    )
    updated, events = mark_published(records, again, T0 + 9)
    assert updated["b"].first_published == T0 + 9 and updated["b"].retired_at is None
    assert events == [{"event": "key_published", "kid": "b", "again": True}]
    assert records["b"].first_published == T0, "the input records are not changed"


@pytest.mark.parametrize("start", [0.0, T0])
def test_each_next_change_at_is_later_and_replanning_there_changes_the_plan(start: float) -> None:
    run = Rotation(delay=10, retention=20)
    run.source("a", active="a", at=start)
    planned, now = run.source("b", active="b", at=start), start
    seen = []
    while planned.next_change_at is not None:
        assert planned.next_change_at > now
        now = planned.next_change_at
        later = run.tick(now)
        assert later.fingerprint != planned.fingerprint
        seen.append((now - start, later.active_kid, later.published_kids))
        planned = later
    assert seen == [(10.0, "b", ("b", "a")), (30.0, "b", ("b",))]


def test_next_change_for_a_key_still_in_the_source_is_a_harmless_replan() -> None:
    """The old signer key's retention ends, but the source still has it: nothing changes."""
    run = Rotation(delay=10, retention=20)
    run.source("a", active="a", at=T0)
    run.source("a", "b", active="b", at=T0)
    moved = run.tick(T0 + 10)
    assert moved.active_kid == "b" and moved.next_change_at == T0 + 30
    again = run.tick(T0 + 30)
    assert again.fingerprint == moved.fingerprint and again.next_change_at is None
