"""Fleet mode under faults: kill -9 of the leader replica and of the etcd leader, a replica
stopped past its lease, etcd fully down, and a fleet-wide revoke. Harness: ``tests/fleet.py``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

from keysetd.fleet.etcd import EtcdSettings, EtcdStore
from keysetd.status import readiness, status_document
from tests.conftest import KEYSETD, wait_for
from tests.etcd import EtcdCluster
from tests.fleet import (
    LEASE_TTL,
    Replica,
    acked_by_others,
    caught_up,
    cli,
    etcd,
    leader_of,
    make_fleet,
    read_json,
    rotate_and_check,
)

__all__ = ["etcd", "make_fleet"]  # fixtures


def test_kill_9_of_the_leader_and_of_the_etcd_leader_mid_rotation(
    etcd: EtcdCluster, make_fleet: Callable[[EtcdCluster, int], list[Replica]]
) -> None:
    replicas = make_fleet(etcd, 5)
    checker = rotate_and_check(replicas, 2, limit=30)
    leader = leader_of(replicas)
    wait_for(
        lambda: len((read_json(leader.source) or {"keys": []})["keys"]) == 2,
        timeout=10,
        what="a rotation under way (two keys in the leader's source)",
    )
    assert leader.proc is not None
    leader.proc.kill()  # kill -9: no lease revoke, no cleanup
    leader.proc.wait()
    etcd.leader().kill9()
    time.sleep(1.0)
    leader.start()  # a restarted pod: same state_dir, new lease, catches up
    checker = rotate_and_check(replicas, 4, limit=60, checker=checker)
    checker.stop()
    assert checker.failures == [], checker.failures[:5]
    assert leader_of(replicas) is not None


def test_a_replica_stopped_past_its_lease_neither_stalls_the_fleet_nor_signs_stale(
    etcd: EtcdCluster, make_fleet: Callable[[EtcdCluster, int], list[Replica]]
) -> None:
    replicas = make_fleet(etcd, 3)
    checker = rotate_and_check(replicas, 1, limit=30)
    stopped = next(r for r in replicas if r is not leader_of(replicas))
    checker.not_signing.add(stopped.name)
    checker.not_verifying.add(stopped.name)
    stopped.signal(signal.SIGSTOP)
    before = len(checker.signed_kids)
    # The fleet goes on once the stopped replica's lease has expired.
    rotate_and_check(replicas, 2, limit=LEASE_TTL + 20, checker=checker)
    assert len(checker.signed_kids) >= before + 2
    resumed = time.time()
    stopped.signal(signal.SIGCONT)
    # Its first commit after resuming: from then on it signs only what every consumer holds.
    status = stopped.root / "state" / "status.json"
    wait_for(lambda: status.stat().st_mtime > resumed, timeout=10, what="a cycle after resume")
    checker.not_signing.discard(stopped.name)
    wait_for(lambda: acked_by_others(replicas, stopped.name), timeout=10, what="its ack back")
    # A kid another replica moved to while this one had no ack may still be on its way (one
    # refresh): the catch-up the stop costs. Counted again once its consumer holds them all.
    wait_for(lambda: caught_up(replicas, stopped), timeout=10, what="its consumer caught up")
    checker.not_verifying.discard(stopped.name)
    rotate_and_check(replicas, 2, limit=30, checker=checker)
    checker.stop()
    assert checker.failures == [], checker.failures[:5]


def test_etcd_down_keeps_outputs_and_signers_then_recovers_by_itself(
    etcd: EtcdCluster, make_fleet: Callable[..., list[Replica]]
) -> None:
    # An outage shorter than lease_ttl + retention costs no signing (past it a replica cannot
    # tell a dead store from its own partition, and withholds: test_fleet_partition.py).
    replicas = make_fleet(etcd, 3, {"activation_delay": "300ms", "retention": "20s"})
    checker = rotate_and_check(replicas, 1, limit=30)
    for member in etcd.members:
        member.kill9()
    # A source the leader wrote just before may still be on its way to the others (up to 1 s):
    # once it has arrived and each replica has run a cycle on it, nothing may change.
    wait_for(
        lambda: len({r.source.read_bytes() for r in replicas}) == 1,
        timeout=10,
        what="the last source the leader wrote copied to every replica",
    )

    def settled(replica: Replica) -> bool:
        status = replica.root / "state" / "status.json"
        return (
            replica.status().get("fleet", {}).get("store") == "unreachable"
            and status.stat().st_mtime_ns > replica.source.stat().st_mtime_ns
        )

    wait_for(
        lambda: all(settled(r) for r in replicas),
        timeout=15,
        what="every replica reports the store unreachable after a cycle on its last source",
    )
    signers = {r.name: r.signer.read_bytes() for r in replicas}
    time.sleep(3.0)  # three rotation periods: none may happen
    assert {r.name: r.signer.read_bytes() for r in replicas} == signers
    assert all(r.proc is not None and r.proc.poll() is None for r in replicas)
    ok, reason = readiness(status_document(replicas[0].root / "state"), 3600.0)
    assert ok and "fleet store unreachable" in reason
    # A replica restarted during the outage serves what it served, from state_dir.
    restarted = replicas[1]
    restarted.stop()
    restarted.start()
    wait_for(
        lambda: restarted.status().get("fleet", {}).get("error") is not None,
        timeout=10,
        what="the restarted replica's first cycle",
    )
    time.sleep(1.0)
    assert restarted.signer.read_bytes() == signers[restarted.name]
    for member in etcd.members:
        member.restart()
    etcd.wait_ready()
    rotate_and_check(replicas, 2, limit=40, checker=checker)
    checker.stop()
    assert checker.failures == [], checker.failures[:5]
    assert all(r.status()["fleet"]["store"] == "ok" for r in replicas)


def test_revoke_reaches_every_replica_within_six_refreshes(
    etcd: EtcdCluster, make_fleet: Callable[[EtcdCluster, int], list[Replica]]
) -> None:
    replicas = make_fleet(etcd, 3)
    checker = rotate_and_check(replicas, 2, limit=30)
    checker.stop()
    shown = cli("status", replicas[2])
    assert shown.returncode == 0, shown.stderr
    for replica in replicas:
        assert f"{replica.name} " in shown.stdout and "acked" in shown.stdout, shown.stdout
    store = EtcdStore(EtcdSettings(endpoints=etcd.endpoints, timeout=3.0))
    try:
        planned = cli("plan", replicas[2])
        candidates = [e.key for e in store.list("/fleet-test/election/")]
    finally:
        store.close()
    assert planned.returncode == 0, planned.stderr
    assert "live replicas: r0, r1, r2" in planned.stdout, planned.stdout
    assert len(candidates) == 3, "keysetd plan took no lease and stood for nothing"
    old = sorted(checker.signed_kids)[0]  # kids sort by time: the first one, retired or not
    done = subprocess.run(
        [*KEYSETD, "revoke", old, "--reason", "leaked", "-c", str(replicas[1].config_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    # Six refresh intervals from the command's exit (its own start, ~0.3 s of imports on a
    # busy machine, is not the fleet's doing).
    wait_for(
        lambda: all(old not in (r.jwks.read_text()) for r in replicas),
        timeout=1.5,
        what="the revoked kid gone from every replica's jwks",
    )
    # Revoked in the shared document only: another host lifts it there.
    assert not (replicas[1].root / "state" / "revocations.json").exists()
    lifted = subprocess.run(
        [*KEYSETD, "unrevoke", old, "-c", str(replicas[2].config_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert lifted.returncode == 0, lifted.stderr
    store = EtcdStore(EtcdSettings(endpoints=etcd.endpoints, timeout=3.0))
    try:
        shared = store.get("/fleet-test/revocations")
        assert shared is not None and old.encode() not in shared.value
    finally:
        store.close()


def test_a_reload_keeps_the_replica_in_the_fleet(
    etcd: EtcdCluster, make_fleet: Callable[[EtcdCluster, int], list[Replica]]
) -> None:
    """SIGHUP rebuilds the pipeline; the replica keeps its lease and ack (no catch-up)."""
    replicas = make_fleet(etcd, 2)
    wait_for(lambda: acked_by_others(replicas, "r1"), timeout=10, what="r1's ack")
    store = EtcdStore(EtcdSettings(endpoints=etcd.endpoints, timeout=3.0))
    try:
        before = store.get("/fleet-test/acks/r1")
        assert before is not None
        replicas[1].signal(signal.SIGHUP)
        wait_for(lambda: "config_reloaded" in replicas[1].log(), timeout=10, what="the reload")
        time.sleep(1.0)  # a few cycles of the reloaded pipeline
        after = store.get("/fleet-test/acks/r1")
        assert after is not None and after.lease == before.lease
        assert after.create_revision == before.create_revision, "the ack was never deleted"
    finally:
        store.close()
