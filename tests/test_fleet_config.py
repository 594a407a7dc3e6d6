"""The [fleet] table: optional, checked, never echoing a value, and what the etcd store takes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from keysetd.config import FleetSettings, load_config
from keysetd.errors import ConfigError
from keysetd.fleet.etcd import EtcdSettings, EtcdStore
from tests.test_config import base as config


def problems(tmp_path: Path, extra: str, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, extra), environ=environ or {})
    return info.value.problems


def test_without_fleet_nothing_changes(tmp_path: Path) -> None:
    assert load_config(config(tmp_path), environ={}).settings.fleet is None


def test_defaults(tmp_path: Path) -> None:
    extra = '[fleet]\nendpoints = ["http://127.0.0.1:2379"]\n'
    fleet = load_config(config(tmp_path, extra), environ={}).settings.fleet
    assert fleet is not None
    assert fleet.store == "etcd"
    assert fleet.prefix == "/keysetd"
    assert fleet.lease_ttl == 10.0
    assert fleet.replica_id == socket.gethostname()
    assert fleet.key("acks", fleet.replica_id) == f"/keysetd/acks/{fleet.replica_id}"
    assert fleet.store_settings() == EtcdSettings(endpoints=("http://127.0.0.1:2379",), timeout=5.0)


def test_every_key(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    extra = f"""
[fleet]
store = "etcd"
endpoints = ["https://etcd-0:2379", "https://etcd-1:2379/"]
prefix = "/prod/keysetd"
ca_file = "{tmp_path}/ca.pem"
cert_file = "{tmp_path}/client.pem"
key_file = "{tmp_path}/client.key"
replica_id = "keysetd-7d9f-abcde"
lease_ttl = "4s"
"""
    fleet = load_config(config(tmp_path, extra), environ={}).settings.fleet
    assert fleet is not None
    assert fleet.replica_id == "keysetd-7d9f-abcde"
    assert fleet.store_settings() == EtcdSettings(
        endpoints=("https://etcd-0:2379", "https://etcd-1:2379/"),
        timeout=2.0,
        ca_file=f"{tmp_path}/ca.pem",
        cert_file=f"{tmp_path}/client.pem",
        key_file=f"{tmp_path}/client.key",
    )


def test_endpoints_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "KEYSETD_FLEET__ENDPOINTS": "http://10.0.0.1:2379, http://10.0.0.2:2379",
        "KEYSETD_FLEET__REPLICA_ID": "pod-1",
        "KEYSETD_FLEET__LEASE_TTL": "30s",
    }
    fleet = load_config(config(tmp_path), environ=environ).settings.fleet
    assert fleet is not None
    assert fleet.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert (fleet.replica_id, fleet.lease_ttl) == ("pod-1", 30.0)
    as_json = {"KEYSETD_FLEET__ENDPOINTS": '["http://10.0.0.3:2379"]'}
    fleet = load_config(config(tmp_path), environ=as_json).settings.fleet
    assert fleet is not None and fleet.endpoints == ["http://10.0.0.3:2379"]


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    extra = '[fleet]\nendpoints = ["http://127.0.0.1:2379"]\nprefix = "/a"\n'
    environ = {"KEYSETD_FLEET__PREFIX": "/b"}
    fleet = load_config(config(tmp_path, extra), environ=environ).settings.fleet
    assert fleet is not None and fleet.prefix == "/b"


SECRET = "s3cr3t-value"
ONE = '[fleet]\nendpoints = ["http://e:2379"]\n'


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[fleet]\n", "fleet.endpoints: required key is missing"),
        ("[fleet]\nendpoints = []\n", "fleet.endpoints: must not be empty"),
        (
            f'[fleet]\nendpoints = ["http://user:{SECRET}@etcd:2379"]\n',
            "fleet.endpoints.0: must not hold credentials (use cert_file and key_file)",
        ),
        (
            f'[fleet]\nendpoints = ["http://etcd:2379/?token={SECRET}"]\n',
            "fleet.endpoints.0: must be scheme://host:port only (no path, query or fragment)",
        ),
        (
            f'[fleet]\nendpoints = ["{SECRET}"]\n',
            "fleet.endpoints.0: url must be an http:// or https:// URL with a host",
        ),
        (
            f'[fleet]\nendpoints = ["http://e:2379"]\n{SECRET} = 1\n',
            f"fleet.{SECRET}: unknown key",
        ),
        ('[fleet]\nendpoints = ["http://e:2379"]\nstore = "consul"\n', "fleet.store: expected"),
        (
            '[fleet]\nendpoints = ["http://e:2379"]\nlease_ttl = "1s"\n',
            "fleet.lease_ttl: must be at least 2s",
        ),
        (
            '[fleet]\nendpoints = ["http://e:2379"]\nlease_ttl = "10m"\n',
            "fleet.lease_ttl: must be at most 5m",
        ),
        (f'[fleet]\nendpoints = ["http://e:2379"]\nprefix = "{SECRET}"\n', "fleet.prefix: must"),
        (f'[fleet]\nendpoints = ["http://e:2379"]\nprefix = "/{SECRET}/"\n', "fleet.prefix:"),
        (
            f'[fleet]\nendpoints = ["http://e:2379"]\nreplica_id = "a b{SECRET}"\n',
            "fleet.replica_id: must match",
        ),
        (
            '[fleet]\nendpoints = ["http://e:2379"]\ncert_file = "/c.pem"\n',
            "fleet: cert_file and key_file go together",
        ),
    ],
)
def test_bad_values_are_named_never_echoed(tmp_path: Path, extra: str, expected: str) -> None:
    found = problems(tmp_path, extra)
    assert len(found) == 1 and found[0].startswith(expected), found
    # An unknown key's name is shown (it is the key); a value never is.
    if "unknown key" not in expected:
        assert SECRET not in found[0]


def test_a_bad_environment_value_names_its_variable(tmp_path: Path) -> None:
    environ = {"KEYSETD_FLEET__ENDPOINTS": "http://e:2379", "KEYSETD_FLEET__LEASE_TTL": "1ms"}
    assert problems(tmp_path, "", environ) == (
        "fleet.lease_ttl: must be at least 2s (from $KEYSETD_FLEET__LEASE_TTL)",
    )


def test_the_store_takes_the_settings(tmp_path: Path) -> None:
    """The settings build an EtcdStore as they are (no I/O until the first call)."""
    extra = '[fleet]\nendpoints = ["http://127.0.0.1:2379"]\nlease_ttl = "2s"\n'
    fleet = load_config(config(tmp_path, extra), environ={}).settings.fleet
    assert fleet is not None
    store = EtcdStore(fleet.store_settings())
    try:
        assert store.endpoints == ("http://127.0.0.1:2379",)
    finally:
        store.close()
    assert fleet.timeout == 1.0


def test_the_default_replica_id_is_a_valid_key_component(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "-weird host/name")
    fleet = FleetSettings.parse({"endpoints": ["http://e:2379"]})
    assert fleet.replica_id == "weird-host-name"
    monkeypatch.setattr(socket, "gethostname", lambda: "node-3.dc1.example")
    assert FleetSettings.parse({"endpoints": ["http://e:2379"]}).replica_id == "node-3.dc1.example"
