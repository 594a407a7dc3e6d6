"""``kid-reused`` in a fleet: the leader starts the wait in the shared history, every
replica takes the new material together once it is over, or at once after
``keysetd forget``. Two in-process replicas on a real etcd, public keys only (a fleet of
verifier sidecars in front of an IdP that recreated a fixed kid).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.fleet.etcd import EtcdSettings, EtcdStore
from keysetd.fleet.state import decode_history
from keysetd.pipeline import Pipeline
from keysetd.state import KeyRecord
from tests.conftest import KEYSETD, render_toml
from tests.etcd import EtcdCluster, running_cluster
from tests.keys import jwk, jwks_doc, public


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd", 1) as cluster:
        yield cluster


def replica(root: Path, name: str, etcd: EtcdCluster, retention: str) -> Pipeline:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "state_dir": str(home / "state"),
        "source": {"type": "file", "path": str(home / "src.json")},
        "policy": {"retention": retention},
        "fleet": {"endpoints": list(etcd.endpoints), "prefix": "/reuse", "replica_id": name},
        "outputs": [{"type": "jwks", "path": str(home / "jwks.json")}],
    }
    (home / "keysetd.toml").write_text(render_toml(config))
    return Pipeline.open(load_config(home / "keysetd.toml"))


def serve(root: Path, *keys: dict[str, Any]) -> None:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "src.json").write_bytes(jwks_doc(*(public(k) for k in keys)))


def x_of(root: Path, name: str, kid: str) -> str | None:
    path = root / name / "jwks.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_bytes())
    return next((k["x"] for k in doc["keys"] if k["kid"] == kid), None)


def shared_record(etcd: EtcdCluster) -> KeyRecord:
    store = EtcdStore(EtcdSettings(endpoints=etcd.endpoints, timeout=3.0))
    try:
        entry = store.get("/reuse/history")
        assert entry is not None
        return decode_history(entry.value)["idp-1"]
    finally:
        store.close()


def run_until(replicas: list[Pipeline], done: Any, limit: float) -> float:
    """Cycle every replica (each fetching) until ``done()``; the seconds it took."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < limit, "not done in time"
        for pipeline in replicas:
            pipeline.cycle(force=True)
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("way_out", ["retention", "forget"])
def test_every_replica_takes_the_new_material_together(
    tmp_path: Path, etcd: EtcdCluster, way_out: str
) -> None:
    retention = "2s" if way_out == "retention" else "1h"
    old, new, other = jwk("ES256", "idp-1"), jwk("ES256", "idp-1"), jwk("ES256", "idp-2")
    serve(tmp_path, old, other)
    replicas = [replica(tmp_path, name, etcd, retention) for name in ("a", "b")]
    try:
        run_until(replicas, lambda: all(x_of(tmp_path, n, "idp-1") for n in "ab"), 10)
        serve(tmp_path, new, other)
        for pipeline in replicas:
            result = pipeline.cycle()
            assert not result.ok and "kid-reused" in result.rules
        run_until(replicas, lambda: shared_record(etcd).reused_since is not None, 5)
        waits_from = shared_record(etcd).reused_since
        assert waits_from is not None
        assert {x_of(tmp_path, n, "idp-1") for n in "ab"} == {old["x"]}
        if way_out == "forget":
            done = subprocess.run(
                [*KEYSETD, "forget", "idp-1", "-c", str(tmp_path / "b" / "keysetd.toml")],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert "every replica takes" in done.stdout
        for pipeline in replicas:  # re-plans of the last-known-good undo nothing
            pipeline.cycle(fetch=False)
        run_until(replicas, lambda: {x_of(tmp_path, n, "idp-1") for n in "ab"} == {new["x"]}, 10)
        if way_out == "retention":
            assert time.time() >= waits_from + 2.0, "taken before the retention was over"
        assert {x_of(tmp_path, n, "idp-2") for n in "ab"} == {other["x"]}
        record = shared_record(etcd)
        assert record.reused_since is None and record.first_seen > 0
    finally:
        for pipeline in replicas:
            pipeline.close()
