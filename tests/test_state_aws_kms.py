"""``[state] encryption = "aws_kms"`` against a real moto_server (KMS) on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from keysetd_aws_kms.keyprovider import AwsKmsKeyConfig, AwsKmsKeyProvider

from keysetd.errors import SealError
from keysetd.sealing import Sealer, is_sealed
from keysetd.state import StateStore
from keysetd.status import readiness, status_document
from tests.conftest import Env
from tests.keys import jwks_doc
from tests.test_aws_kms_plugin import REGION, fake_aws, running_moto
from tests.test_state_encryption import assert_no_private_material


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws(monkeypatch)


@pytest.fixture
def kms(moto_server: str) -> Iterator[Any]:
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_server)
    yield client
    client.close()


def state_key(kms: Any) -> str:
    key_id: str = kms.create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")[
        "KeyMetadata"
    ]["KeyId"]
    return key_id


def state_table(url: str, key_id: str) -> dict[str, Any]:
    return {"encryption": "aws_kms", "region": REGION, "key_id": key_id, "endpoint_url": url}


def test_kms_data_keys_bound_to_the_file_name(moto_server: str, kms: Any, tmp_path: Path) -> None:
    key_id = state_key(kms)
    config = AwsKmsKeyConfig.parse(
        {"type": "aws_kms", "region": REGION, "key_id": key_id, "endpoint_url": moto_server}
    )
    box = Sealer(AwsKmsKeyProvider(config))
    path = tmp_path / "signer-keyset.json"
    raw = box.seal(path, b"private document")
    header = json.loads(raw)
    assert header["provider"] == "aws_kms" and key_id in header["key_id"]
    assert box.open(path, raw) == b"private document"
    fresh = Sealer(AwsKmsKeyProvider(config))  # no cache: Decrypt in KMS
    assert fresh.open(path, raw) == b"private document"
    with pytest.raises(SealError, match=r"last-known-good\.json"):
        fresh.open(tmp_path / "last-known-good.json", raw)


def test_state_sealed_by_kms_and_nothing_private_on_disk(
    moto_server: str, kms: Any, env: Env, keys: dict[str, Any]
) -> None:
    used = [keys["es-a"], keys["rs-a"]]
    env.write_source(jwks_doc(*used, active="es-a"))
    env.config(state=state_table(moto_server, state_key(kms)))
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    for path in StateStore(env.state).private_paths:
        assert is_sealed(path.read_bytes()), path
    assert_no_private_material(env.state, used)
    # Another KMS key: rewrap moves every file to it (Decrypt names the old key).
    env.config(state=state_table(moto_server, state_key(kms)))
    done = env.keysetd("state", "rewrap", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" -> ") == 3  # last-known-good, signer keyset, audit key
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0


def test_kms_down_at_start_keeps_outputs_and_is_not_ready(
    env: Env, keys: dict[str, Any], tmp_path: Path
) -> None:
    with running_moto(tmp_path / "moto.log") as url:
        client = boto3.client("kms", region_name=REGION, endpoint_url=url)
        env.write_source(jwks_doc(keys["es-a"], active="es-a"))
        env.config(state=state_table(url, state_key(client)), source={"timeout": "3s"})
        client.close()
        assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    before = env.snapshot_outputs()
    sealed = {p: p.read_bytes() for p in StateStore(env.state).private_paths}
    env.source.unlink()  # the source is down too: only the sealed last-known-good is left
    for path in list(env.out.iterdir()):
        path.unlink()
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1
    assert (
        "last-known-good.json" in env.keysetd("status", "--json", "-c", str(env.config_path)).stdout
    )
    assert env.snapshot_outputs() == {}  # never a plaintext fallback
    assert {p: p.read_bytes() for p in sealed} == sealed
    doc = status_document(env.state)
    assert "cannot unwrap its data key" in doc["state_error"]
    assert not readiness(doc, 3600)[0]
    assert before
