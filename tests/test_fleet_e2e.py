"""Fleet mode end to end: five replicas through managed rotations, 0 failed verifications.

The harness (lagging source copies, slow verifier consumers, the checker) is ``tests/fleet.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.etcd import EtcdCluster
from tests.fleet import Replica, etcd, make_fleet, rotate_and_check

__all__ = ["etcd", "make_fleet"]  # fixtures

#: Managed rotations the five-replica test runs through (``FLEET_ROTATIONS=200`` for longer).
#: 12 (~1.6 s each) keep the gate honest: planning from a replica's own ack alone fails it
#: within 6, and with dozens of refused tokens in 12 (checked by hand).
ROTATIONS = int(os.environ.get("FLEET_ROTATIONS", "12"))


def test_five_replicas_rotate_together_with_no_failed_verification(
    etcd: EtcdCluster, make_fleet: Callable[[EtcdCluster, int], list[Replica]]
) -> None:
    replicas = make_fleet(etcd, 5)
    checker = rotate_and_check(replicas, ROTATIONS, limit=ROTATIONS * 4 + 20)
    checker.stop()
    print(f"{len(checker.signed_kids)} kids, {checker.checked} verifications")
    assert checker.failures == [], checker.failures[:5]
    assert checker.checked > 100
    leaders = {r.status().get("fleet", {}).get("leader") for r in replicas}
    assert len(leaders) == 1 and None not in leaders
    acked = replicas[0].status()["fleet"]["replicas"]
    assert sorted(acked) == [r.name for r in replicas]
