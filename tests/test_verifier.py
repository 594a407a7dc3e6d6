"""keysetd.verifier on real files, real threads and a real event loop; README snippets run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

import keysetd.verifier
from keysetd import formats
from keysetd.errors import ConfigError
from keysetd.verifier import (
    KeysetUnavailable,
    MissingKidError,
    UnknownKidError,
    UnusableKeyError,
    Verifier,
    VerifierError,
)
from tests.conftest import wait_for
from tests.keys import b64u, jwk, jwks_doc, public, write_atomically

ROOT = Path(__file__).resolve().parent.parent
ALGS = ["ES256", "EdDSA", "RS256", "HS256"]


def sign(key: dict[str, Any], claims: dict[str, Any] | None = None, **header: Any) -> str:
    """A token signed with the JWK ``key``; header kid defaults to the key's."""
    payload = {"sub": "alice", "exp": int(time.time()) + 600, **(claims or {})}
    headers = {"kid": key["kid"], **header}
    if headers["kid"] is None:
        del headers["kid"]
    if key["kty"] == "oct":
        secret: Any = base64.urlsafe_b64decode(key["k"] + "=" * (-len(key["k"]) % 4))
    else:
        secret = jwt.PyJWK(key).key
    return jwt.encode(payload, secret, algorithm=key["alg"], headers=headers)


def raw_token(header: dict[str, Any], payload: bytes = b"{}", secret: bytes | None = None) -> str:
    """A token built by hand: for headers PyJWT would not sign (alg confusion, random kids)."""
    head = b64u(json.dumps(header).encode()) + "." + b64u(payload)
    if secret is None:
        return head + "." + b64u(b"not a signature")
    return head + "." + b64u(hmac.new(secret, head.encode(), hashlib.sha256).digest())


@pytest.fixture(scope="module")
def rsa_key() -> dict[str, Any]:
    return jwk("RS256", "r1")


@pytest.fixture
def keys(rsa_key: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "e1": jwk("ES256", "e1"),
        "e2": jwk("ES256", "e2"),
        "o1": jwk("EdDSA", "o1"),
        "r1": rsa_key,
        "h1": jwk("HS256", "h1"),
    }


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    write_atomically(path, jwks_doc(*(public(k) for k in keys)))


# -- formats -------------------------------------------------------------------------------


def test_jwks_output(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"], keys["o1"], keys["r1"])
    verifier = Verifier(path, ALGS)
    for kid in ("e1", "o1", "r1"):
        assert verifier.decode(sign(keys[kid], {"kid_was": kid}))["kid_was"] == kid
    assert set(verifier.kids) == {"e1", "o1", "r1"}
    assert verifier.last_error is None
    assert verifier.loaded_at <= time.time()


def test_keyset_output_with_hmac(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "keyset.json"
    write_atomically(path, jwks_doc(keys["e1"], keys["h1"], active="h1"))  # private members
    verifier = Verifier(path, ["ES256", "HS256"])
    assert verifier.decode(sign(keys["h1"]))["sub"] == "alice"
    assert verifier.decode(sign(keys["e1"]))["sub"] == "alice"


def test_rgs_output(tmp_path: Path) -> None:
    path = tmp_path / "rgs.json"
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    write_atomically(
        path, json.dumps({"active_kid": "s2", "keys": {"s1": old, "s2": new}}).encode()
    )
    verifier = Verifier(path, ["HS256"])
    for kid, secret in (("s1", old), ("s2", new)):
        token = jwt.encode({"sub": kid}, secret.encode(), algorithm="HS256", headers={"kid": kid})
        assert verifier.decode(token) == {"sub": kid}
    forged = jwt.encode({"sub": "x"}, secrets.token_bytes(32), "HS256", headers={"kid": "s1"})
    with pytest.raises(jwt.InvalidSignatureError):
        verifier.decode(forged)


def test_rgs_hmac_alg(tmp_path: Path) -> None:
    path = tmp_path / "rgs.json"
    secret = secrets.token_urlsafe(64)
    write_atomically(path, json.dumps({"keys": {"s1": secret}}).encode())
    verifier = Verifier(path, ["HS512"], hmac_alg="HS512")
    token = jwt.encode({"sub": "x"}, secret.encode(), algorithm="HS512", headers={"kid": "s1"})
    assert verifier.decode(token) == {"sub": "x"}
    hs256 = jwt.encode({"sub": "x"}, secret.encode(), algorithm="HS256", headers={"kid": "s1"})
    with pytest.raises(jwt.InvalidAlgorithmError):
        verifier.decode(hs256)


# -- PyJWT's API -----------------------------------------------------------------------------


def test_pyjwt_options_pass_through(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    verifier = Verifier(path, ["ES256"])
    token = sign(keys["e1"], {"aud": "api", "iss": "https://sso.example.com"})
    claims = verifier.decode(token, audience="api", issuer="https://sso.example.com")
    assert claims["aud"] == "api"
    with pytest.raises(jwt.InvalidAudienceError):
        verifier.decode(token, audience="other")
    with pytest.raises(jwt.InvalidIssuerError):
        verifier.decode(token, audience="api", issuer="https://evil.example.com")
    assert verifier.decode(token, options={"verify_aud": False})["sub"] == "alice"
    expired = sign(keys["e1"], {"exp": int(time.time()) - 30})
    with pytest.raises(jwt.ExpiredSignatureError):
        verifier.decode(expired)
    assert verifier.decode(expired, leeway=60)["sub"] == "alice"
    with pytest.raises(jwt.MissingRequiredClaimError):
        verifier.decode(sign(keys["e1"]), options={"require": ["nbf"]})
    assert verifier.decode(sign(keys["e1"], {"sub": "bob"}), subject="bob")["sub"] == "bob"
    complete = verifier.decode_complete(token, audience="api")
    assert complete["header"]["kid"] == "e1" and complete["payload"]["aud"] == "api"
    with pytest.raises(jwt.DecodeError):
        verifier.decode("not-a-token")
    forged = sign(keys["e2"], kid="e1")  # right kid, wrong key
    with pytest.raises(jwt.InvalidSignatureError):
        verifier.decode(forged)


def test_token_without_kid(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"], keys["o1"])
    one = Verifier(path, ["ES256"])  # o1 is unusable here: e1 is the only usable key
    assert one.decode(sign(keys["e1"], kid=None))["sub"] == "alice"
    two = Verifier(path, ["ES256", "EdDSA"])
    with pytest.raises(MissingKidError, match="2 usable keys") as caught:
        two.decode(sign(keys["e1"], kid=None))
    assert isinstance(caught.value, jwt.InvalidTokenError)


def test_kid_whose_alg_is_not_allowed(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"], keys["o1"])
    verifier = Verifier(path, ["ES256"])
    with pytest.raises(UnusableKeyError, match="EdDSA is not among") as caught:
        verifier.decode(sign(keys["o1"]))
    assert caught.value.kid == "o1"
    assert {k.kid: k.usable for k in verifier.status().keys} == {"e1": True, "o1": False}


def test_key_alg_ed25519_verifies_eddsa_tokens(
    tmp_path: Path, keys: dict[str, dict[str, Any]]
) -> None:
    """oidc-provider publishes ``alg: "Ed25519"`` (RFC 9864); its tokens say EdDSA."""
    path = tmp_path / "jwks.json"
    named = {**public(keys["o1"]), "alg": "Ed25519"}
    write_atomically(path, jwks_doc(named, public(keys["e1"])))
    verifier = Verifier(path, ["EdDSA"])
    assert verifier.decode(sign(keys["o1"]))["sub"] == "alice"
    with pytest.raises(UnusableKeyError, match="Ed25519 is not among"):
        Verifier(path, ["ES256"]).decode(sign(keys["o1"]))


# -- alg confusion ----------------------------------------------------------------------------


def test_hs256_signed_with_the_rsa_public_pem_is_refused(
    tmp_path: Path, rsa_key: dict[str, Any]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, rsa_key)
    pem = jwt.PyJWK(public(rsa_key)).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = Verifier(path, ["RS256", "HS256"])  # even with HS256 allowed
    for header in ({"alg": "HS256", "kid": "r1"}, {"alg": "HS256"}):
        token = raw_token(header, b'{"sub": "mallory"}', secret=pem)
        with pytest.raises(jwt.InvalidAlgorithmError):
            verifier.decode(token)


def test_alg_none_is_refused(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    none_key = {"kty": "oct", "kid": "n1", "alg": "none", "k": b64u(secrets.token_bytes(32))}
    write_atomically(path, jwks_doc(public(keys["e1"]), none_key))
    verifier = Verifier(path, ["ES256", "HS256"])
    for kid in ("e1", "n1"):
        token = jwt.encode({"sub": "mallory"}, None, algorithm="none", headers={"kid": kid})
        with pytest.raises(jwt.InvalidTokenError):
            verifier.decode(token)
    assert "n1" in verifier.kids
    assert not next(k for k in verifier.status().keys if k.kid == "n1").usable
    with pytest.raises(ValueError, match="none"):
        Verifier(path, ["none"])
    with pytest.raises(TypeError):
        Verifier(path, "ES256")


def test_mismatched_alg_and_weak_keys_never_verify(
    tmp_path: Path, keys: dict[str, dict[str, Any]]
) -> None:
    path = tmp_path / "jwks.json"
    liar = {**public(keys["e2"]), "alg": "RS256"}  # an EC key that claims RS256
    short = {"kty": "oct", "kid": "h-short", "alg": "HS256", "k": b64u(b"0123456789")}
    enc = {**public(keys["o1"]), "use": "enc"}
    write_atomically(path, jwks_doc(public(keys["e1"]), liar, short, enc))
    verifier = Verifier(path, ALGS)
    reasons = {k.kid: k.unusable for k in verifier.status().keys}
    assert reasons["e1"] is None
    assert "does not fit" in (reasons["e2"] or "")
    assert "hmac-too-short" in (reasons["h-short"] or "")
    assert "use is 'enc'" in (reasons["o1"] or "")
    token = raw_token({"alg": "HS256", "kid": "h-short"}, secret=b"0123456789")
    with pytest.raises(UnusableKeyError):
        verifier.decode(token)
    assert "0123456789" not in repr(verifier.status()) + repr(verifier)


# -- start-up ---------------------------------------------------------------------------------


def test_first_load_failure_raises(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    with pytest.raises(KeysetUnavailable, match="cannot read") as caught:
        Verifier(path, ["ES256"])
    assert isinstance(caught.value, ConfigError)
    path.write_text("{not json")
    with pytest.raises(KeysetUnavailable, match="invalid keyset"):
        Verifier(path, ["ES256"])
    write_jwks(path, keys["o1"])
    with pytest.raises(KeysetUnavailable, match="no usable key"):
        Verifier(path, ["ES256"])


def test_public_api_is_pinned() -> None:
    assert keysetd.verifier.__all__ == [
        "KeysetUnavailable",
        "MissingKidError",
        "UnknownKidError",
        "UnusableKeyError",
        "Verifier",
        "VerifierError",
        "VerifierKey",
        "VerifierStatus",
    ]
    for name in ("UnknownKidError", "MissingKidError", "UnusableKeyError"):
        assert issubclass(getattr(keysetd.verifier, name), VerifierError)
    assert issubclass(VerifierError, jwt.InvalidTokenError)


# -- reloads ----------------------------------------------------------------------------------


def test_rotation_is_picked_up_within_check_interval(
    tmp_path: Path, keys: dict[str, dict[str, Any]]
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    interval = 0.2
    verifier = Verifier(path, ["ES256"], check_interval=interval)
    token = sign(keys["e1"])
    write_jwks(path, keys["e1"], keys["e2"])  # atomic replace
    started = time.monotonic()
    wait_for(lambda: verifier.decode(token) and "e2" in verifier.kids, 5, "e2 published")
    # A generous margin: the machine may be busy; the point is "one interval", not "ever".
    assert time.monotonic() - started < interval + 1.0
    write_jwks(path, keys["e2"])  # e1 retired
    e2_token = sign(keys["e2"])
    wait_for(lambda: verifier.decode(e2_token) and "e1" not in verifier.kids, 5, "e1 retired")
    with pytest.raises(UnknownKidError, match="'e1'") as caught:
        verifier.decode(token)
    assert caught.value.kid == "e1"


def test_unknown_kid_rechecks_at_once(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    verifier = Verifier(path, ["ES256", "EdDSA"], check_interval=60.0)  # no periodic check here
    write_jwks(path, keys["e1"], keys["e2"])
    before = verifier.status()
    assert verifier.decode(sign(keys["e2"]))["sub"] == "alice"  # no wait: re-checked at once
    after = verifier.status()
    assert (after.checks, after.parses) == (before.checks + 1, before.parses + 1)
    # Within max(60 s / 10, 10 ms) of that stat, another new kid does not stat again ...
    write_jwks(path, keys["e1"], keys["e2"], keys["o1"])
    with pytest.raises(UnknownKidError):
        verifier.decode(sign(keys["o1"]))
    assert verifier.status().checks == after.checks
    # ... until something checks the file: refresh() does, at once.
    assert verifier.refresh() is True
    assert verifier.decode(sign(keys["o1"]))["sub"] == "alice"
    assert verifier.refresh() is False  # unchanged identity: a stat, no parse
    assert verifier.status().parses == after.parses + 1


def test_flood_of_random_kids_costs_no_parsing(
    tmp_path: Path, keys: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    interval = 1.0
    verifier = Verifier(path, ["ES256"], check_interval=interval)
    parses: list[int] = []
    real_decode = formats.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        parses.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(formats, "decode", counting_decode)
    tokens = [raw_token({"alg": "ES256", "kid": secrets.token_hex(8)}) for _ in range(10_000)]
    good = sign(keys["e1"])
    unknown = [0] * 4
    before = verifier.status().checks

    def flood(part: int) -> None:
        for token in tokens[part::4]:
            try:
                verifier.decode(token)
            except UnknownKidError:
                unknown[part] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    assert sum(unknown) == 10_000
    assert parses == []
    stats = verifier.status().checks - before
    # One stat per max(interval / 10, 10 ms) for unknown kids, plus the periodic ones.
    assert stats <= elapsed / max(interval / 10, 0.01) + elapsed / interval + 2, (stats, elapsed)
    assert verifier.decode(good)["sub"] == "alice"


def test_vanished_or_invalid_file_keeps_the_last_good_keyset(
    tmp_path: Path, keys: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    verifier = Verifier(path, ["ES256"], check_interval=0.05)
    token = sign(keys["e1"])
    loaded_at = verifier.loaded_at
    caplog.set_level(logging.WARNING, logger="keysetd.verifier")

    path.unlink()
    # The periodic check notices on its own; decoding goes on meanwhile.
    wait_for(lambda: verifier.decode(token) and verifier.last_error, 5, "vanished noticed")
    assert "cannot stat" in (verifier.last_error or "")
    status = verifier.status()
    assert status.kids == ("e1",) and status.loaded_at == loaded_at
    assert status.last_error_at is not None

    path.write_text('{"keys": [{"kty": "EC"')  # truncated: invalid
    assert verifier.refresh() is False
    assert "invalid keyset" in (verifier.last_error or "")
    parses = verifier.status().parses
    assert verifier.refresh() is False and verifier.refresh() is False
    assert verifier.status().parses == parses  # the same broken file is not parsed again
    assert verifier.decode(token)["sub"] == "alice"

    write_jwks(path, keys["o1"])  # valid, but nothing this verifier may use
    assert verifier.refresh() is False
    assert "no usable key" in (verifier.last_error or "")
    assert verifier.decode(token)["sub"] == "alice"

    write_jwks(path, keys["e1"], keys["e2"])
    assert verifier.refresh() is True
    assert verifier.last_error is None and verifier.status().last_error_at is None
    assert set(verifier.kids) == {"e1", "e2"} and verifier.loaded_at > loaded_at
    warnings = [r.getMessage() for r in caplog.records if r.name == "keysetd.verifier"]
    assert len(warnings) == 3, warnings  # one per new error, not one per check
    assert all("keeping the keyset loaded before" in message for message in warnings)


def test_threads_decode_while_the_file_rotates(
    tmp_path: Path, keys: dict[str, dict[str, Any]]
) -> None:
    path = tmp_path / "jwks.json"
    stable = keys["e1"]
    pool = [jwk("ES256", f"rot{i}") for i in range(4)]
    write_jwks(path, stable, pool[0])
    verifier = Verifier(path, ["ES256"], check_interval=0.001)
    token = sign(stable)
    stop = threading.Event()
    failures: list[str] = []
    counts = [0] * 8

    def reader(index: int) -> None:
        while not stop.is_set():
            try:
                assert verifier.decode(token)["sub"] == "alice"
                counts[index] += 1
            except Exception as exc:  # every failure is a finding
                failures.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        for i in range(1, 201):
            new, old = pool[i % 4], pool[(i - 1) % 4]
            write_jwks(path, stable, new)
            wait_for(
                lambda n=new["kid"], o=old["kid"]: n in verifier.kids and o not in verifier.kids,
                10,
                f"rotation {i}",
            )
            assert verifier.decode(sign(new))["sub"] == "alice"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert failures == []
    assert all(count > 0 for count in counts), counts
    status = verifier.status()
    assert status.parses >= 201 and status.last_error is None


# -- asyncio ----------------------------------------------------------------------------------


def test_async_decode_keeps_file_io_off_the_event_loop(
    tmp_path: Path, keys: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"])
    parse_threads: list[int] = []
    real_decode = formats.decode

    def recording_decode(*args: Any, **kwargs: Any) -> Any:
        parse_threads.append(threading.get_ident())
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(formats, "decode", recording_decode)

    async def main() -> int:
        verifier = await asyncio.to_thread(Verifier, path, ["ES256", "EdDSA"], 60.0)
        claims = await asyncio.gather(*(verifier.adecode(sign(keys["e1"])) for _ in range(20)))
        assert {c["sub"] for c in claims} == {"alice"}
        write_jwks(path, keys["e1"], keys["o1"])
        # An unknown kid awaits its re-check in a worker thread.
        assert (await verifier.adecode(sign(keys["o1"])))["sub"] == "alice"
        with pytest.raises(UnknownKidError):
            await verifier.adecode(sign(keys["e2"]))

        # The periodic check runs in the background; decoding never waits for it.
        fast = await asyncio.to_thread(Verifier, path, ["ES256", "EdDSA"], 0.02)
        write_jwks(path, keys["o1"])
        deadline = time.monotonic() + 5
        token = sign(keys["e1"])
        while True:
            try:
                await fast.adecode(token)
            except UnknownKidError:
                break
            assert time.monotonic() < deadline, "e1's retirement never noticed"
            await asyncio.sleep(0.005)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(parse_threads) >= 4
    assert loop_thread not in parse_threads


# -- the README ---------------------------------------------------------------------------------


def readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Verifier library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def readme_namespace(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The README's first snippet run against a real jwks file: it defines ``verifier``."""
    path = tmp_path / "jwks.json"
    write_jwks(path, keys["e1"], keys["o1"])
    snippets = readme_snippets()
    assert len(snippets) == 3, "usage, WSGI and ASGI"
    token = sign(keys["e1"], {"aud": "api", "iss": "https://sso.example.com"})
    namespace: dict[str, Any] = {"token": token}
    exec(snippets[0].replace("/run/keysetd/jwks.json", str(path)), namespace)
    assert namespace["claims"]["sub"] == "alice"
    namespace.update(path=path, keys=keys, snippets=snippets)
    yield namespace


def test_readme_wsgi_middleware(readme_namespace: dict[str, Any]) -> None:
    ns = readme_namespace
    exec(ns["snippets"][1], ns)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = json.dumps(environ["jwt.claims"]).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    server = make_server(
        "127.0.0.1",
        0,
        ns["JWTMiddleware"](app, ns["verifier"], audience="api"),
        server_class=WSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    def get(authorization: str | None) -> tuple[int, bytes, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        try:
            headers = {"Authorization": authorization} if authorization else {}
            conn.request("GET", "/", headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("WWW-Authenticate")
        finally:
            conn.close()

    try:
        good = sign(ns["keys"]["e1"], {"aud": "api"})
        status, body, _ = get(f"Bearer {good}")
        assert status == 200 and json.loads(body)["sub"] == "alice"
        status, _, challenge = get(None)
        assert status == 401 and challenge == 'Bearer error="invalid_token"'
        assert get(f"Bearer {sign(ns['keys']['e1'], {'aud': 'other'})}")[0] == 401
        assert get(f"Bearer {sign(ns['keys']['e2'], {'aud': 'api'})}")[0] == 401  # unknown kid
        write_jwks(ns["path"], ns["keys"]["e1"], ns["keys"]["e2"])  # rotation: e2 published
        rotated = f"Bearer {sign(ns['keys']['e2'], {'aud': 'api'})}"
        # An unknown kid re-checks at most every max(check_interval / 10, 10 ms).
        wait_for(lambda: get(rotated)[0] == 200, 5, "e2 accepted")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_readme_asgi_middleware(readme_namespace: dict[str, Any]) -> None:
    ns = readme_namespace
    exec(ns["snippets"][2], ns)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = json.dumps(scope["jwt.claims"]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    middleware = ns["ASGIJWTMiddleware"](app, ns["verifier"], audience="api")

    async def request(authorization: str | None) -> tuple[int, bytes, list[Any]]:
        headers = [(b"authorization", authorization.encode())] if authorization else []
        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await middleware(scope, receive, send)
        return sent[0]["status"], sent[1]["body"], sent[0]["headers"]

    async def main() -> None:
        good = sign(ns["keys"]["e1"], {"aud": "api"})
        status, body, _ = await request(f"Bearer {good}")
        assert status == 200 and json.loads(body)["sub"] == "alice"
        status, _, headers = await request("Basic dXNlcjpwYXNz")
        assert status == 401 and headers == [(b"www-authenticate", b'Bearer error="invalid_token"')]
        write_jwks(ns["path"], ns["keys"]["e1"], ns["keys"]["o1"], ns["keys"]["e2"])
        rotated = f"Bearer {sign(ns['keys']['e2'], {'aud': 'api'})}"
        deadline = time.monotonic() + 5
        while (await request(rotated))[0] != 200:
            assert time.monotonic() < deadline, "e2 never accepted"
            await asyncio.sleep(0.01)

    asyncio.run(main())
