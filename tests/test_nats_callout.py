"""keysetd-nats-callout end to end: a Keycloak-shaped realm on loopback, a real ``keysetd run``
(jwks_url source -> jwks output), a real nats-server with auth_callout, the callout as a
real process, and real nats-py clients connecting with their JWT as the auth token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import nats.errors
import nkeys
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from keysetd_nats_callout import natsjwt
from keysetd_nats_callout.authorizer import Authorizer, user_permissions
from keysetd_nats_callout.config import CalloutConfig, load_config, read_signer, read_xkey
from keysetd_nats_callout.natsjwt import NatsJwtError, NkeySigner
from keysetd_nats_callout.xkey import (
    CurveKey,
    XkeyError,
    decode_public,
    decode_seed,
    encode_public,
    encode_seed,
)
from nats.aio.client import Client

from keysetd.errors import ConfigError
from keysetd.verifier import Verifier
from tests.conftest import KEYSETD, render_toml, wait_for
from tests.servers import (
    Events,
    HttpServer,
    Reply,
    Seen,
    free_port,
    keysetd_events,
    stop,
    wait_for_port,
)
from tests.test_nats_output import nats_server_bin

CERTS_PATH = "/realms/app/protocol/openid-connect/certs"
AUDIENCE = "nats"
RETENTION = "30s"
REFRESH = "200ms"
CALLOUT = [sys.executable, "-m", "keysetd_nats_callout"]
#: The realm roles the callout's rules map to the ADMIN account.
ADMIN = ("user", "admin")


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``keysetd-nats-callout check-config`` of the config at ``path``."""
    return subprocess.run(
        [*CALLOUT, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- the realm --------------------------------------------------------------------------------


@dataclass
class RealmKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, kid: str, alg: str) -> RealmKey:
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg.startswith("RS")
            else ec.generate_private_key(ec.SECP256R1())
        )
        return cls(kid, alg, private)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


class Realm:
    """A Keycloak realm: a certs endpoint on loopback and a token issuer."""

    def __init__(self) -> None:
        self.published: list[RealmKey] = []
        self.signing: RealmKey | None = None
        self._server = HttpServer()
        self._server.respond = self._certs
        self._server.start()
        self.base = self._server.url("/realms/app")
        self.certs_url = self._server.url(CERTS_PATH)

    @property
    def served(self) -> int:
        """Certs documents served so far: a refresh of keysetd's jwks_url source is one more."""
        return len(self._server.requests)

    def _certs(self, seen: Seen) -> Reply:
        body = json.dumps({"keys": [k.public_jwk() for k in self.published]}).encode()
        status = 200 if seen.path == CERTS_PATH else 404
        return Reply(status, body, {"Content-Type": "application/json"})

    def token(
        self,
        key: RealmKey | None = None,
        *,
        roles: tuple[str, ...] = ("user",),
        lifetime: float = 300,
        **claims: Any,
    ) -> str:
        key = key or self.signing
        assert key is not None
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.base,
            "aud": [AUDIENCE, "account"],
            "sub": str(uuid.uuid4()),
            "azp": "nats-client",
            "preferred_username": "alice",
            "realm_access": {"roles": list(roles)},
            "scope": "openid profile",
            "iat": now,
            "exp": now + int(lifetime),
            "jti": str(uuid.uuid4()),
        }
        body.update(claims)
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def close(self) -> None:
        self._server.stop()


# --- the stack --------------------------------------------------------------------------------


def account_seed() -> tuple[str, str]:
    """(seed, public key) of a fresh account nkey."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode(), nkeys.from_seed(seed).public_key.decode()


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.chmod(path, mode)
    return path


@dataclass
class Stack:
    root: Path
    realm: Realm
    rs: RealmKey
    es: RealmKey
    jwks: Path
    url: str
    config: Path
    account_public: str
    callout: subprocess.Popen[bytes]
    callout_log: Path
    server_log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The callout's curve seed (SX...) when the server's auth_callout has an xkey.
    xkey_seed: str | None = None
    xkey_public: str | None = None

    def callout_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.callout_log.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def callout_config(root: Path, **overrides: Any) -> dict[str, Any]:
    seed, _ = account_seed()
    base: dict[str, Any] = {
        "log_format": "json",
        "jwks": str(root / "jwks.json"),
        "check_interval": "100ms",
        "issuer": "https://sso.example.com/realms/app",
        "audience": AUDIENCE,
        "algorithms": ["RS256", "ES256"],
        "issuer_account_seed_file": str(write_secret(root / "account.nk", seed)),
        "account": "APP",
        "max_ttl": "10m",
        "nats": {"url": "nats://127.0.0.1:1", "user": "callout", "password": "pw"},
    }
    base.update(overrides)
    return base


def curve_seed() -> tuple[str, str]:
    """(seed, public key) of a fresh curve nkey (SX..., X...)."""
    seed = encode_seed(os.urandom(32))
    return seed.decode(), CurveKey.from_seed(seed).public_key


def start_server_and_callout(
    root: Path,
    realm: Realm,
    jwks: Path,
    procs: list[subprocess.Popen[bytes]],
    *,
    encrypted: bool = False,
) -> dict[str, Any]:
    """A nats-server with auth_callout (with an xkey if ``encrypted``) and the callout.

    Every process started lands in ``procs`` (the caller stops them); the result holds
    the Stack fields that belong to this pair.
    """
    # nats-server: auth callout for every client but the callout's own user.
    seed, public = account_seed()
    xkey_seed, xkey_public = curve_seed() if encrypted else (None, None)
    xkey_option = f", xkey: {xkey_public}" if xkey_public else ""
    port = free_port()
    server_conf = root / "nats-server.conf"
    server_conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "accounts {\n"
        '  AUTH { users: [ { user: callout, password: "callout-pw" } ] }\n'
        "  APP {}\n"
        "  ADMIN {}\n"
        "}\n"
        "authorization {\n"
        f"  auth_callout {{ issuer: {public}, account: AUTH, auth_users: [ callout ]"
        f"{xkey_option} }}\n"
        "}\n"
    )
    server_log = root / "nats-server.log"
    with server_log.open("ab") as log:
        server = subprocess.Popen(
            [nats_server_bin(), "-c", str(server_conf)], stdout=log, stderr=log
        )
    procs.append(server)
    wait_for_port(port, server, server_log)

    # The callout.
    overrides: dict[str, Any] = {}
    if xkey_seed is not None:
        overrides["xkey_seed_file"] = str(write_secret(root / "callout.xk", xkey_seed))
    config = root / "callout.toml"
    config.write_text(
        render_toml(
            callout_config(
                root,
                jwks=str(jwks),
                issuer=realm.base,
                issuer_account_seed_file=str(write_secret(root / "issuer.nk", seed)),
                nats={
                    "url": f"nats://127.0.0.1:{port}",
                    "user": "callout",
                    "password_file": str(write_secret(root / "callout.pw", "callout-pw")),
                },
                permissions={
                    "publish": ["app.>"],
                    "subscribe": ["app.>", "_INBOX.>"],
                },
                rules=[
                    {
                        "claim": "realm_access.roles",
                        "contains": "admin",
                        "account": "ADMIN",
                        "permissions": {"publish": ">", "subscribe": ">"},
                    }
                ],
                **overrides,
            )
        )
    )
    callout_log = root / "callout.log"
    with callout_log.open("ab") as log:
        callout = subprocess.Popen([*CALLOUT, "--config", str(config)], stdout=log, stderr=log)
    procs.append(callout)
    wait_for(
        lambda: "callout_ready" in callout_log.read_text() or callout.poll() is not None,
        15,
        "the callout to be ready",
    )
    assert callout.poll() is None, callout_log.read_text()
    return {
        "url": f"nats://127.0.0.1:{port}",
        "config": config,
        "account_public": public,
        "callout": callout,
        "callout_log": callout_log,
        "server_log": server_log,
        "xkey_seed": xkey_seed,
        "xkey_public": xkey_public,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("callout")
    realm = Realm()
    rs, es = RealmKey.new("rs-1", "RS256"), RealmKey.new("es-1", "ES256")
    realm.published, realm.signing = [rs, es], rs
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # keysetd: the realm's certs -> the pinned jwks file.
        jwks = root / "jwks.json"
        keysetd_config = root / "keysetd.toml"
        keysetd_config.write_text(
            render_toml(
                {
                    "state_dir": str(root / "state"),
                    "log_format": "json",
                    "source": {
                        "type": "jwks_url",
                        "url": realm.certs_url,
                        "refresh_interval": REFRESH,
                        "timeout": "2s",
                    },
                    "policy": {"retention": RETENTION},
                    "outputs": [{"type": "jwks", "path": str(jwks)}],
                }
            )
        )
        with (root / "keysetd.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [*KEYSETD, "run", "--config", str(keysetd_config)], stdout=log, stderr=log
                )
            )
        wait_for(jwks.exists, 15, "keysetd to write the jwks")
        started = start_server_and_callout(root, realm, jwks, procs)
        yield Stack(root=root, realm=realm, rs=rs, es=es, jwks=jwks, procs=procs, **started)
    finally:
        for proc in reversed(procs):
            stop(proc)
        realm.close()


@pytest.fixture(scope="module")
def xkey_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second nats-server whose auth_callout has an xkey, and a callout with its seed.

    It shares the realm and keysetd's jwks with ``stack``.
    """
    root = tmp_path_factory.mktemp("callout-xkey")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = start_server_and_callout(root, stack.realm, stack.jwks, procs, encrypted=True)
        yield Stack(
            root=root,
            realm=stack.realm,
            rs=stack.rs,
            es=stack.es,
            jwks=stack.jwks,
            procs=procs,
            **started,
        )
    finally:
        for proc in reversed(procs):
            stop(proc)


# --- clients ----------------------------------------------------------------------------------


async def _quiet(exc: Exception) -> None:
    """Errors are asserted through results, not printed."""


async def connect(url: str, token: str, **callbacks: Any) -> Client:
    """A client presenting ``token``; a refused one is closed here, so no socket leaks."""
    client = Client()
    callbacks.setdefault("error_cb", _quiet)
    try:
        await client.connect(
            url,
            token=token,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            **callbacks,
        )
    except BaseException:
        await client.close()
        raise
    return client


async def accepted(url: str, token: str) -> bool:
    try:
        client = await connect(url, token)
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    try:
        await client.flush(timeout=3)
    finally:
        await client.close()
    return True


async def round_trip(client: Client, subject: str) -> bytes:
    sub = await client.subscribe(subject)
    await client.flush(timeout=3)
    await client.publish(subject, b"ping")
    msg = await sub.next_msg(timeout=3)
    await sub.unsubscribe()
    return msg.data


# --- the proofs -------------------------------------------------------------------------------


def test_rs256_and_es256_tokens_accepted_with_mapped_permissions(stack: Stack) -> None:
    mark = len(stack.callout_events())
    realm = stack.realm
    users = [realm.token(stack.rs), realm.token(stack.es)]
    asyncio.run(_mapped_permissions(stack.url, users, realm.token(stack.es, roles=ADMIN)))
    granted = [e for e in stack.callout_events()[mark:] if e["event"] == "callout_authorized"]
    assert {e["kid"] for e in granted} >= {"rs-1", "es-1"}
    assert {e["account"] for e in granted} >= {"APP", "ADMIN"}
    assert all(e["user"] == "alice" for e in granted)


async def _mapped_permissions(url: str, user_tokens: list[str], admin_token: str) -> None:
    """Users get the mapped subjects only; the realm role admin gets the ADMIN account."""
    for token in user_tokens:
        client = await connect(url, token)
        try:
            assert await round_trip(client, "app.orders") == b"ping"
            # Outside the mapped permissions: the server answers -ERR Permissions Violation.
            await client.publish("admin.audit", b"x")
            await _until(partial(_violated, client), 5)
        finally:
            await client.close()

    # realm role admin -> the ADMIN account, every subject.
    admin = await connect(url, admin_token)
    try:
        assert await round_trip(admin, "admin.audit") == b"ping"
    finally:
        await admin.close()


def _violated(client: Client) -> bool:
    return "permissions violation" in str(client.last_error).lower()


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def _tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["realm_access"]["roles"].append("admin")
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def test_bad_tokens_refused(stack: Stack) -> None:
    realm = stack.realm
    stranger = RealmKey.new("not-published", "ES256")
    cases = {
        "token expired": realm.token(stack.rs, iat=int(time.time()) - 600, lifetime=-300),
        "audience not accepted": realm.token(stack.es, aud="another-client"),
        "unknown kid": realm.token(stranger),
        "bad signature": _tampered(realm.token(stack.rs)),
        "issuer not accepted": realm.token(stack.es, iss="https://evil.example.com/realms/app"),
        "malformed token": "not-a-jwt",
    }
    mark = len(stack.callout_events())

    async def attempt() -> dict[str, str]:
        results: dict[str, str] = {}
        for reason, token in cases.items():
            try:
                client = await connect(stack.url, token)
            except nats.errors.Error as exc:
                results[reason] = str(exc).lower()
            else:
                await client.close()
                results[reason] = "connected"
        return results

    results = asyncio.run(attempt())
    # During CONNECT nats-py raises the server's -ERR as it came.
    assert all("authorization violation" in error for error in results.values()), results
    refused = [e for e in stack.callout_events()[mark:] if e["event"] == "callout_refused"]
    assert [e["reason"] for e in refused] == list(cases)
    assert refused[2]["kid"] == "not-published"
    assert refused[4]["iss"] == "https://evil.example.com/realms/app"
    log = stack.callout_log.read_text()
    for token in cases.values():
        assert token.split(".")[-1] not in log
    assert stack.callout.poll() is None


def test_clients_cannot_forge_callout_requests(stack: Stack) -> None:
    """nats-server refuses a client's publish on the callout subject, even the callout user's."""

    async def forge() -> str:
        client = Client()
        await client.connect(
            stack.url, user="callout", password="callout-pw", connect_timeout=3, error_cb=_quiet
        )
        try:
            await client.publish("$SYS.REQ.USER.AUTH", b"forged")
            await _until(lambda: client.last_error is not None, 5)
            return str(client.last_error).lower()
        finally:
            await client.close()

    assert "permissions violation" in asyncio.run(forge())


def test_malformed_requests_never_crash_the_handler(stack: Stack) -> None:
    asyncio.run(_malformed(stack))
    assert stack.callout.poll() is None


async def _malformed(stack: Stack) -> None:
    config = load_config(stack.config)
    authorizer = Authorizer(config, Verifier(stack.jwks, config.algorithms), read_signer(config))
    server = NkeySigner.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))
    other = NkeySigner.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))
    user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    good_nats = {
        "type": "authorization_request",
        "server_id": {"id": server.public_key, "name": "x", "host": "127.0.0.1"},
        "user_nkey": user.public_key.decode(),
        "client_info": {"host": "127.0.0.1", "id": 7},
        "connect_opts": {"auth_token": stack.realm.token(stack.rs, lifetime=3600), "protocol": 1},
    }
    now = int(time.time())

    def request(signer: NkeySigner = server, **claims: Any) -> bytes:
        body: dict[str, Any] = {"sub": stack.account_public, "aud": "nats-authorization-request"}
        body.update(claims)
        body.setdefault("nats", good_nats)
        return natsjwt.encode(body, signer, now=now).encode()

    malformed = [
        b"",
        b"garbage",
        b"a.b.c",
        b"\xff" * 64,
        b"e30.e30.e30",
        request(sub=other.public_key),  # for another issuer account
        request(other),  # signed by a server other than the one it names
        request(aud="someone-else"),
        request(exp=now - 10),
        request(nats={**good_nats, "user_nkey": 7}),
        request(nats={**good_nats, "server_id": "x"}),
        request(nats={**good_nats, "type": "user"}),
        request()[:-3] + b"AAA",  # the signature broken
    ]
    for data in malformed:
        assert await authorizer.handle(data) == b""
    assert await authorizer.handle(request(), {"Nats-Server-Xkey": "X" * 56}) == b""

    # A request without a token, or with a bad one, gets an error response.
    for opts, reason in (({}, "no token"), ({"auth_token": "x.y.z"}, "malformed token")):
        reply = await authorizer.handle(request(nats={**good_nats, "connect_opts": opts}))
        response = natsjwt.decode(
            reply,
            expect_type="authorization_response",
            issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
            now=time.time(),
        )
        assert reason in response["nats"]["error"] and "jwt" not in response["nats"]

    # The well-formed request is answered with a user JWT for the requested user nkey.
    response = natsjwt.decode(
        await authorizer.handle(request()),
        expect_type="authorization_response",
        issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
        now=time.time(),
    )
    assert response["iss"] == stack.account_public
    assert response["sub"] == good_nats["user_nkey"]
    assert response["aud"] == server.public_key
    user_claims = natsjwt.decode(
        response["nats"]["jwt"],
        expect_type="user",
        issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
        now=time.time(),
    )
    assert user_claims["sub"] == good_nats["user_nkey"] and user_claims["aud"] == "APP"
    assert user_claims["name"] == "alice"
    assert user_claims["nats"]["pub"] == {"allow": ["app.>"]}
    # exp = min(token exp, now + max_ttl): max_ttl (10m) caps a token of an hour ...
    assert now + 599 <= user_claims["exp"] <= now + 601
    # ... and a token of a minute keeps its own exp.
    short = stack.realm.token(stack.rs, lifetime=60)
    reply = await authorizer.handle(
        request(nats={**good_nats, "connect_opts": {"auth_token": short}})
    )
    response = natsjwt.decode(
        reply,
        expect_type="authorization_response",
        issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
        now=time.time(),
    )
    user_claims = natsjwt.decode(
        response["nats"]["jwt"],
        expect_type="user",
        issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
        now=time.time(),
    )
    assert user_claims["exp"] == jwt.decode(short, options={"verify_signature": False})["exp"]


# --- encrypted callouts (xkey) ------------------------------------------------------------------


@pytest.fixture
def events() -> Iterator[Events]:
    """The keysetd log events emitted in this process during the test."""
    with keysetd_events() as seen:
        yield seen


def server_request(
    issuer_account: str, server: NkeySigner, token: str, server_xkey: str | None
) -> tuple[bytes, str]:
    """(an authorization request JWT as nats-server signs it, its user nkey)."""
    user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    user_nkey = user.public_key.decode()
    server_id: dict[str, Any] = {"id": server.public_key, "name": "x", "host": "127.0.0.1"}
    if server_xkey is not None:
        server_id["xkey"] = server_xkey
    claims = {
        "sub": issuer_account,
        "aud": "nats-authorization-request",
        "exp": int(time.time()) + 10,
        "nats": {
            "type": "authorization_request",
            "server_id": server_id,
            "user_nkey": user_nkey,
            "client_info": {"host": "127.0.0.1", "id": 9},
            "connect_opts": {"auth_token": token, "protocol": 1},
        },
    }
    return natsjwt.encode(claims, server, now=int(time.time())).encode(), user_nkey


def test_xkey_encrypted_callout_grants_mapped_permissions(xkey_stack: Stack) -> None:
    """nats-server with ``auth_callout { xkey: X... }``: requests sealed, answers sealed back."""
    xs = xkey_stack
    ready = [e for e in xs.callout_events() if e["event"] == "callout_ready"]
    assert ready and ready[-1]["xkey"] == xs.xkey_public
    mark = len(xs.callout_events())
    user = xs.realm.token()  # the realm's current signing key
    asyncio.run(_mapped_permissions(xs.url, [user], xs.realm.token(xs.es, roles=ADMIN)))
    granted = [e for e in xs.callout_events()[mark:] if e["event"] == "callout_authorized"]
    assert len(granted) == 2 and all(e["encrypted"] is True for e in granted)
    assert [e["account"] for e in granted] == ["APP", "ADMIN"]
    assert not [e for e in xs.callout_events() if e["event"] == "callout_bad_request"]
    assert "decrypt" not in xs.server_log.read_text().lower()


def test_xkey_bad_tokens_refused(xkey_stack: Stack) -> None:
    xs, realm = xkey_stack, xkey_stack.realm
    cases = {
        "token expired": realm.token(xs.es, iat=int(time.time()) - 600, lifetime=-300),
        "unknown kid": realm.token(RealmKey.new("not-published", "ES256")),
        "malformed token": "not-a-jwt",
    }
    mark = len(xs.callout_events())

    async def attempt() -> list[str]:
        results = []
        for token in cases.values():
            try:
                client = await connect(xs.url, token)
            except nats.errors.Error as exc:
                results.append(str(exc).lower())
            else:
                await client.close()
                results.append("connected")
        return results

    results = asyncio.run(attempt())
    assert all("authorization violation" in error for error in results), results
    refused = [e for e in xs.callout_events()[mark:] if e["event"] == "callout_refused"]
    assert [e["reason"] for e in refused] == list(cases)
    assert all(e["encrypted"] is True for e in refused)
    # The server logs the reason from the error response: it opened what the callout sealed.
    for reason in cases:
        wait_for(
            lambda reason=reason: f"returned an error: {reason}" in xs.server_log.read_text(),
            5,
            f"nats-server to log {reason!r}",
        )
    assert "decrypt" not in xs.server_log.read_text().lower()
    assert xs.callout.poll() is None


def test_xkey_mismatches_refused_and_responses_sealed(
    stack: Stack, xkey_stack: Stack, events: Events
) -> None:
    asyncio.run(_xkey_in_process(stack, xkey_stack, events))


async def _xkey_in_process(plain: Stack, xs: Stack, seen: Events) -> None:
    config = load_config(xs.config)
    callout_xkey = read_xkey(config)
    assert callout_xkey is not None and callout_xkey.public_key == xs.xkey_public
    assert xs.xkey_seed is not None and xs.xkey_seed not in repr(callout_xkey)
    encrypted = Authorizer(
        config, Verifier(xs.jwks, config.algorithms), read_signer(config), callout_xkey
    )
    plain_config = load_config(plain.config)
    assert read_xkey(plain_config) is None
    plain_authorizer = Authorizer(
        plain_config, Verifier(plain.jwks, plain_config.algorithms), read_signer(plain_config)
    )
    # What nats-server does: its own curve key seals the request for the callout's xkey.
    server = NkeySigner.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))
    server_xkey = CurveKey.generate()
    header = {"Nats-Server-Xkey": server_xkey.public_key}
    request, user = server_request(
        xs.account_public, server, xs.realm.token(xs.es), server_xkey.public_key
    )
    sealed = server_xkey.seal(request, xs.xkey_public)

    def opened(reply: bytes) -> dict[str, Any]:
        assert reply.startswith(b"xkv1")
        return natsjwt.decode(
            server_xkey.open(reply, xs.xkey_public),
            expect_type="authorization_response",
            issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
            now=time.time(),
        )

    response = opened(await encrypted.handle(sealed, header))
    assert response["sub"] == user and response["aud"] == server.public_key
    assert "jwt" in response["nats"] and "error" not in response["nats"]
    # nats-py keeps the header's case as sent; any case is the same header.
    lower = {"nats-server-xkey": server_xkey.public_key}
    assert "jwt" in opened(await encrypted.handle(sealed, lower))["nats"]
    # A refused token: the error response is sealed too.
    bad, _ = server_request(xs.account_public, server, "not-a-jwt", server_xkey.public_key)
    response = opened(await encrypted.handle(server_xkey.seal(bad, xs.xkey_public), header))
    assert response["nats"]["error"] == "malformed token"

    stranger = CurveKey.generate()
    resealed, _ = server_request(xs.account_public, server, xs.realm.token(xs.es), None)
    cases: list[tuple[str, Authorizer, bytes, dict[str, str] | None]] = [
        ("but no xkey_seed_file is set", plain_authorizer, sealed, header),
        ("plain request but xkey_seed_file is set", encrypted, request, None),
        ("does not open", encrypted, server_xkey.seal(request, stranger.public_key), header),
        ("does not open", encrypted, sealed, {"Nats-Server-Xkey": stranger.public_key}),
        ("does not open", encrypted, b"xkv1" + bytes(64), header),
        ("does not open", encrypted, b"garbage", header),
        ("does not open", encrypted, sealed, {"Nats-Server-Xkey": "XNOTAKEY"}),
        # Sealed by another key than the signed server_id.xkey names (or with none).
        (
            "server_id.xkey is not the Nats-Server-Xkey header",
            encrypted,
            stranger.seal(request, xs.xkey_public),
            {"Nats-Server-Xkey": stranger.public_key},
        ),
        (
            "server_id.xkey is not the Nats-Server-Xkey header",
            encrypted,
            server_xkey.seal(resealed, xs.xkey_public),
            header,
        ),
    ]
    mark = len(seen)
    for _, authorizer, data, headers in cases:
        assert await authorizer.handle(data, headers) == b""
    reasons = [str(f["reason"]) for name, f in seen[mark:] if name == "callout_bad_request"]
    assert len(reasons) == len(cases)
    for (expected, *_), reason in zip(cases, reasons, strict=True):
        assert expected in reason, reason
    logged = json.dumps(seen)
    assert xs.xkey_seed not in logged
    assert decode_seed(xs.xkey_seed.encode()).hex() not in logged


def test_xkey_seed_never_shown(xkey_stack: Stack, tmp_path: Path) -> None:
    xs = xkey_stack
    assert xs.xkey_seed is not None and xs.xkey_public is not None
    seed = xs.xkey_seed
    for log in (xs.callout_log, xs.server_log):
        assert seed not in log.read_text()
    done = check_config(xs.config)
    assert done.returncode == 0, done.stderr
    assert f"requests xkey {xs.xkey_public}" in done.stdout
    assert seed not in done.stdout + done.stderr

    # The seed file is a secret like the issuer seed: owner-only, and errors never quote it.
    loose = write_secret(tmp_path / "loose.xk", seed, mode=0o644)
    path = tmp_path / "callout.toml"
    path.write_text(render_toml(callout_config(tmp_path, xkey_seed_file=str(loose))))
    done = check_config(path)
    assert done.returncode == 2
    assert "xkey_seed_file" in done.stderr and "chmod 0600" in done.stderr
    assert seed not in done.stdout + done.stderr


def test_xkey_seed_file_must_hold_a_curve_seed(tmp_path: Path) -> None:
    account, _ = account_seed()
    truncated = curve_seed()[0][:-4]
    for text, message in (
        (account, "not a curve seed"),
        (truncated, "not a curve seed"),
        (f"# xkey\n{curve_seed()[0]}\n{curve_seed()[0]}", "expected one seed line"),
        ("nothing here", "expected one seed line"),
    ):
        path = write_secret(tmp_path / "x.xk", text)
        config = CalloutConfig.parse(callout_config(tmp_path, xkey_seed_file=str(path)))
        with pytest.raises(ConfigError, match=message) as info:
            read_xkey(config)
        assert text.splitlines()[-1] not in str(info.value)
    # A comment line beside the seed is fine, as in an nsc-style file.
    seed, public = curve_seed()
    path = write_secret(tmp_path / "x.xk", f"# the callout's xkey\n{seed}")
    config = CalloutConfig.parse(callout_config(tmp_path, xkey_seed_file=str(path)))
    key = read_xkey(config)
    assert key is not None and key.public_key == public


def test_xkey_seal_open_round_trip() -> None:
    sender, recipient = CurveKey.generate(), CurveKey.generate()
    assert sender.public_key.startswith("X") and len(sender.public_key) == 56
    message = b"an authorization request JWT"
    sealed = sender.seal(message, recipient.public_key)
    assert sealed.startswith(b"xkv1") and len(sealed) == 4 + 24 + 16 + len(message)
    assert recipient.open(sealed, sender.public_key) == message
    assert sender.seal(message, recipient.public_key)[4:28] != sealed[4:28]  # fresh nonce
    assert recipient.open(sender.seal(b"", recipient.public_key), sender.public_key) == b""

    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    third = CurveKey.generate()
    for data, sender_key in (
        (tampered, sender.public_key),  # the MAC fails
        (sealed, third.public_key),  # the wrong sender
        (b"xkv2" + sealed[4:], sender.public_key),  # an unknown version
        (sealed[:28], sender.public_key),  # no box at all
    ):
        with pytest.raises(XkeyError):
            recipient.open(data, sender_key)
    with pytest.raises(XkeyError):
        third.open(sealed, sender.public_key)  # not for this key

    # Only X... keys are recipients: an account key, a bad checksum, or text.
    account = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    flipped = recipient.public_key[:10] + ("A" if recipient.public_key[10] != "A" else "B")
    for bad in (account.public_key.decode(), flipped + recipient.public_key[11:], "X", "xkey"):
        with pytest.raises(XkeyError):
            sender.seal(message, bad)
    with pytest.raises(XkeyError):
        sender.seal(message, recipient.public_key, nonce=bytes(23))
    assert encode_public(decode_public(recipient.public_key)) == recipient.public_key

    # Seeds: SX... only, and an error never quotes one.
    seed = encode_seed(os.urandom(32))
    assert seed.startswith(b"SX") and encode_seed(decode_seed(seed)) == seed
    account_seed_text = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    for bad_seed in (account_seed_text, seed[:-2], b"SX" + b"A" * 56):
        with pytest.raises(XkeyError) as info:
            CurveKey.from_seed(bad_seed)
        assert bad_seed.decode() not in str(info.value)
    assert seed.decode() not in repr(CurveKey.from_seed(seed))


#: nats-io/nkeys.js test/curve_test.ts, "actual data generated by the nkeys go library":
#: Seal("hello world") from SENDER to RECIPIENT's public key with an all-zero nonce.
GO_SENDER_SEED = b"SXAESVBNK3UN2O24Z53ZJLFMX5OYHLAAVULRILWXRO775SDYFKI7FM3J7Y"
GO_RECIPIENT_SEED = b"SXAHMGVNIYUF4CA5G475EN64YWNG32HSIF4MZCPZHV7PAFYTWBE5J5USFE"
GO_SEALED = (
    b"xkv1" + bytes(24) + bytes.fromhex("67bcc3490003775bb5a7a2a7693366545e98bde595de2f1195bcaa")
)


def test_xkey_go_interop_vector() -> None:
    sender, recipient = CurveKey.from_seed(GO_SENDER_SEED), CurveKey.from_seed(GO_RECIPIENT_SEED)
    assert sender.seal(b"hello world", recipient.public_key, nonce=bytes(24)) == GO_SEALED
    assert recipient.open(GO_SEALED, sender.public_key) == b"hello world"
    # The same suite's seed -> public key pair, and its public key with a broken checksum.
    key = CurveKey.from_seed(b"SXABQYG6TLQOAZSOGFIAPFJ6B5ZPUXKK5USV4UGXTULPGLSNTSZWJPTLEI")
    assert key.public_key == "XBJKZV6QJMJAN3H3KFL2NFVJEQ4WW22423DKRNYF4OIB6LWHUC4COBP6"
    with pytest.raises(XkeyError):
        decode_public("XBJKZV6QJMJAN3H3KFL2LFVJEQ4WW22423DKRNYF4OIB6LWHUC4COBP6")


def test_realm_rotation_with_overlap_loses_no_connection(stack: Stack) -> None:
    """Realm: publish rs-2, sign with it once verifiers have it, then drop rs-1 (retained)."""
    realm, old = stack.realm, stack.rs
    new = RealmKey.new("rs-2", "RS256")
    issued_before = realm.token(old)  # a client still holding a token of the old key
    pid = stack.callout.pid

    async def rotate() -> tuple[int, list[str], dict[str, int]]:
        attempts, failures = 0, []
        by_kid: dict[str, int] = {}
        done = asyncio.Event()

        async def clients() -> None:
            nonlocal attempts
            while not done.is_set():
                signing = realm.signing
                assert signing is not None
                for token, kid in ((realm.token(signing), signing.kid), (issued_before, old.kid)):
                    attempts += 1
                    if await accepted(stack.url, token):
                        by_kid[kid] = by_kid.get(kid, 0) + 1
                    else:
                        failures.append(kid)
                await asyncio.sleep(0.01)

        async def refreshed() -> None:
            """Until keysetd has fetched the realm's certs twice more."""
            seen = realm.served
            await _until(lambda: realm.served >= seen + 2, 10)

        task = asyncio.create_task(clients())
        try:
            await _until(lambda: by_kid.get(old.kid, 0) >= 10, 10)
            realm.published = [old, new, stack.es]  # publish before use
            await refreshed()
            await _until(lambda: "rs-2" in stack.jwks.read_text(), 10)
            assert await accepted(stack.url, realm.token(new))  # the callout verifies rs-2
            realm.signing = new
            await _until(lambda: by_kid.get(new.kid, 0) >= 10, 10)
            realm.published = [new, stack.es]  # the old key leaves the realm
            await refreshed()
            signed_old = by_kid.get(old.kid, 0)
            await _until(lambda: by_kid.get(old.kid, 0) >= signed_old + 10, 10)
        finally:
            done.set()
            await task
        return attempts, failures, by_kid

    attempts, failures, by_kid = asyncio.run(rotate())
    assert failures == []
    assert attempts >= 40
    assert by_kid.get("rs-2", 0) >= 10 and by_kid.get("rs-1", 0) >= 20
    kids = [key["kid"] for key in json.loads(stack.jwks.read_text())["keys"]]
    assert set(kids) == {"rs-1", "rs-2", "es-1"}  # rs-1 retained for RETENTION
    assert stack.callout.pid == pid and stack.callout.poll() is None


# --- units: config and the NATS JWT -------------------------------------------------------------


def test_seed_file_must_be_private(tmp_path: Path) -> None:
    config = callout_config(tmp_path)
    os.chmod(config["issuer_account_seed_file"], 0o644)
    path = tmp_path / "callout.toml"
    path.write_text(render_toml(config))
    done = check_config(path)
    assert done.returncode == 2
    assert "chmod 0600" in done.stderr
    seed = Path(config["issuer_account_seed_file"]).read_text().strip()
    assert seed not in done.stderr + done.stdout
    os.chmod(config["issuer_account_seed_file"], 0o600)
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    assert seed not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "surprise"),
        ({"xkey_seed_file": 7}, "xkey_seed_file: expected a path"),
        ({"algorithms": ["HS256"]}, "asymmetric"),
        ({"account": "bad name"}, "account"),
        ({"rules": [{"claim": "roles", "account": "A"}]}, "contains and equals"),
    ],
)
def test_config_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = tmp_path / "callout.toml"
    path.write_text(render_toml(callout_config(tmp_path, **change)))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_user_seed_is_not_an_issuer(tmp_path: Path) -> None:
    user_seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    config = CalloutConfig.parse(
        callout_config(
            tmp_path, issuer_account_seed_file=str(write_secret(tmp_path / "u.nk", user_seed))
        )
    )
    with pytest.raises(ConfigError, match="not an account seed") as info:
        read_signer(config)
    assert user_seed not in str(info.value)


def test_nats_jwt_round_trip_and_jti() -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    signer = NkeySigner.from_seed(seed)
    assert signer.public_key.startswith("A") and seed.decode() not in repr(signer)
    token = natsjwt.encode({"sub": "UX", "aud": "APP", "nats": {"type": "user"}}, signer, now=100)
    head, payload, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {
        "typ": "JWT",
        "alg": "ed25519-nkey",
    }
    claims = natsjwt.decode(
        token, expect_type="user", issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT, now=100
    )
    assert claims["iss"] == signer.public_key and claims["iat"] == 100
    assert claims["nats"] == {"type": "user", "version": 2}
    # jti: base32 SHA-512/256 of the standard claims in nats-io/jwt's order, jti left out.
    import hashlib

    standard = json.dumps(
        {"aud": "APP", "iat": 100, "iss": signer.public_key, "sub": "UX"}, separators=(",", ":")
    )
    digest = hashlib.new("sha512_256", standard.encode()).digest()
    assert claims["jti"] == base64.b32encode(digest).decode().rstrip("=")
    tampered = token[: len(head) + 1] + payload[:-2] + "AA." + token.rsplit(".", 1)[1]
    with pytest.raises(NatsJwtError):
        natsjwt.decode(
            tampered, expect_type="user", issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT, now=100
        )
    with pytest.raises(NatsJwtError, match="expected kind"):
        natsjwt.decode(token, expect_type="user", issuer_prefix=nkeys.PREFIX_BYTE_SERVER, now=100)
    with pytest.raises(NatsJwtError, match="expired"):
        natsjwt.decode(
            natsjwt.encode({"sub": "UX", "exp": 150, "nats": {"type": "user"}}, signer, now=100),
            expect_type="user",
            issuer_prefix=nkeys.PREFIX_BYTE_ACCOUNT,
            now=151,
        )


def test_permissions_mapping() -> None:
    from keysetd.outputs.nats import NatsPermissions

    assert user_permissions(None) == {"pub": {}, "sub": {}}
    perms = NatsPermissions.parse(
        {
            "publish": {"allow": ["a.>"], "deny": ["a.secret"]},
            "subscribe": "b.*",
            "allow_responses": {"max": 3, "expires": "5s"},
        }
    )
    assert user_permissions(perms) == {
        "pub": {"allow": ["a.>"], "deny": ["a.secret"]},
        "sub": {"allow": ["b.*"]},
        "resp": {"max": 3, "ttl": 5_000_000_000},
    }


def test_public_api_pinned() -> None:
    import keysetd_nats_callout

    assert sorted(keysetd_nats_callout.__all__) == [
        "Authorizer",
        "CalloutConfig",
        "CalloutError",
        "Decision",
        "NatsJwtError",
        "NkeySigner",
        "Request",
        "Rule",
        "SUBJECT",
        "load_config",
        "serve",
    ]
    assert keysetd_nats_callout.Authorizer is Authorizer


def test_readme_config_snippet_loads(tmp_path: Path) -> None:
    readme = Path(__file__).parent.parent / "plugins" / "keysetd-nats-callout" / "README.md"
    snippet = readme.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "callout.toml"
    path.write_text(snippet)
    config = load_config(path)
    assert config.account == "APP" and config.rules[0].account == "ADMIN"
    assert user_permissions(config.rules[0].permissions) == {
        "pub": {"allow": [">"]},
        "sub": {"allow": [">"]},
    }
    # The commented-out xkey line names a real key.
    assert "\n# xkey_seed_file = " in snippet
    path.write_text(snippet.replace("\n# xkey_seed_file = ", "\nxkey_seed_file = "))
    assert load_config(path).xkey_seed_file == Path("/etc/keysetd/nats-callout/callout.xk")
