"""A replica cut off from etcd alone (a partition), or slow to tell its consumers, driven
in process on a real etcd.

The others go on and rotate; the cut-off replica keeps signing its kid. The bound is
time: it withholds signing ``lease_ttl + retention`` after its last renewal, and the
others keep the kid it signed with held open for ``retention`` after its lease went, so
its tokens verify everywhere the whole time. Found by review (tests/test_fleet_faults.py
covers etcd fully down, where nobody can write).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.crypto import generate
from keysetd.errors import StoreError
from keysetd.fleet.etcd import EtcdSettings, EtcdStore
from keysetd.fleet.member import FleetMember
from keysetd.formats.jwks import render_keyset
from keysetd.model import Keyset
from keysetd.pipeline import Pipeline
from keysetd.plan import Policy
from keysetd.state import StateStore
from tests.conftest import render_toml, wait_for
from tests.etcd import EtcdCluster, running_cluster

RETENTION = 3.0
LEASE_TTL = 2.0


class CuttableStore(EtcdStore):
    """A real etcd client whose every call fails while ``cut``: a network partition."""

    cut = False

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        if self.cut:
            raise StoreError(operation, "partition", "cut off by the test")
        return super()._call(operation, *args, **kwargs)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd", 1) as cluster:
        yield cluster


def replica(
    root: Path, name: str, endpoints: tuple[str, ...], notify: dict[str, Any] | None = None
) -> tuple[Pipeline, CuttableStore]:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "keysetd.toml"
    config_path.write_text(
        render_toml(
            {
                "state_dir": str(home / "state"),
                "source": {"type": "file", "path": str(home / "src.json")},
                "policy": {"activation_delay": "0s", "retention": f"{RETENTION}s"},
                "fleet": {
                    "endpoints": list(endpoints),
                    "prefix": "/partition",
                    "replica_id": name,
                    "lease_ttl": f"{LEASE_TTL}s",
                },
                "outputs": [
                    {"type": "jwks", "path": str(home / "jwks.json")},
                    {"type": "keyset", "path": str(home / "signer.json"), "mode": "0600"},
                ],
                "notify": [{**notify, "outputs": ["jwks"]}] if notify else [],
            }
        )
    )
    config = load_config(config_path)
    assert config.settings.fleet is not None
    store = CuttableStore(config.settings.fleet.store_settings())
    state = StateStore(config.state_dir)
    state.ensure()
    policy = Policy(0.0, RETENTION)
    member = FleetMember(config.settings.fleet, policy, state, signs=True, store=store)
    return Pipeline.open(config, fleet=member), store


def write_source(root: Path, keyset: Keyset) -> None:
    for name in ("a", "b"):
        path = root / name / "src.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_keyset(keyset))
        path.chmod(0o600)


def read(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}  # not written yet: a replica withholds signing until it has acknowledged
    return doc


def published(root: Path, name: str) -> tuple[set[str], str | None]:
    home = root / name
    jwks = {k["kid"] for k in read(home / "jwks.json").get("keys", [])}
    return jwks, read(home / "signer.json").get("active_kid")


def test_a_partitioned_replica_signs_only_what_the_others_still_publish(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    k0, k1 = generate("ES256", "k0"), generate("ES256", "k1")
    write_source(tmp_path, Keyset((k0,), "k0"))
    a, _ = replica(tmp_path, "a", etcd.endpoints)
    b, b_store = replica(tmp_path, "b", etcd.endpoints)
    seen: list[tuple[float, set[str], str | None]] = []

    def run(seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            a.cycle()
            b.cycle()
            a_kids, _ = published(tmp_path, "a")
            _, b_signs = published(tmp_path, "b")
            seen.append((time.monotonic(), a_kids, b_signs))
            assert b_signs is None or b_signs in a_kids, f"b signs {b_signs}, a has {a_kids}"
            time.sleep(0.2)

    try:
        run(1.5)
        assert published(tmp_path, "b")[1] == "k0"
        b_store.cut = True
        cut_at = time.monotonic()
        write_source(tmp_path, Keyset((k0, k1), "k1"))
        run(LEASE_TTL + 1.0)
        assert published(tmp_path, "a")[1] == "k1", "the others go on without b"
        write_source(tmp_path, Keyset((k1,), "k1"))  # k0 leaves every source
        run(LEASE_TTL + 2 * RETENTION + 1.0)
        withheld = [t - cut_at for t, _, signs in seen if t > cut_at and signs is None]
        assert withheld, "b withholds signing once it may be presumed gone for retention"
        assert withheld[0] <= LEASE_TTL + RETENTION + 1.0
        assert "k0" not in published(tmp_path, "a")[0], "k0 goes once nobody may sign it"
    finally:
        b_store.cut = False
        a.close()
        b.close()


def test_a_slow_verifier_consumer_keeps_its_replica_counted(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """b's consumer takes twice the lease to load a new kid: the keepalive thread keeps b's
    lease (and its ack, which lacks the kid) alive, so a waits for b instead of signing."""
    k0, k1 = generate("ES256", "k0"), generate("ES256", "k1")
    write_source(tmp_path, Keyset((k0,), "k0"))
    told = tmp_path / "b" / "told"
    slow = f'if grep -q k1 "$1"; then sleep {2 * LEASE_TTL}; date +%s.%N > {told}; fi'
    jwks = str(tmp_path / "b" / "jwks.json")
    notify = {"type": "command", "argv": ["/bin/sh", "-c", slow, "reload", jwks], "timeout": "30s"}
    a, _ = replica(tmp_path, "a", etcd.endpoints)
    b, _ = replica(tmp_path, "b", etcd.endpoints, notify=notify)
    try:

        def both_sign_k0() -> bool:
            a.cycle()
            b.cycle()
            return published(tmp_path, "a")[1] == published(tmp_path, "b")[1] == "k0"

        wait_for(both_sign_k0, timeout=10, what="both replicas sign k0")
        write_source(tmp_path, Keyset((k0, k1), "k1"))
        slow_cycle = threading.Thread(target=b.cycle)
        slow_cycle.start()
        signed_at = None
        started = time.monotonic()
        while time.monotonic() - started < 2 * LEASE_TTL + 2.0:
            a.cycle()
            if signed_at is None and published(tmp_path, "a")[1] == "k1":
                signed_at = time.time()
            time.sleep(0.1)
        slow_cycle.join(timeout=30)
        assert told.exists(), "b's consumer was told"
        told_at = float(told.read_text())
        assert signed_at is None or signed_at >= told_at, "a signed k1 before b's consumer had it"
    finally:
        a.close()
        b.close()


def test_a_leader_whose_lease_went_unseen_writes_nothing(tmp_path: Path, etcd: EtcdCluster) -> None:
    """Its snapshot still says it leads; the shared history is fenced by its election key."""
    k0, k1 = generate("ES256", "k0"), generate("ES256", "k1")
    write_source(tmp_path, Keyset((k0,), "k0"))
    a, a_store = replica(tmp_path, "a", etcd.endpoints)
    try:
        a.cycle()
        member = a.fleet
        assert member is not None and member.leading
        before = a_store.get("/partition/history")
        assert before is not None
        other = EtcdStore(EtcdSettings(etcd.endpoints, timeout=3.0))
        try:
            lease = next(e.lease for e in other.list("/partition/election/"))
            assert other.revoke(lease)  # as if it expired while this leader was stalled
        finally:
            other.close()
        assert member.leading, "it has not read the store since"
        member.plan(Keyset((k0, k1), "k1"), time.time(), None)  # k1 for the history
        after = a_store.get("/partition/history")
        assert after is not None and after.mod_revision == before.mod_revision
    finally:
        a.close()


def test_a_revoke_on_a_host_cut_off_from_etcd_holds_there(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """``keysetd revoke`` falls back to this host's revocations.json when etcd is out of
    reach (it says so and exits 1): the daemon there drops the kid all the same."""
    k0, k1 = generate("ES256", "k0"), generate("ES256", "k1")
    write_source(tmp_path, Keyset((k0, k1), "k1"))
    a, a_store = replica(tmp_path, "a", etcd.endpoints)
    try:
        a.cycle()
        assert published(tmp_path, "a")[0] == {"k0", "k1"}
        a_store.cut = True
        StateStore(tmp_path / "a" / "state").update_revocations("k0", {"at": time.time()})
        a.cycle()
        assert published(tmp_path, "a")[0] == {"k1"}
    finally:
        a_store.cut = False
        a.close()
