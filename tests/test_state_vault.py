"""``[state] encryption = "vault_transit"`` against a real OpenBao dev server on loopback."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from keysetd_vault.keyprovider import VaultTransitKeyConfig, VaultTransitKeyProvider

from keysetd.errors import SealError
from keysetd.sealing import Sealer, is_sealed
from keysetd.state import StateStore
from keysetd.status import readiness, status_document
from tests.conftest import Env
from tests.keys import jwks_doc
from tests.test_state_encryption import assert_no_private_material
from tests.test_vault_plugin import Bao

KEY = "keysetd-state"


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    server = Bao(tmp_path_factory.mktemp("bao-state")).start()
    try:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        server.create_key(KEY, "aes256-gcm96")
        yield server
    finally:
        server.stop()


def token_file(bao: Bao, directory: Path) -> Path:
    path = directory / "vault-token"
    path.write_text(bao.root + "\n")
    path.chmod(0o600)
    return path


def state_table(bao: Bao, directory: Path, **extra: Any) -> dict[str, Any]:
    return {
        "encryption": "vault_transit",
        "address": bao.address,
        "key": KEY,
        "token_file": str(token_file(bao, directory)),
        **extra,
    }


def provider(bao: Bao, directory: Path, **extra: Any) -> VaultTransitKeyProvider:
    table = state_table(bao, directory, **extra)
    table["type"] = table.pop("encryption")
    return VaultTransitKeyProvider(VaultTransitKeyConfig.parse(table))


def test_transit_wraps_binds_the_file_name_and_follows_key_rotation(
    vault: Bao, tmp_path: Path
) -> None:
    box = Sealer(provider(vault, tmp_path, cache_ttl="0s"))
    path = tmp_path / "signer-keyset.json"
    first = box.seal(path, b"private document")
    header = json.loads(first)
    assert header["provider"] == "vault_transit" and header["key_id"] == KEY
    assert header["wrapped_key"].startswith(f"vault:v{header['key_version']}:")
    assert box.open(path, first) == b"private document"
    with pytest.raises(SealError, match=r"cannot unwrap its data key .*message authentication"):
        box.open(tmp_path / "last-known-good.json", first)  # transit refuses the other name
    vault.api("POST", f"transit/keys/{KEY}/rotate")
    second = box.seal(path, b"private document")
    assert json.loads(second)["key_version"] == header["key_version"] + 1
    assert box.open(path, first) == box.open(path, second) == b"private document"


def test_state_sealed_by_transit_upgrade_rewrap_and_nothing_private_on_disk(
    vault: Bao, env: Env, keys: dict[str, Any]
) -> None:
    used = [keys["es-a"], keys["ed-a"]]
    env.write_source(jwks_doc(*used, active="es-a"))
    env.config()
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0  # plaintext
    env.config(state=state_table(vault, env.root))
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    state = StateStore(env.state)
    for path in state.private_paths:
        assert is_sealed(path.read_bytes()), path
    assert_no_private_material(env.state, used)
    version = json.loads(state.signer_path.read_bytes())["key_version"]
    vault.api("POST", f"transit/keys/{KEY}/rotate")
    done = env.keysetd("state", "rewrap", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    for path in state.private_paths:
        assert json.loads(path.read_bytes())["key_version"] == version + 1
        assert f"{path.name}: {KEY} v{version} -> {KEY} v{version + 1}" in done.stdout
    assert_no_private_material(env.state, used)
    vault.api("POST", f"transit/keys/{KEY}/config", {"min_decryption_version": version + 1})
    before = env.snapshot_outputs()
    env.source.unlink()  # a restart with the source down publishes from the rewrapped state
    for path in list(env.out.iterdir()):
        path.unlink()
    env.keysetd("once", "--config", str(env.config_path))
    assert env.snapshot_outputs() == before


def test_vault_down_keeps_outputs_names_the_file_and_leaks_nothing(
    env: Env, keys: dict[str, Any], tmp_path: Path
) -> None:
    server = Bao(tmp_path / "bao").start()
    try:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        server.create_key(KEY, "aes256-gcm96")
        env.write_source(jwks_doc(keys["es-a"], active="es-a"))
        env.config(state=state_table(server, env.root))
        assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    finally:
        server.stop()
    before = env.snapshot_outputs()
    sealed = {p: p.read_bytes() for p in StateStore(env.state).private_paths}
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1
    assert "signer-keyset.json" in done.stderr and "cannot connect" in done.stderr
    assert env.snapshot_outputs() == before
    assert {p: p.read_bytes() for p in sealed} == sealed
    assert not readiness(status_document(env.state), 3600)[0]
    wrapped = [json.loads(raw)["wrapped_key"] for raw in sealed.values()]
    texts = done.stderr + done.stdout + (env.state / "status.json").read_text()
    texts += (env.state / "audit.jsonl").read_text()
    for blob in wrapped:
        assert blob not in texts and blob.split(":")[-1][:24] not in texts
    assert server.root not in texts


def test_the_config_checks_auth_like_the_source(vault: Bao, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs exactly one of token and token_file"):
        VaultTransitKeyConfig.parse({"type": "vault_transit", "address": vault.address})
    secret = base64.b64encode(os.urandom(12)).decode()
    with pytest.raises(ValueError) as caught:
        VaultTransitKeyConfig.parse(
            {"type": "vault_transit", "address": vault.address, "token": secret, "key": "a/b"}
        )
    assert secret not in str(caught.value) and "key" in str(caught.value)


def test_a_move_from_key_file_to_transit_with_rewrap_from_config(
    vault: Bao, env: Env, keys: dict[str, Any]
) -> None:
    from tests.test_state_encryption import make_key

    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    old = env.config(
        state={"encryption": "key_file", "key_file": str(key)}, rotation={"every": "1d"}
    )
    assert env.keysetd("once", "--config", str(old)).returncode == 0
    old = old.rename(env.root / "old.toml")
    env.config(state=state_table(vault, env.root), rotation={"every": "1d"})
    config = ["--config", str(env.config_path)]
    refused = env.keysetd("once", *config)
    assert refused.returncode == 1 and "sealed by provider 'key_file'" in refused.stderr
    done = env.keysetd("state", "rewrap", *config, "--from-config", str(old))
    assert done.returncode == 0, done.stderr
    assert f"file:{env.source}: re-sealed" in done.stdout
    for path in [*StateStore(env.state).private_paths, env.source]:
        assert json.loads(path.read_bytes())["provider"] == "vault_transit", path
    key.unlink()  # the old key is no longer needed
    done = env.keysetd("once", *config)
    assert done.returncode == 0, done.stderr
    # The refused run's audit lines could not be keyed (audit.key was sealed by key_file):
    # they verify once a keyed line follows them.
    assert env.keysetd("audit", "verify", *config).returncode == 1
    assert env.keysetd("revoke", "es-gone", *config).returncode == 0
    verified = env.keysetd("audit", "verify", *config)
    assert verified.returncode == 0, verified.stdout
    assert "written while the key provider was down, covered by keyed lines" in verified.stdout
