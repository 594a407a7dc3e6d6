"""Publish-before-use for transit keys: rotation, the transit_signer output, real OpenBao.

Transit signs with its latest version the moment it is rotated. keysetd rotates the key
(``keysetd rotate``, ``[rotation]``), publishes the new version to verifiers at once and
moves the ``transit_signer`` output, which names the ``key_version`` signers pass to
``transit/sign``, only ``activation_delay`` later. The end-to-end test signs tokens through
``transit/sign`` all along ≥ 8 managed rotations and verifies each against the JWKS a
lagging consumer loaded: none fails; the same tokens signed with "the latest" version do.

Mutations that make these tests fail (checked by hand): ``activation_delay`` 0 in the
end-to-end test (8 rotations, ES256: 158 of 535 pinned tokens refused); the fleet planner's gate
counting only this replica's own ack (the two-replica test: r0's consumer refuses v3).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hvac  # type: ignore[import-untyped]
import jwt
import pytest
from keysetd_vault.signer import TransitSignerConfig, TransitSignerOutput
from keysetd_vault.source import VaultTransitConfig, VaultTransitSource, transit_version

from keysetd.config import load_config
from keysetd.errors import ConfigError, OutputError
from keysetd.extension import Role
from keysetd.model import Keyset
from keysetd.validate import check
from tests.conftest import Env, wait_for
from tests.keys import b64u
from tests.test_vault_plugin import Bao, b64

#: Managed rotations of the end-to-end tests (more with ``TRANSIT_ROTATIONS=20``): with
#: ``activation_delay`` 0, 8 rotations show ~150 refused pinned tokens (checked by hand).
TRANSIT_ROTATIONS = int(os.environ.get("TRANSIT_ROTATIONS", "8"))
#: Rotations of the two-replica transit fleet (``FLEET_TRANSIT_ROTATIONS=8`` for longer).
#: A weak detector of the fleet gate: with the gate taken out of the planner it failed one
#: run in three at 4 rotations (measured); test_fleet_planner.py checks that gate
#: deterministically, this test that transit rotation goes through it at all.
FLEET_TRANSIT_ROTATIONS = int(os.environ.get("FLEET_TRANSIT_ROTATIONS", "5"))


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[Bao]:
    """A server of its own: these tests rotate its keys."""
    server = Bao(tmp_path / "bao").start()
    try:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        yield server
    finally:
        server.stop()


def transit_config(bao: Bao, token_file: Path, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "vault_transit",
        "address": bao.address,
        "token_file": str(token_file),
        "keys": [key],
        "timeout": "5s",
        **extra,
    }


def token_file(bao: Bao, tmp_path: Path) -> Path:
    path = tmp_path / "vault-token"
    path.write_text(bao.root + "\n")
    path.chmod(0o600)
    return path


# --- the transit_signer output --------------------------------------------------------------


def test_kids_map_back_to_transit_key_versions() -> None:
    assert transit_version("{name}-v{version}", "jwt-signing-v12") == ("jwt-signing", 12)
    # A name holding "-v" still splits at the last one: versions are digits to the end.
    assert transit_version("{name}-v{version}", "a-v2-b-v3") == ("a-v2-b", 3)
    assert transit_version("vault/{name}/{version}", "vault/k/7") == ("k", 7)
    assert transit_version("{name}-{version:03d}", "k-007") == ("k", 7)
    for kid in ("jwt-signing", "jwt-signing-v", "jwt-signing-v0", "other/k-v1", "k-vx"):
        assert transit_version("{name}-v{version}", kid) is None, kid
    assert transit_version("{name}-{version:03d}", "k-7") is None  # not what the format makes


def signer_output(tmp_path: Path, **config: Any) -> TransitSignerOutput:
    table = {"type": "transit_signer", "path": str(tmp_path / "signer.json"), **config}
    return TransitSignerOutput(TransitSignerConfig.parse(table))


def public_keyset(kids: list[str], active: str, alg: str = "ES256") -> Keyset:
    from tests.keys import jwk

    keys = []
    for kid in kids:
        key = {k: v for k, v in jwk(alg, kid).items() if k not in ("d",)}
        keys.append(key)
    document = {"active_kid": active, "keys": keys}
    return check(json.dumps(document).encode(), "jwks", declared_public=True)


def test_the_output_names_the_version_and_the_sign_parameters(tmp_path: Path) -> None:
    output = signer_output(tmp_path)
    assert output.role is Role.SIGNER and not output.private and output.mode == 0o644
    rendered = output.render(public_keyset(["jwt-v1", "jwt-v2"], "jwt-v1"))
    data = rendered[tmp_path / "signer.json"]
    assert json.loads(data) == {
        "alg": "ES256",
        "kid": "jwt-v1",
        "mount": "transit",
        "key": "jwt",
        "key_version": 1,
        "hash_algorithm": "sha2-256",
        "marshaling_algorithm": "jws",
    }
    assert data.endswith(b"\n") and output.render(public_keyset(["jwt-v1"], "jwt-v1")) == rendered
    ed = output.render(public_keyset(["ed-v3"], "ed-v3", alg="EdDSA"))
    assert json.loads(ed[tmp_path / "signer.json"])["key_version"] == 3
    with pytest.raises(OutputError, match="'es-a' is not a kid_format"):
        output.render(public_keyset(["es-a"], "es-a"))


def test_config_ties_the_output_to_a_vault_transit_source(env: Env, tmp_path: Path) -> None:
    signer = {"type": "transit_signer", "path": str(env.out / "transit-signer.json")}
    source = {
        "type": "vault_transit",
        "address": "http://127.0.0.1:8200",
        "token": "s.example-token-value",
    }
    env.config(source=source, outputs=[{"type": "jwks", "path": str(env.jwks)}, signer])
    config = load_config(env.config_path, environ={})
    assert [o.name for o in config.build_outputs()] == ["jwks", "transit_signer"]
    # A mount or kid_format other than the source's would name another key.
    env.config(
        source={**source, "mount": "kms", "kid_format": "{name}/{version}"},
        outputs=[{"type": "jwks", "path": str(env.jwks)}, signer],
    )
    with pytest.raises(ConfigError) as caught:
        load_config(env.config_path, environ={})
    problems = "\n".join(caught.value.problems)
    assert "outputs.1: mount: 'transit' differs from the source's 'kms'" in problems
    assert "outputs.1: kid_format:" in problems
    # A kid_format whose kids cannot be split back into key and version.
    env.config(
        source={**source, "keys": ["jwt1"], "kid_format": "{name}{version}"},
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {**signer, "kid_format": "{name}{version}"},
        ],
    )
    with pytest.raises(ConfigError, match="does not tell key name and version apart"):
        load_config(env.config_path, environ={})
    # Another source type: no key versions to name.
    env.config(outputs=[{"type": "jwks", "path": str(env.jwks)}, signer])
    with pytest.raises(ConfigError, match="needs a vault_transit source, not 'file'"):
        load_config(env.config_path, environ={})
    # Strict mode: the output holds no secret, so 0644 is no violation.
    from keysetd.strict import config_violations

    env.config(
        strict=True,
        source={k: v for k, v in source.items() if k != "token"} | {"token_file": "/run/t"},
        policy={"max_staleness": "1h"},
        outputs=[{"type": "jwks", "path": str(env.jwks)}, signer],
    )
    assert config_violations(load_config(env.config_path, environ={})) == []
    # A signer output with private keys still needs a source that has them.
    env.config(
        source=source,
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "keyset", "path": str(env.signer)},
        ],
    )
    with pytest.raises(ConfigError, match="a keyset output needs private keys"):
        load_config(env.config_path, environ={})


def test_in_fleet_mode_the_output_moves_only_once_every_replica_holds_the_version(
    tmp_path: Path,
) -> None:
    """The fleet planner's before_signers gating applies to it as to any signer output."""
    from keysetd.fleet.planner import plan_replica
    from keysetd.fleet.state import Ack
    from keysetd.history import observe
    from keysetd.plan import Policy

    source = public_keyset(["jwt-v1", "jwt-v2"], "jwt-v2")
    history = {
        kid: replace(record, first_published=0.0, active_from=0.0 if kid == "jwt-v1" else None)
        for kid, record in observe({}, source, 0.0).items()
    }
    previous = public_keyset(["jwt-v1"], "jwt-v1")
    output = signer_output(tmp_path)

    def version(acks: dict[str, Ack]) -> int:
        planned = plan_replica(
            source,
            history,
            acks,
            replica_id="r0",
            policy=Policy(activation_delay=10.0),
            now=100.0,
            previous_signer=previous,
        )
        rendered = output.render(planned.plan.signer)[tmp_path / "signer.json"]
        assert planned.plan.verifier.get("jwt-v2") is not None  # verifiers have it at once
        value: int = json.loads(rendered)["key_version"]
        return value

    acks = {
        "r0": Ack("r0", 0.0, "f" * 64, {"jwt-v1": 0.0, "jwt-v2": 50.0}, "jwt-v1"),
        "r1": Ack("r1", 0.0, "f" * 64, {"jwt-v1": 0.0}, "jwt-v1"),
    }
    assert version(acks) == 1  # r1 has not published v2 yet
    acks["r1"] = Ack("r1", 0.0, "f" * 64, {"jwt-v1": 0.0, "jwt-v2": 95.0}, "jwt-v1")
    assert version(acks) == 1  # r1 has published it for 5 s only: the delay counts per replica
    acks["r1"] = Ack("r1", 0.0, "f" * 64, {"jwt-v1": 0.0, "jwt-v2": 90.0}, "jwt-v1")
    assert version(acks) == 2


def test_the_schedule_of_a_source_that_rotates_its_own_keys() -> None:
    from keysetd.history import observe
    from keysetd.rotation import next_version

    source = public_keyset(["k-v1", "k-v2"], "k-v2")
    records = observe({}, source, 0.0)
    timing = {"every": 10.0, "activation_delay": 4.0}
    assert not next_version(None, records, now=0.0, **timing).due
    assert (
        next_version(source, records, now=0.0, **timing).reason == "waiting for the first publish"
    )
    # Signers still on v1: v2 waits for its activation delay, no new version meanwhile.
    held = {**records, "k-v1": replace(records["k-v1"], active_from=0.0)}
    step = next_version(source, held, now=100.0, **timing)
    assert not step.due and "k-v2 waits for its activation delay" in step.reason
    # Signers on v2 since 50: the next version is due activation_delay before every is over.
    moved = {
        **held,
        "k-v1": replace(held["k-v1"], active_until=50.0),
        "k-v2": replace(held["k-v2"], active_from=50.0),
    }
    assert next_version(source, moved, now=55.0, **timing).next_at == 56.0
    assert next_version(source, moved, now=56.0, **timing).due
    # v1 is retirable once signers left it the retention (at least the delay) ago.
    step = next_version(source, moved, now=52.0, retention=5.0, **timing)
    assert (step.left, step.next_at, step.signer_kid) == ((), 55.0, "k-v2")
    assert next_version(source, moved, now=55.0, retention=5.0, **timing).left == ("k-v1",)
    assert next_version(source, moved, now=54.0, retention=1.0, **timing).left == ("k-v1",)


# --- rotating the transit key ---------------------------------------------------------------


def test_rotate_creates_the_next_version_unless_it_moved(bao: Bao, tmp_path: Path) -> None:
    bao.create_key("rot", "ecdsa-p256")
    source = VaultTransitSource(
        VaultTransitConfig.parse(transit_config(bao, token_file(bao, tmp_path), "rot"))
    )
    try:
        assert source.rotate("rot-v1") == "rot-v2"
        assert source.rotate("rot-v1") is None  # someone rotated meanwhile: nothing done
        assert json.loads(source.fetch().data)["active_kid"] == "rot-v2"
        assert source.rotate(None) == "rot-v3"
    finally:
        source.close()
    assert bao.api("GET", "transit/keys/rot")["data"]["latest_version"] == 3


def test_retire_raises_min_decryption_version_to_the_signers_version(
    bao: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bao.create_key("old", "ecdsa-p256", rotations=2)
    config = transit_config(bao, token_file(bao, tmp_path), "old")
    keeping = VaultTransitSource(VaultTransitConfig.parse(config))
    source = VaultTransitSource(VaultTransitConfig.parse({**config, "retire_old_versions": True}))
    try:
        left = ("old-v1", "old-v2")
        assert keeping.retire(left, "old-v3") == ()  # the default: transit keeps its versions
        assert source.retire(("other-v1",), "old-v3") == ()  # not a version of the first key
        # Never past the version signers use (it came back: a restored key).
        assert source.retire(left, "old-v2") == ("old-v1",)
        assert source.retire(left, "old-v3") == ("old-v2",)
        assert bao.api("GET", "transit/keys/old")["data"]["min_decryption_version"] == 3
        assert [k["kid"] for k in json.loads(source.fetch().data)["keys"]] == ["old-v3"]
        assert source.retire(left, "old-v3") == ()  # nothing that old: no call at all
        assert source.retire(("old-v8",), "old-v9") == ()  # not a version transit has
    finally:
        keeping.close()
        source.close()
    assert bao.root not in caplog.text


def test_keysetd_rotate_on_vault_transit_and_its_refusals(
    bao: Bao, env: Env, tmp_path: Path
) -> None:
    bao.create_key("cli", "ed25519")
    signer = env.out / "transit-signer.json"
    env.config(
        source=transit_config(bao, token_file(bao, tmp_path), "cli"),
        policy={"activation_delay": "1h"},
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "transit_signer", "path": str(signer)},
        ],
    )
    assert env.keysetd("once", "-c", str(env.config_path)).returncode == 0
    assert json.loads(signer.read_text())["key_version"] == 1
    done = env.keysetd("rotate", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert "created cli-v2" in done.stdout and "previous cli-v1" in done.stdout
    assert bao.root not in done.stdout + done.stderr
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    # Verifiers have v2 now; signers keep v1 for the activation delay.
    assert [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]] == ["cli-v1", "cli-v2"]
    assert json.loads(signer.read_text())["key_version"] == 1
    done = env.keysetd("rotate", "--alg", "ES256", "-c", str(env.config_path))
    assert done.returncode == 2 and "--alg and --kid do not apply" in done.stderr
    # A token that may read but not rotate: the 403 is named, the token is not.
    policy = 'path "transit/keys/*" { capabilities = ["read"] }'
    bao.api("POST", "sys/policies/acl/read-only", {"policy": policy})
    reader = bao.api("POST", "auth/token/create", {"policies": ["read-only"]})["auth"]
    (tmp_path / "vault-token").write_text(reader["client_token"])
    done = env.keysetd("rotate", "-c", str(env.config_path))
    assert done.returncode == 1
    assert "rotate key 'cli': 403 Forbidden" in done.stderr
    assert reader["client_token"] not in done.stdout + done.stderr


def test_bad_input_from_vault_keeps_the_outputs_byte_for_byte(
    bao: Bao, env: Env, tmp_path: Path
) -> None:
    bao.create_key("lkg", "ecdsa-p256")
    env.config(
        source=transit_config(bao, token_file(bao, tmp_path), "lkg"),
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "transit_signer", "path": str(env.out / "transit-signer.json")},
        ],
    )
    assert env.keysetd("once", "-c", str(env.config_path)).returncode == 0
    before = env.snapshot_outputs()
    # The key turns into one transit cannot sign JWTs with: refused by name, outputs kept.
    bao.api("POST", "transit/keys/lkg/config", {"deletion_allowed": True})
    bao.api("DELETE", "transit/keys/lkg")
    bao.api("POST", "transit/keys/lkg", {"type": "aes256-gcm96"})
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 1
    assert "key 'lkg' is of type 'aes256-gcm96'" in done.stderr
    assert env.snapshot_outputs() == before
    assert bao.root not in done.stdout + done.stderr
    # Re-created under the same name: version 1 is another key now. Signers must not be
    # told to sign with it while verifiers hold the old one: refused, outputs kept.
    bao.api("POST", "transit/keys/lkg/config", {"deletion_allowed": True})
    bao.api("DELETE", "transit/keys/lkg")
    bao.api("POST", "transit/keys/lkg", {"type": "ecdsa-p256"})
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 1
    assert "lkg-v1" in done.stderr and "different key material" in done.stderr
    assert env.snapshot_outputs() == before


def test_revoking_the_signing_version_withdraws_the_output_until_it_leaves_transit(
    bao: Bao, env: Env, tmp_path: Path
) -> None:
    """Break-glass on transit: the revoked version is withdrawn from signers at once; transit
    keeps returning it, so every fetch is refused until min_decryption_version passes it."""
    bao.create_key("rv", "ecdsa-p256")
    signer = env.out / "transit-signer.json"
    env.config(
        source=transit_config(bao, token_file(bao, tmp_path), "rv"),
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "transit_signer", "path": str(signer)},
        ],
    )
    assert env.keysetd("once", "-c", str(env.config_path)).returncode == 0
    assert env.keysetd("revoke", "rv-v1", "-c", str(env.config_path)).returncode == 0
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 1 and "rv-v1" in done.stderr and "revoked" in done.stderr
    assert not signer.exists()  # no signing key is better than a revoked one
    assert json.loads(env.jwks.read_text())["keys"] == []
    # The way out: a new version, then the revoked one out of transit's published range.
    done = env.keysetd("rotate", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert env.keysetd("once", "-c", str(env.config_path)).returncode == 1  # v1 still there
    bao.api("POST", "transit/keys/rv/config", {"min_decryption_version": 2})
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(signer.read_text())["kid"] == "rv-v2"
    assert [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]] == ["rv-v2"]


# --- end to end: signing through transit/sign across managed rotations ----------------------


def readme_signer() -> Callable[[Any, str, dict[str, Any]], str]:
    """``transit_jwt`` from the plugin README: the signer the docs tell users to write."""
    text = (Path(__file__).resolve().parent.parent / "plugins/keysetd-vault/README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict[str, Any] = {}
    exec(compile(code, "plugins/keysetd-vault/README.md", "exec"), namespace)
    function: Callable[[Any, str, dict[str, Any]], str] = namespace["transit_jwt"]
    return function


@pytest.mark.parametrize(
    ("key_type", "alg", "rsa_alg"),
    [
        ("ecdsa-p384", "ES384", "RS256"),
        ("ed25519", "EdDSA", "RS256"),
        ("rsa-2048", "RS256", "RS256"),
        ("rsa-2048", "PS256", "PS256"),
    ],
)
def test_the_readme_signer_signs_what_the_jwks_verifies(
    bao: Bao, env: Env, tmp_path: Path, key_type: str, alg: str, rsa_alg: str
) -> None:
    bao.create_key("doc", key_type, rotations=1)
    signer_path = env.out / "transit-signer.json"
    env.config(
        source=transit_config(bao, token_file(bao, tmp_path), "doc", rsa_alg=rsa_alg),
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "transit_signer", "path": str(signer_path)},
        ],
    )
    done = env.keysetd("once", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    client = hvac.Client(url=bao.address, token=bao.root, timeout=10)
    try:
        token = readme_signer()(client, str(signer_path), {"sub": "readme"})
    finally:
        client.adapter.close()
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": "doc-v2"}
    jwks = jwt.PyJWKSet.from_json(env.jwks.read_text())
    assert jwt.decode(token, jwks["doc-v2"].key, algorithms=[alg]) == {"sub": "readme"}


@dataclass
class LaggingConsumer:
    """A verifier that loads each JWKS ``lag`` seconds after keysetd wrote it (its mtime, so a
    poll that runs late on a busy machine does not add to the lag)."""

    path: Path
    lag: float
    seen: list[tuple[float, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self, stop: threading.Event) -> None:
        while not stop.wait(0.01):
            try:
                with self.path.open("rb") as file:  # mtime and bytes of the same file
                    written, data = os.fstat(file.fileno()).st_mtime, file.read()
            except FileNotFoundError:
                continue
            with self.lock:
                if not self.seen or self.seen[-1][1] != data:
                    self.seen.append((written, data))

    def loaded(self) -> jwt.PyJWKSet | None:
        """The JWKS this consumer uses now: the newest one written at least ``lag`` ago."""
        cutoff = time.time() - self.lag
        with self.lock:
            usable = [data for at, data in self.seen if at <= cutoff]
        return jwt.PyJWKSet.from_json(usable[-1].decode()) if usable else None

    def verify(self, token: str, alg: str) -> str | None:
        """None when the token verifies, else why not."""
        jwks = self.loaded()
        kid = jwt.get_unverified_header(token)["kid"]
        if jwks is None:
            return "no jwks loaded yet"
        try:
            jwt.decode(token, jwks[kid].key, algorithms=[alg])
        except KeyError:
            return f"{kid} not in the consumer's jwks"
        except jwt.InvalidTokenError as exc:
            return f"{kid}: {exc}"
        return None


@dataclass
class Tally:
    tokens: int = 0
    failures: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)


def sign_with_latest(bao: Bao, key: str, alg: str) -> str:
    """What a signer without keysetd's gating does: transit/sign with the latest version.

    The kid is known only from the signature ("vault:v7:..."), so sign again until the
    header names the version that signed.
    """
    parameters = {"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws"}
    kid = "unknown"
    for _ in range(5):
        header = b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        payload = b64u(json.dumps({"sub": "latest"}).encode())
        signing_input = f"{header}.{payload}"
        body = {"input": b64(signing_input.encode()), **(parameters if alg == "ES256" else {})}
        signature = bao.api("POST", f"transit/sign/{key}", body)["data"]["signature"]
        _, used, encoded = signature.split(":", 2)
        if f"{key}-{used}" == kid:
            sig = encoded if alg == "ES256" else b64u(base64.b64decode(encoded))
            return f"{signing_input}.{sig}"
        kid = f"{key}-{used}"
    raise AssertionError("the latest version kept moving")


@pytest.mark.parametrize(
    ("key_type", "alg", "retire"), [("ecdsa-p256", "ES256", False), ("ed25519", "EdDSA", True)]
)
def test_tokens_signed_through_transit_verify_throughout_managed_rotations(
    bao: Bao, env: Env, tmp_path: Path, key_type: str, alg: str, retire: bool
) -> None:
    """EdDSA with retire_old_versions: versions signers left a retention ago leave transit's
    published range, and the JWKS a retention later."""
    rotations_wanted, lag, delay = TRANSIT_ROTATIONS, 0.4, 0.8
    bao.create_key("jwt", key_type)
    signer_path = env.out / "transit-signer.json"
    env.config(
        source=transit_config(
            bao,
            token_file(bao, tmp_path),
            "jwt",
            refresh_interval="5s",
            retire_old_versions=retire,
        ),
        policy={"activation_delay": f"{delay}s", "retention": "3s", "max_staleness": "1h"},
        rotation={"every": "1200ms"},
        outputs=[
            {"type": "jwks", "path": str(env.jwks)},
            {"type": "transit_signer", "path": str(signer_path)},
        ],
    )
    consumer = LaggingConsumer(env.jwks, lag)
    pinned, latest = Tally(), Tally()
    stop = threading.Event()
    errors: list[BaseException] = []

    transit_jwt = readme_signer()

    def signer(tally: Tally, pin: bool) -> None:
        client = hvac.Client(url=bao.address, token=bao.root, timeout=10)
        try:
            while not stop.wait(0.015):
                if pin:  # the README's signer: the version the transit_signer output names
                    token = transit_jwt(client, str(signer_path), {"sub": "pinned"})
                else:
                    token = sign_with_latest(bao, "jwt", alg)
                assert jwt.get_unverified_header(token)["alg"] == alg
                failure = consumer.verify(token, alg)
                tally.tokens += 1
                tally.versions.add(int(jwt.get_unverified_header(token)["kid"].rsplit("-v")[-1]))
                if failure is not None:
                    tally.failures.append(failure)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            stop.set()
        finally:
            client.adapter.close()

    env.start()
    threads = [
        threading.Thread(target=consumer.poll, args=(stop,), daemon=True),
        threading.Thread(target=signer, args=(pinned, True), daemon=True),
        threading.Thread(target=signer, args=(latest, False), daemon=True),
    ]
    started = time.monotonic()
    threads[0].start()
    try:
        # The very first key is active at once (nothing was published before): signers
        # start once the consumer has loaded it, as a consumer is deployed with its JWKS.
        wait_for(lambda: consumer.loaded() is not None, timeout=20, what="the first jwks")
        for thread in threads[1:]:
            thread.start()
        wait_for(
            lambda: errors or len(pinned.versions) > rotations_wanted,
            timeout=rotations_wanted * 6,
            what=f"{rotations_wanted} rotations signed through",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    took = time.monotonic() - started
    assert not errors, errors
    latest_version = bao.api("GET", "transit/keys/jwt")["data"]["latest_version"]
    report = (
        f"{alg}: {latest_version - 1} rotations in {took:.1f}s; pinned: {pinned.tokens} tokens,"
        f" {len(pinned.failures)} failures; latest: {latest.tokens} tokens,"
        f" {len(latest.failures)} failures"
    )
    print(report)
    assert latest_version - 1 >= rotations_wanted, report
    assert pinned.failures == [], report
    assert len(pinned.versions) > rotations_wanted and pinned.tokens >= 10 * rotations_wanted
    # Without the gating (transit's latest version), the lagging consumer refuses tokens.
    assert latest.failures, report
    assert all("not in the consumer's jwks" in f for f in latest.failures), latest.failures[:3]
    published = [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]]
    if retire:  # the versions signers left more than the retention ago are gone
        floor = bao.api("GET", "transit/keys/jwt")["data"]["min_decryption_version"]
        # Retired retention after signers left (3 s: 2-3 versions), published a retention more.
        assert floor >= latest_version - 5 and len(published) <= 8, (floor, published)
    else:
        assert len(published) == latest_version
    # The Vault token is in no output, state file or log line.
    env.stop_all()
    secret = bao.root.encode()
    for path in [*env.out.rglob("*"), *env.state.rglob("*"), env.root / "keysetd.log"]:
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_a_fleet_rotating_a_transit_key_signs_only_what_every_consumer_loaded(
    bao: Bao, tmp_path: Path
) -> None:
    """Two replicas on a real etcd; r1's verifier consumer loads a new JWKS 0.8 s after it is
    told, longer than the 0.3 s activation delay. The leader rotates the transit key; each
    replica's transit_signer output moves only once both replicas acknowledged the version
    (their consumers loaded it), so tokens signed by following either output verify with
    either consumer."""
    from tests.conftest import KEYSETD, render_toml
    from tests.etcd import running_cluster

    rotations_wanted, lags = FLEET_TRANSIT_ROTATIONS, (0.0, 0.8)
    bao.create_key("fleet", "ecdsa-p256")
    vault_token = token_file(bao, tmp_path)
    procs: list[subprocess.Popen[bytes]] = []
    roots = [tmp_path / f"r{i}" for i in range(len(lags))]
    transit_jwt = readme_signer()
    tokens = 0
    failures: list[str] = []
    used: set[int] = set()
    with running_cluster(tmp_path / "etcd", 1) as cluster:
        try:
            for index, (root, lag) in enumerate(zip(roots, lags, strict=True)):
                (root / "out").mkdir(parents=True)
                config = {
                    "state_dir": str(root / "state"),
                    "log_format": "json",
                    "source": transit_config(bao, vault_token, "fleet", refresh_interval="1s"),
                    "rotation": {"every": "1s"},
                    "policy": {"activation_delay": "300ms", "retention": "1h"},
                    "fleet": {
                        "endpoints": list(cluster.endpoints),
                        "prefix": "/transit-fleet",
                        "replica_id": f"r{index}",
                        "lease_ttl": "3s",
                    },
                    "outputs": [
                        {"type": "jwks", "path": str(root / "out/jwks.json")},
                        {"type": "transit_signer", "path": str(root / "out/signer.json")},
                    ],
                    "notify": [
                        {
                            "type": "command",
                            "argv": [
                                "/bin/sh",
                                "-c",
                                f'sleep {lag}; cp "$1" "$2.tmp" && mv "$2.tmp" "$2"',
                                "reload",
                                str(root / "out/jwks.json"),
                                str(root / "out/consumer.json"),
                            ],
                            "outputs": ["jwks"],
                        }
                    ],
                }
                (root / "keysetd.toml").write_text(render_toml(config))
                with (root / "keysetd.log").open("ab") as log:
                    procs.append(
                        subprocess.Popen(
                            [*KEYSETD, "run", "--config", str(root / "keysetd.toml")],
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=log,
                        )
                    )
            wait_for(
                lambda: (
                    all((r / "out/signer.json").exists() for r in roots)
                    and all((r / "out/consumer.json").exists() for r in roots)
                ),
                timeout=30,
                what="both replicas publishing",
            )
            client = hvac.Client(url=bao.address, token=bao.root, timeout=10)
            deadline = time.monotonic() + rotations_wanted * 8
            try:
                pace = threading.Event()  # never set: a 10 ms pause per round
                while len(used) <= rotations_wanted and time.monotonic() < deadline:
                    pace.wait(0.01)
                    for root in roots:  # an issuer behind each replica
                        token = transit_jwt(client, str(root / "out/signer.json"), {"sub": "f"})
                        kid = jwt.get_unverified_header(token)["kid"]
                        used.add(int(kid.rsplit("-v", 1)[1]))
                        for verifier in roots:  # a verifier behind each replica
                            loaded = jwt.PyJWKSet.from_json(
                                (verifier / "out/consumer.json").read_text()
                            )
                            tokens += 1
                            try:
                                jwt.decode(token, loaded[kid].key, algorithms=["ES256"])
                            except (KeyError, jwt.InvalidTokenError) as exc:
                                failures.append(f"{kid} at {verifier.name}: {exc!r}")
            finally:
                client.adapter.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    report = f"fleet: {len(used) - 1} versions signed through, {tokens} checks, {failures[:3]}"
    print(report)
    assert failures == [], report
    assert len(used) > rotations_wanted, report
    latest = bao.api("GET", "transit/keys/fleet")["data"]["latest_version"]
    assert latest <= len(used) + 1, "only the leader rotates, one version at a time"
