"""Strict production mode: each rule of DESIGN section 7 refused with strict, warned without."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.errors import ConfigError
from keysetd.pipeline import Pipeline
from keysetd.strict import checked
from tests.conftest import Env, render_toml, wait_for
from tests.keys import jwks_doc


def state_key(env: Env) -> Path:
    """A key file for ``[state] encryption = "key_file"``: strict wants it with a signer output."""
    path = env.root / "state.key"
    if not path.exists():
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
    return path


def base(env: Env, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "state_dir": str(env.state),
        "strict": True,
        "state": {"encryption": "key_file", "key_file": str(state_key(env))},
        "source": {"type": "file", "path": str(env.source)},
        "policy": {"max_staleness": "1h"},
        "outputs": [
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "keyset", "path": str(env.signer)},
        ],
    }
    config.update(extra)
    return config


def write(env: Env, config: dict[str, Any]) -> Path:
    env.config_path.write_text(render_toml(config))
    return env.config_path


def refused(env: Env, config: dict[str, Any], expected: str) -> None:
    env.source.write_text("{}")
    env.source.chmod(0o600)
    with pytest.raises(ConfigError, match=expected):
        checked(load_config(write(env, config)))
    relaxed = {**config, "strict": False}
    assert checked(load_config(write(env, relaxed)))  # only a warning without strict


def test_a_clean_strict_config_loads(env: Env) -> None:
    env.source.write_text("{}")
    env.source.chmod(0o600)
    assert checked(load_config(write(env, base(env)))).settings.strict


def test_private_keys_in_state_dir_need_encryption(env: Env) -> None:
    config = base(env)
    del config["state"]
    refused(env, config, r"state\.encryption: not set, and state_dir keeps private keys for keyset")
    verifiers_only = {**config, "outputs": [{"type": "jwks", "path": str(env.jwks)}]}
    assert checked(load_config(write(env, verifiers_only))).settings.strict


def test_a_state_key_file_others_can_read(env: Env) -> None:
    state_key(env).chmod(0o640)
    refused(env, base(env), r"state\.key_file: .* readable or writable by group or others")


def test_env_source(env: Env) -> None:
    refused(env, base(env, source={"type": "env", "var": "RGS_JWT_KEYSET"}), r"source.type: an env")


def test_inline_secret_in_config(env: Env) -> None:
    source = {
        "type": "vault_transit",
        "address": "http://127.0.0.1:8200",
        "keys": ["jwt"],
        "auth": "token",
        "token": "s.inline-token-value",
    }
    config = base(env, source=source, outputs=[{"type": "jwks", "path": str(env.jwks)}])
    refused(env, config, r"source.token: secrets inline in the config")


def test_group_writable_source_file(env: Env) -> None:
    config = base(env)
    env.source.write_text("{}")
    env.source.chmod(0o664)
    with pytest.raises(ConfigError, match=r"source.path: .* group- or world-writable"):
        checked(load_config(write(env, config)))


def test_private_output_mode_wider_than_0640(env: Env) -> None:
    config = base(env, outputs=[{"type": "keyset", "path": str(env.signer), "mode": "0644"}])
    refused(env, config, r"outputs.0.mode: 0644 is wider than 0640")


def test_plain_http_to_a_remote_host(env: Env) -> None:
    remote = base(env, notify=[{"type": "http", "url": "http://reload.example.com/-/reload"}])
    refused(env, remote, r"notify.0.url: http:// to reload.example.com")
    local = base(env, notify=[{"type": "http", "url": "http://127.0.0.1:8080/-/reload"}])
    env.source.chmod(0o600)
    assert checked(load_config(write(env, local)))


def test_plain_http_to_a_remote_etcd(env: Env) -> None:
    fleet = {"endpoints": ["https://etcd-0:2379", "http://etcd-1.example.com:2379"]}
    refused(env, base(env, fleet=fleet), r"fleet.endpoints.1: http:// to etcd-1.example.com")
    env.source.chmod(0o600)
    local = base(env, fleet={"endpoints": ["http://127.0.0.1:2379"]})
    assert checked(load_config(write(env, local)))


def test_disabled_tls_verification() -> None:
    from keysetd.plugin import SourceConfig
    from keysetd.strict import _table_rules

    class Insecure(SourceConfig):
        insecure: bool = False
        verify: bool = True

    rules = list(_table_rules("source", Insecure(type="x", insecure=True, verify=False)))
    assert len(rules) == 2 and all("TLS verification" in r for r in rules)


def test_relative_command(env: Env) -> None:
    config = base(env, source={"type": "command", "argv": ["kms-client", "get"]})
    refused(env, config, r"source.argv: 'kms-client' is not an absolute path")


def test_max_staleness_not_set(env: Env) -> None:
    config = base(env)
    del config["policy"]
    refused(env, config, r"policy.max_staleness: not set")


def test_check_config_lists_every_violation_and_exits_2(env: Env) -> None:
    env.source.write_text("{}")
    env.source.chmod(0o666)
    config = base(
        env,
        outputs=[{"type": "keyset", "path": str(env.signer), "mode": "0666"}],
        notify=[
            {"type": "http", "url": "http://hooks.example.net/x"},
            {"type": "command", "argv": ["reload-app"]},
        ],
    )
    del config["policy"]
    done = env.keysetd("check-config", "-c", str(write(env, config)))
    assert done.returncode == 2
    for expected in (
        "source.path",
        "outputs.0.mode",
        "notify.0.url",
        "notify.1.argv",
        "policy.max_staleness",
    ):
        assert expected in done.stderr, (expected, done.stderr)
    relaxed = env.keysetd("check-config", "-c", str(write(env, {**config, "strict": False})))
    assert relaxed.returncode == 0
    assert relaxed.stdout.count("warning (refused with strict = true)") == 5


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("a-string-secret-at-least-256-bits-long", "well-known"),  # jwt.io's default
        ("ab" * 20, "low entropy"),
        ("changeme", "hmac-too-short"),  # refused in every mode, before strict rules
    ],
)
def test_weak_hmac_secrets(env: Env, secret: str, why: str) -> None:
    env.source.write_text(json.dumps({"active_kid": "k1", "keys": {"k1": secret}}))
    env.source.chmod(0o600)
    rgs = env.out / "rgs.json"
    config = base(
        env,
        outputs=[{"type": "rgs", "path": str(rgs)}],
        policy={"max_staleness": "1h", "hmac_alg": "HS256"},
    )
    result = Pipeline.open(load_config(write(env, config))).cycle()
    assert not result.ok and why in (result.error or ""), result.error
    assert not rgs.exists()


def test_without_strict_rules_are_warnings_at_startup(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    config = base(
        env, strict=False, outputs=[{"type": "keyset", "path": str(env.signer), "mode": "0644"}]
    )
    del config["policy"]
    write(env, config)
    env.start()
    wait_for(env.signer.exists, what="publish despite warnings")
    wait_for(lambda: env.log().count('"strict_mode_warning"') == 2, what="two warnings")
