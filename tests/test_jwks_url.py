"""The jwks_url source against a real HTTP(S) server on loopback serving Keycloak-shaped certs."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keysetd.errors import InvalidKeyset, SourceError
from keysetd.registry import load
from keysetd.sources.jwks_url import JwksUrlSource, JwksUrlSourceConfig
from keysetd.tables import TableError
from keysetd.validate import check, check_report
from tests.conftest import Env
from tests.keys import b64u, jwk
from tests.servers import (
    Events,
    HttpServer,
    Reply,
    Seen,
    certificate,
    free_port,
    http_server,
    keysetd_events,
    loopback_tls,
)

CERTS_PATH = "/realms/app/protocol/openid-connect/certs"

# --- keys and certificates -------------------------------------------------------------------


def _rsa_private(key: dict[str, Any]) -> rsa.RSAPrivateKey:
    def num(name: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(key[name] + "=" * (-len(key[name]) % 4)))

    public = rsa.RSAPublicNumbers(num("e"), num("n"))
    return rsa.RSAPrivateNumbers(
        num("p"), num("q"), num("d"), num("dp"), num("dq"), num("qi"), public
    ).private_key()


def _with_x5c(key: dict[str, Any], cert: x509.Certificate) -> dict[str, Any]:
    """The key as Keycloak publishes it: x5c (standard base64 DER), x5t, x5t#S256."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        **key,
        "x5c": [base64.b64encode(der).decode()],
        "x5t": b64u(hashlib.sha1(der).digest()),
        "x5t#S256": b64u(hashlib.sha256(der).digest()),
    }


def _public(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


@dataclass
class Realm:
    """One Keycloak realm's keys: an RS256 signing key with its private half, an enc key, ES256."""

    signing: dict[str, Any]
    signing_key: rsa.RSAPrivateKey
    next_signing: dict[str, Any]
    next_signing_key: rsa.RSAPrivateKey
    enc: dict[str, Any]
    es: dict[str, Any]

    def certs(self, *, rotated: bool = False) -> bytes:
        """The certs document; ``rotated`` swaps the signing key for the next one."""
        key, private = (
            (self.next_signing, self.next_signing_key)
            if rotated
            else (self.signing, self.signing_key)
        )
        cert = certificate("app", private.public_key(), private)
        keys = [_with_x5c(_public(key), cert), self.enc, self.es]
        return json.dumps({"keys": keys}, indent=2).encode()


@pytest.fixture(scope="module")
def realm() -> Realm:
    signing = jwk("RS256", "rs-sig")
    next_signing = jwk("RS256", "rs-next")
    enc = {**jwk("RS256", "rs-enc", private=False), "alg": "RSA-OAEP", "use": "enc"}
    return Realm(
        signing=signing,
        signing_key=_rsa_private(signing),
        next_signing=next_signing,
        next_signing_key=_rsa_private(next_signing),
        enc=enc,
        es=jwk("ES256", "es-1", private=False),
    )


# --- the server ------------------------------------------------------------------------------


@dataclass
class Served:
    """The provider: a loopback HttpServer answering ``reply`` at CERTS_PATH."""

    server: HttpServer

    @property
    def reply(self) -> Reply:
        return self.server.reply

    @property
    def requests(self) -> list[Seen]:
        return self.server.requests

    @property
    def url(self) -> str:
        return self.server.url(CERTS_PATH)

    def etag(self, body: bytes, etag: str) -> None:
        """Serve ``body`` with ``etag``; a request that sends ``etag`` back gets a 304."""

        def respond(seen: Seen) -> Reply:
            if seen.headers.get("If-None-Match") == etag:
                return Reply(304, headers={"ETag": etag})
            return Reply(self.reply.status, body, {**self.reply.headers, "ETag": etag})

        self.server.respond = respond


def _serve(context: ssl.SSLContext | None = None) -> Iterator[Served]:
    with http_server(context) as server:
        yield Served(server)


@pytest.fixture
def served() -> Iterator[Served]:
    yield from _serve()


@dataclass
class Tls:
    served: Served
    ca_file: Path


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Tls]:
    made = loopback_tls(tmp_path)
    for served in _serve(made.context):
        yield Tls(served, made.ca_file)


def source(url: str, **options: Any) -> JwksUrlSource:
    return JwksUrlSource(JwksUrlSourceConfig(type="jwks_url", url=url, **options))


@pytest.fixture
def events() -> Iterator[Events]:
    with keysetd_events() as seen:
        yield seen


def kids(data: bytes) -> list[str]:
    return [key["kid"] for key in json.loads(data)["keys"]]


def usable(data: bytes) -> list[str]:
    """The kids validation keeps (keys keysetd cannot use are skipped there)."""
    return list(check(data, "jwks", declared_public=True).kids)


# --- config ----------------------------------------------------------------------------------


def test_registered_and_named_without_query() -> None:
    assert load("keysetd.sources", "jwks_url") is JwksUrlSource
    assert JwksUrlSource.public_only
    src = source("https://sso.example.com:8443/realms/app/certs?token=s3cret#x")
    assert src.describe() == "jwks_url:https://sso.example.com:8443/realms/app/certs"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://sso.example.com/certs"}, "https://"),
        ({"url": "https://user:pw@sso.example.com/certs"}, "credentials"),
        ({"url": "http://127.0.0.1/certs", "ca_file": "/etc/ca.pem"}, "ca_file needs"),
        ({"url": "https://sso.example.com/", "headers": {"Host": "x"}}, "set by keysetd"),
        ({"url": "https://sso.example.com/", "format": "rgs"}, "jwks format"),
        ({"url": "https://sso.example.com/", "timeout": 0}, "greater than 0"),
    ],
)
def test_config_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TableError, match=message):
        JwksUrlSourceConfig.parse({"type": "jwks_url", **options})


def test_header_values_stay_out_of_config_errors() -> None:
    with pytest.raises(TableError) as info:
        JwksUrlSourceConfig.parse(
            {
                "type": "jwks_url",
                "url": "https://sso.example.com/",
                "headers": {"Authorization": "Bearer tok3n\nX: y"},
            }
        )
    assert "tok3n" not in str(info.value)


@pytest.mark.parametrize(
    "value", ["Bearer tok3n\u2019x", "Bearer tok3n\x01", "Bearer tok3n\u00e9"], ids=str.__len__
)
def test_header_values_must_be_visible_ascii(value: str) -> None:
    """http.client encodes values as latin-1: U+2019 once crashed every fetch."""
    with pytest.raises(TableError, match="visible ASCII") as info:
        JwksUrlSourceConfig.parse(
            {"type": "jwks_url", "url": "https://sso.example.com/", "headers": {"X": value}}
        )
    assert "tok3n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://" + "a" * 64 + ".example.com/certs", "invalid host name"),
        ("https://sso..example.com/certs", "invalid host name"),
        ("https://sso.example.com/certs?x=a\x01b", "control characters"),
        ("https://sso.example.com/c\u00e9rts", "ASCII outside the host name"),
    ],
)
def test_urls_the_resolver_or_http_cannot_take_are_refused(url: str, message: str) -> None:
    with pytest.raises(TableError, match=message):
        JwksUrlSourceConfig.parse({"type": "jwks_url", "url": url})


def test_keysetd_check_config_refuses_a_non_ascii_header_without_echoing_it(env: Env) -> None:
    config = env.config(
        source={
            "type": "jwks_url",
            "url": "https://sso.example.com/certs",
            "headers": {"Authorization": "Bearer tok3n\u2019"},
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    result = env.keysetd("check-config", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "visible ASCII" in result.stderr
    assert "tok3n" not in result.stdout + result.stderr


def test_plain_http_warns_unless_loopback(events: Events) -> None:
    source("http://127.0.0.1:1/certs")
    source("http://localhost:1/certs")
    assert events.named("jwks_url_plain_http") == []
    source("http://sso.example.com/certs")
    [warning] = events.named("jwks_url_plain_http")
    assert warning["source"] == "jwks_url:http://sso.example.com/certs"


# --- filtering and x5c -----------------------------------------------------------------------


def test_keycloak_certs_filtered(served: Served, realm: Realm, events: Events) -> None:
    unknown = {"kty": "XYZ", "kid": "future-1", "use": "sig", "v": "AQAB"}
    x25519 = {"kty": "OKP", "crv": "X25519", "kid": "ecdh-1", "x": b64u(bytes(32))}
    ops = {**jwk("ES256", "wrap-1", private=False), "key_ops": ["wrapKey"]}
    del ops["use"]
    no_use = {k: v for k, v in jwk("EdDSA", "ed-1", private=False).items() if k != "use"}
    doc = json.loads(realm.certs())
    doc["keys"] += [unknown, x25519, ops, no_use]
    served.reply.body = json.dumps(doc).encode()
    src = source(served.url, timeout=5)

    snapshot = src.fetch()

    # The source hands the whole document on (canonical); validation skips what it cannot use.
    assert snapshot.format == "jwks"
    assert snapshot.origin == f"jwks_url:{served.url}"
    assert sorted(kids(snapshot.data)) == sorted(k["kid"] for k in doc["keys"])
    keyset, skipped = check_report(snapshot.data, "jwks", where="idp", declared_public=True)
    assert sorted(keyset.kids) == ["ed-1", "es-1", "rs-sig"]
    signing = keyset.get("rs-sig")
    assert signing is not None and signing.x5c == tuple(doc["keys"][0]["x5c"])
    assert {p.kid: p.rule for p in skipped} == {
        "rs-enc": "unsupported-use",
        "future-1": "unknown-kty",
        "ecdh-1": "unsupported-use",
        "wrap-1": "unsupported-use",
    }
    warned = {f["kid"]: f for f in events.named("jwks_key_skipped")}
    assert set(warned) == {"rs-enc", "future-1", "ecdh-1", "wrap-1"}
    assert "use 'enc'" in warned["rs-enc"]["reason"]
    assert "kty 'XYZ'" in warned["future-1"]["reason"]
    assert warned["rs-enc"]["rule"] == "unsupported-use" and warned["rs-enc"]["source"] == "idp"
    request = served.requests[0]
    assert request.headers["accept"] == "application/json"
    assert request.path == CERTS_PATH

    # The same document again: no request is cached (no max-age), no second warning.
    assert src.fetch().data == snapshot.data
    assert len(served.requests) == 2
    check_report(snapshot.data, "jwks", where="idp", declared_public=True)
    assert len(events.named("jwks_key_skipped")) == 4


def test_canonical_bytes_ignore_member_order(served: Served, realm: Realm) -> None:
    src = source(served.url)
    certs = realm.certs()
    served.reply.body = certs
    first = src.fetch().data
    doc = json.loads(certs)
    doc["keys"] = [dict(reversed(list(k.items()))) for k in doc["keys"]]
    served.reply.body = json.dumps(doc, separators=(",", ":")).encode()
    assert src.fetch().data == first


def test_oct_key_is_kept_for_validation_to_refuse(served: Served, realm: Realm) -> None:
    secret = jwk("HS256", "leaked")
    served.reply.body = json.dumps({"keys": [realm.es, secret]}).encode()
    data = source(served.url).fetch().data
    with pytest.raises(InvalidKeyset) as info:
        check(data, "jwks", declared_public=True)
    assert "private-in-public" in info.value.rules
    assert secret["k"] not in str(info.value)


def test_x5c_must_carry_the_key(served: Served, realm: Realm) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged = _with_x5c(realm.es, certificate("app", other.public_key(), other))
    served.reply.body = json.dumps({"keys": [realm.enc, forged]}).encode()
    with pytest.raises(InvalidKeyset, match=r"kid 'es-1': x5c-mismatch: the x5c\[0\] certificate"):
        usable(source(served.url).fetch().data)

    garbled = {**realm.es, "x5c": ["not base64 at all!"]}
    served.reply.body = json.dumps({"keys": [garbled]}).encode()
    with pytest.raises(InvalidKeyset, match="not a base64 DER certificate") as info:
        usable(source(served.url).fetch().data)
    assert realm.es["x"] not in str(info.value)


def test_garbage_is_returned_for_validation_to_name(served: Served) -> None:
    for body in (b"<html>Service Unavailable</html>", b'{"keys": {"k1": "x"}}', b"[]"):
        served.reply.body = body
        data = source(served.url).fetch().data
        assert data == body
        with pytest.raises(InvalidKeyset) as info:
            check(data, "jwks", declared_public=True)
        assert "malformed" in info.value.rules


def test_duplicate_members_are_left_for_validation(served: Served, realm: Realm) -> None:
    key = json.dumps(realm.es)
    body = ('{"keys": [' + key[:-1] + ', "kid": "other"}]}').encode()
    served.reply.body = body
    assert source(served.url).fetch().data == body


# --- caching ---------------------------------------------------------------------------------


def test_etag_304_returns_the_previous_snapshot(served: Served, realm: Realm) -> None:
    served.etag(realm.certs(), '"v1"')
    src = source(served.url)
    first = src.fetch()
    second = src.fetch()
    assert second.data == first.data
    assert [r.headers.get("if-none-match") for r in served.requests] == [None, '"v1"']

    served.etag(realm.certs(rotated=True), '"v2"')
    third = src.fetch()
    assert usable(third.data) == ["rs-next", "es-1"]
    assert served.requests[-1].headers["if-none-match"] == '"v1"'
    assert src.fetch().data == third.data
    assert served.requests[-1].headers["if-none-match"] == '"v2"'


def test_last_modified_is_sent_back(served: Served, realm: Realm) -> None:
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    served.reply.body = realm.certs()
    served.reply.headers = {"Last-Modified": stamp}
    src = source(served.url)
    src.fetch()
    src.fetch()
    assert served.requests[1].headers["if-modified-since"] == stamp


def test_304_without_a_previous_body_fails(served: Served) -> None:
    served.reply.status = 304
    with pytest.raises(SourceError, match="304"):
        source(served.url).fetch()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_max_age_skips_requests_within_half_the_refresh_interval(
    served: Served, realm: Realm
) -> None:
    b = served.reply
    b.body, b.headers = realm.certs(), {"Cache-Control": "public, max-age=300"}
    clock = Clock()
    config = JwksUrlSourceConfig(type="jwks_url", url=served.url, refresh_interval="60s")
    src = JwksUrlSource(config, clock=clock)
    first = src.fetch()
    for offset in (1.0, 10.0, 29.9):
        clock.now = 1000.0 + offset
        assert src.fetch() is first
    assert len(served.requests) == 1
    clock.now = 1030.0
    assert src.fetch().data == first.data
    assert len(served.requests) == 2

    # A short max-age (minus Age) wins over the interval.
    b.headers = {"Cache-Control": "max-age=10", "Age": "5"}
    clock.now = 2000.0
    src.fetch()
    clock.now = 2004.0
    src.fetch()
    assert len(served.requests) == 3
    clock.now = 2005.0
    src.fetch()
    assert len(served.requests) == 4


@pytest.mark.parametrize("directive", ["no-cache", "no-store, max-age=300", "private"])
def test_no_cache_means_every_fetch_asks(served: Served, realm: Realm, directive: str) -> None:
    served.reply.headers = {"Cache-Control": directive}
    served.etag(realm.certs(), '"e"')
    src = JwksUrlSource(JwksUrlSourceConfig(type="jwks_url", url=served.url), clock=Clock())
    src.fetch()
    src.fetch()
    assert len(served.requests) == 2
    # no-store: keysetd does not revalidate what it was told not to keep.
    expected = None if "no-store" in directive else '"e"'
    assert served.requests[1].headers.get("if-none-match") == expected


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "reason"), [(500, "Internal Server Error"), (403, "Forbidden")])
def test_http_errors_quote_a_short_redacted_body(served: Served, status: int, reason: str) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9" * 5
    served.reply.status = status
    served.reply.body = f"upstream failed, token {token} {'x ' * 500}".encode()
    with pytest.raises(SourceError) as info:
        source(served.url).fetch()
    message = info.value.reason
    assert message.startswith(f"HTTP {status} {reason}: upstream failed, token [redacted]")
    assert token not in message
    assert len(message) < 300
    assert info.value.source == f"jwks_url:{served.url}"


def test_redirects_are_not_followed(served: Served) -> None:
    served.reply.status = 302
    served.reply.headers = {"Location": "https://evil.example.net/certs"}
    with pytest.raises(SourceError, match=r"HTTP 302 redirect to evil\.example\.net not followed"):
        source(served.url).fetch()
    assert len(served.requests) == 1


def test_a_slow_server_times_out(served: Served) -> None:
    served.reply.delay = 10.0
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out after 0\.3s"):
        source(served.url, timeout="300ms").fetch()
    assert time.monotonic() - started < 2


def test_a_dripping_body_is_bounded_by_the_timeout(served: Served, realm: Realm) -> None:
    served.reply.body = realm.certs()
    served.reply.drip_body = 0.05
    started = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        source(served.url, timeout="400ms").fetch()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("part", ["head", "body"])
def test_an_answer_dripped_a_byte_per_half_second_fails_at_the_timeout(
    served: Served, realm: Realm, part: str
) -> None:
    """Each byte comes well within any idle timeout; only a total deadline ends the fetch."""
    served.reply.body = realm.certs()
    if part == "head":
        served.reply.drip_head = 0.5
    else:
        served.reply.drip_body = 0.5
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out after 1s"):
        source(served.url, timeout="1s").fetch()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1 + 2, elapsed  # the drip alone takes over a minute


def test_connection_refused() -> None:
    port = free_port()
    with pytest.raises(SourceError, match="Connection refused"):
        source(f"http://127.0.0.1:{port}/certs", timeout=2).fetch()


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_body(served: Served, content_length: bool) -> None:
    served.reply.body = b'{"keys": [' + b" " * 5000 + b"]}"
    served.reply.content_length = content_length
    with pytest.raises(SourceError, match=r"over max_bytes \(1000\)"):
        source(served.url, max_bytes=1000).fetch()


# --- TLS -------------------------------------------------------------------------------------


def test_tls_verified_against_ca_file(tls: Tls, realm: Realm) -> None:
    tls.served.reply.body = realm.certs()
    snapshot = source(tls.served.url, ca_file=tls.ca_file, timeout=5).fetch()
    assert usable(snapshot.data) == ["rs-sig", "es-1"]


def test_tls_without_ca_file_is_refused(tls: Tls, realm: Realm) -> None:
    tls.served.reply.body = realm.certs()
    with pytest.raises(SourceError, match="TLS verification failed"):
        source(tls.served.url, timeout=5).fetch()
    assert tls.served.requests == []


def test_unreadable_ca_file(tls: Tls, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot load ca_file"):
        source(tls.served.url, ca_file=tmp_path / "missing.pem").fetch()


# --- end to end ------------------------------------------------------------------------------


def _config(env: Env, url: str) -> Path:
    return env.config(
        source={"type": "jwks_url", "url": url, "timeout": "5s"},
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )


def test_keysetd_once_publishes_and_follows_rotation(
    env: Env, served: Served, realm: Realm
) -> None:
    served.reply.body = realm.certs()
    config = _config(env, served.url)

    first = env.keysetd("once", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "jwks_key_skipped" in first.stderr and "rs-enc" in first.stderr
    assert sorted(kids(env.jwks.read_bytes())) == ["es-1", "rs-sig"]

    # PyJWT verifies a token the realm signed, against what keysetd published.
    token = jwt.encode(
        {"sub": "alice", "aud": "api"},
        realm.signing_key,
        algorithm="RS256",
        headers={"kid": "rs-sig"},
    )
    published = jwt.PyJWKSet.from_json(env.jwks.read_text())
    key = next(k for k in published.keys if k.key_id == "rs-sig")
    assert jwt.decode(token, key.key, algorithms=["RS256"], audience="api")["sub"] == "alice"

    served.reply.body = realm.certs(rotated=True)
    second = env.keysetd("once", "--config", str(config))
    assert second.returncode == 0, second.stderr
    assert sorted(kids(env.jwks.read_bytes())) == ["es-1", "rs-next"]
    for secret in ("d", "p", "q"):
        assert realm.next_signing[secret] not in env.jwks.read_text()


def test_keysetd_once_fails_on_a_server_error(env: Env, served: Served) -> None:
    served.reply.status = 503
    result = env.keysetd("once", "--config", str(_config(env, served.url)))
    assert result.returncode == 1
    assert "HTTP 503" in result.stderr
    assert not env.jwks.exists()


def test_signer_output_with_a_jwks_url_source_is_a_config_error(env: Env) -> None:
    config = env.config(
        source={"type": "jwks_url", "url": "https://sso.example.com/realms/app/certs"}
    )
    result = env.keysetd("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "public keys only" in result.stderr
