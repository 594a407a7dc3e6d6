"""Identity providers nobody here wrote, against a real keysetd: remote JWKS and recorded documents.

- oidc-provider (npm), started by tests/interop/idp_oidc_provider.mjs on a free loopback
  port with its own generated keys (RS256, ES256, Ed25519) and, as asked, keys keysetd
  cannot use (Ed448, 1024-bit RSA, an RSA-OAEP encryption key);
- oauth2-mock-server (npm), started by tests/interop/idp_oauth2_mock.mjs: it generates
  keys, serves its JWKS and signs tokens, which must verify against keysetd's output;
- a Keycloak certs document and AD FS keys (tests/vectors/idp/, recorded in the shape
  they publish) through the file, command and env sources and ``keysetd validate``;
- keysetd's jwks output (x5c kept) loaded by jwcrypto and authlib.

Every node process is stopped by its fixture's finalizer; waits are conditions with deadlines.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import shutil
import subprocess
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from keysetd.errors import InvalidKeyset
from keysetd.validate import check, check_report
from keysetd.verifier import Verifier
from tests.conftest import KEYSETD, Env, wait_for
from tests.keys import jwk
from tests.servers import free_port, http_server, stop

with warnings.catch_warnings():  # authlib 1.x says authlib.jose moves to joserfc (2.0)
    import authlib.deprecate  # installs its own "always" filter first: ours goes above it

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.jose import JsonWebKey
    from authlib.jose import jwt as authlib_jwt

INTEROP = Path(__file__).parent / "interop"
IDP = Path(__file__).parent / "vectors" / "idp"
KEYCLOAK = IDP / "keycloak-certs.json"
ADFS = IDP / "adfs-keys.json"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (INTEROP / "node_modules" / "oidc-provider").is_dir(),
    reason="node and tests/interop/node_modules (make test runs npm ci) are needed",
)


# --- node processes --------------------------------------------------------------------------


def _stop_node(proc: subprocess.Popen[bytes]) -> None:
    stop(proc)
    if proc.stdout is not None:
        proc.stdout.close()


def _start_node(script: str, *args: str, log: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """Start ``node script args`` in tests/interop; return it and its first stdout line (JSON)."""
    node = shutil.which("node")
    assert node is not None
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [node, script, *args], cwd=INTEROP, stdout=subprocess.PIPE, stderr=err
        )
    lines: queue.Queue[bytes] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=30)
    except queue.Empty:
        _stop_node(proc)
        raise AssertionError(f"{script} did not start within 30 s: {log.read_text()}") from None
    if not line:
        _stop_node(proc)
        raise AssertionError(f"{script} exited: {log.read_text()}")
    return proc, json.loads(line)


Provider = Callable[..., dict[str, Any]]


@pytest.fixture
def oidc_provider(tmp_path: Path) -> Iterator[Provider]:
    """Start oidc-provider with the given flags (see the script); stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> dict[str, Any]:
        proc, info = _start_node(
            "idp_oidc_provider.mjs", *flags, log=tmp_path / f"oidc-provider-{len(procs)}.log"
        )
        procs.append(proc)
        return dict(info)

    yield start
    for proc in procs:
        _stop_node(proc)


@pytest.fixture
def oauth2_mock(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc, info = _start_node("idp_oauth2_mock.mjs", log=tmp_path / "oauth2-mock-server.log")
    try:
        yield dict(info)
    finally:
        _stop_node(proc)


# --- helpers ---------------------------------------------------------------------------------


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


def published(env: Env) -> dict[str, dict[str, Any]]:
    return {key["kid"]: key for key in json.loads(env.jwks.read_bytes())["keys"]}


def fetched(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return {key["kid"]: key for key in json.loads(response.read())["keys"]}


def jwks_only(env: Env, source: dict[str, Any], **extra: Any) -> Path:
    return env.config(source=source, outputs=[{"type": "jwks", "path": str(env.jwks)}], **extra)


def assert_no_material(text: str, keys: dict[str, dict[str, Any]]) -> None:
    for key in keys.values():
        for member in ("n", "x", "y", "d"):
            value = key.get(member)
            if isinstance(value, str):
                assert value[:16] not in text, f"{member} of {key['kid']} leaked"


# --- oidc-provider ---------------------------------------------------------------------------


def test_oidc_provider_usable_keys_published_the_rest_skipped(
    env: Env, oidc_provider: Provider
) -> None:
    provider = oidc_provider("--usable", "--ed448", "--rsa1024", "--enc")
    served = fetched(provider["jwks_uri"])
    assert set(served) == set(provider["kids"])  # the provider publishes all six
    assert served["op-ed25519"]["crv"] == "Ed25519"
    config = jwks_only(env, {"type": "jwks_url", "url": provider["jwks_uri"], "timeout": "5s"})

    result = env.keysetd("once", "--config", str(config))

    assert result.returncode == 0, result.stderr
    out = published(env)
    assert set(out) == {"op-rs256", "op-es256", "op-ed25519"}
    assert out["op-ed25519"]["alg"] == "EdDSA" and out["op-ed25519"]["crv"] == "Ed25519"
    skipped = {e["kid"]: e for e in events(result.stderr, "jwks_key_skipped")}
    assert {kid: e["rule"] for kid, e in skipped.items()} == {
        "op-ed448": "alg-mismatch",
        "op-rsa1024": "rsa-too-small",
        "op-enc": "unsupported-use",
    }
    assert all(e["level"] == "warning" for e in skipped.values())
    assert "1024-bit" in skipped["op-rsa1024"]["reason"]
    assert_no_material(result.stderr, served)


def test_oidc_provider_skipped_keys_are_counted_in_metrics(
    env: Env, oidc_provider: Provider
) -> None:
    provider = oidc_provider("--usable", "--ed448", "--rsa1024", "--enc")
    port = free_port()
    jwks_only(
        env,
        {"type": "jwks_url", "url": provider["jwks_uri"], "timeout": "5s"},
        server={"listen": f"127.0.0.1:{port}"},
    )
    env.start()
    wait_for(env.jwks.exists, timeout=20, what="the jwks output")
    assert set(published(env)) == {"op-rs256", "op-es256", "op-ed25519"}

    def metrics() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text: str = r.read().decode()
        except OSError:
            return None
        return text if "keysetd_keys_skipped_total{" in text else None

    text = wait_for(metrics, timeout=20, what="keysetd_keys_skipped_total")
    for rule in ("alg-mismatch", "rsa-too-small", "unsupported-use"):
        assert f'keysetd_keys_skipped_total{{rule="{rule}"}} 1.0' in text, text
    assert_no_material(text, fetched(provider["jwks_uri"]))
    assert events(env.log(), "jwks_key_skipped")


def test_oidc_provider_with_no_usable_key_is_refused_and_outputs_kept(
    env: Env, oidc_provider: Provider
) -> None:
    good = oidc_provider("--usable", "--ed448")
    config = jwks_only(env, {"type": "jwks_url", "url": good["jwks_uri"], "timeout": "5s"})
    assert env.keysetd("once", "--config", str(config)).returncode == 0
    before = env.jwks.read_bytes()

    bad = oidc_provider("--ed448", "--rsa1024", "--enc")
    config = jwks_only(env, {"type": "jwks_url", "url": bad["jwks_uri"], "timeout": "5s"})
    result = env.keysetd("once", "--config", str(config))

    assert result.returncode == 1
    [failure] = events(result.stderr, "cycle_failed")
    assert failure["stage"] == "validate"
    for expected in (
        "empty-keyset: no usable signing key remains: 3 key(s) skipped",
        "kid 'op-ed448': alg-mismatch",
        "kid 'op-rsa1024': rsa-too-small",
        "kid 'op-enc': unsupported-use",
    ):
        assert expected in failure["error"], failure["error"]
    assert env.jwks.read_bytes() == before  # the last good set stays published
    assert_no_material(result.stderr, fetched(bad["jwks_uri"]))


# --- oauth2-mock-server ----------------------------------------------------------------------


def test_oauth2_mock_server_tokens_verify_against_keysetd_output(
    env: Env, oauth2_mock: dict[str, Any]
) -> None:
    config = jwks_only(env, {"type": "jwks_url", "url": oauth2_mock["jwks_uri"], "timeout": "5s"})
    result = env.keysetd("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert set(published(env)) == {"mock-rs256", "mock-es256", "mock-ed25519"}
    [skip] = events(result.stderr, "jwks_key_skipped")
    assert (skip["kid"], skip["rule"]) == ("mock-ed448", "alg-mismatch")

    tokens: dict[str, str] = oauth2_mock["tokens"]
    issuer = oauth2_mock["issuer"]
    verifier = Verifier(env.jwks, algorithms=["RS256", "ES256", "EdDSA"], check_interval=0.1)
    pyjwt_keys = jwt.PyJWKSet.from_json(env.jwks.read_text())
    for kid in ("mock-rs256", "mock-es256", "mock-ed25519"):
        claims = verifier.decode(tokens[kid], audience="api", issuer=issuer)
        assert claims["sub"] == "alice", kid
        key = next(k for k in pyjwt_keys.keys if k.key_id == kid)
        alg = jwt.get_unverified_header(tokens[kid])["alg"]
        assert jwt.decode(tokens[kid], key.key, algorithms=[alg], audience="api")["sub"] == "alice"
    with pytest.raises(jwt.InvalidTokenError):
        verifier.decode(tokens["mock-ed448"], audience="api", issuer=issuer)

    # The server's own token endpoint signs with its next key in turn.
    request = urllib.request.Request(
        f"{issuer}/token",
        data=b"grant_type=client_credentials&scope=read",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    for _ in range(4):
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["access_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        if kid == "mock-ed448":
            with pytest.raises(jwt.InvalidTokenError):
                verifier.decode(token, issuer=issuer, options={"verify_aud": False})
        else:
            claims = verifier.decode(token, issuer=issuer, options={"verify_aud": False})
            assert claims["scope"] == "read"


# --- Keycloak certs, recorded ----------------------------------------------------------------


def _keycloak() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the RS256 signing key, the RSA-OAEP encryption key) of the recorded document."""
    keys = json.loads(KEYCLOAK.read_bytes())["keys"]
    signing = next(k for k in keys if k["use"] == "sig")
    enc = next(k for k in keys if k["use"] == "enc")
    return signing, enc


def _realm_token(claims: dict[str, Any], kid: str) -> str:
    pem = (IDP / "keycloak-signing-key.pem").read_bytes()
    return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


KEYCLOAK_SOURCES: dict[str, Callable[[Env], tuple[dict[str, Any], dict[str, str]]]] = {
    "file": lambda env: ({"type": "file", "path": str(KEYCLOAK)}, {}),
    "command": lambda env: ({"type": "command", "argv": ["/bin/cat", str(KEYCLOAK)]}, {}),
    "env": lambda env: (
        {"type": "env", "var": "IDP_CERTS"},
        {"IDP_CERTS": KEYCLOAK.read_text()},
    ),
}


@pytest.mark.parametrize("kind", sorted(KEYCLOAK_SOURCES))
def test_keycloak_certs_through_every_local_source(env: Env, kind: str) -> None:
    signing, enc = _keycloak()
    source, environment = KEYCLOAK_SOURCES[kind](env)
    config = jwks_only(env, source)

    result = env.keysetd("once", "--config", str(config), env=environment)

    assert result.returncode == 0, result.stderr
    out = published(env)
    assert list(out) == [signing["kid"]]
    kept = out[signing["kid"]]
    for member in ("x5c", "x5t", "x5t#S256", "n", "e"):
        assert kept[member] == signing[member], member
    [skip] = events(result.stderr, "jwks_key_skipped")
    assert (skip["kid"], skip["rule"]) == (enc["kid"], "unsupported-use")
    assert "use 'enc'" in skip["reason"]
    assert_no_material(result.stderr, {"sig": signing, "enc": enc})

    token = _realm_token({"sub": "alice", "aud": "account"}, signing["kid"])
    verifier = Verifier(env.jwks, algorithms=["RS256"], check_interval=0.1)
    assert verifier.decode(token, audience="account")["sub"] == "alice"


def test_keycloak_certs_pass_keysetd_validate() -> None:
    signing, enc = _keycloak()
    result = subprocess.run(
        [*KEYSETD, "validate", str(KEYCLOAK)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid keyset, 1 key(s)" in result.stdout
    listed = [line for line in result.stdout.splitlines() if enc["kid"] in line]
    assert signing["kid"] in result.stdout and result.stderr == ""
    assert listed == [
        f"  skipped kid {enc['kid']!r}: unsupported-use: use 'enc': not a signature key"
    ]


def test_keycloak_certs_with_a_forged_certificate_are_refused_in_a_file(env: Env) -> None:
    signing, enc = _keycloak()
    forged = {**signing, "x5c": enc["x5c"]}  # the enc key's certificate on the signing key
    env.write_source(json.dumps({"keys": [forged, enc]}).encode())
    result = env.keysetd(
        "once", "--config", str(jwks_only(env, {"type": "file", "path": str(env.source)}))
    )
    assert result.returncode == 1
    assert f"kid {signing['kid']!r}: x5c-mismatch" in result.stderr
    assert not env.jwks.exists()


def test_jwks_output_with_x5c_loads_in_jwcrypto_and_authlib(env: Env) -> None:
    signing, _ = _keycloak()
    config = jwks_only(env, {"type": "file", "path": str(KEYCLOAK)})
    assert env.keysetd("once", "--config", str(config)).returncode == 0
    text = env.jwks.read_text()
    token = _realm_token({"sub": "alice", "aud": "account"}, signing["kid"])

    keyset = jwcrypto_jwk.JWKSet.from_json(text)
    loaded = keyset.get_key(signing["kid"])
    assert loaded is not None and loaded.get("x5c") == signing["x5c"]
    verified = jwcrypto_jwt.JWT(jwt=token, key=keyset, algs=["RS256"])
    assert json.loads(verified.claims)["sub"] == "alice"

    authlib_keys = JsonWebKey.import_key_set(json.loads(text))
    authlib_key = authlib_keys.find_by_kid(signing["kid"])
    assert authlib_key.as_dict()["x5t#S256"] == signing["x5t#S256"]
    claims = authlib_jwt.decode(token, authlib_keys)
    claims.validate()
    assert claims["sub"] == "alice"


def test_adfs_token_naming_its_key_by_x5t_only_is_matched(env: Env) -> None:
    """AD FS tokens carry x5t (often no kid): the kept x5t is the only way to match them."""
    [adfs] = json.loads(ADFS.read_bytes())["keys"]
    config = jwks_only(env, {"type": "file", "path": str(ADFS)})
    assert env.keysetd("once", "--config", str(config)).returncode == 0
    pem = (IDP / "adfs-signing-key.pem").read_bytes()
    token = jwt.encode({"sub": "alice", "aud": "api"}, pem, "RS256", headers={"x5t": adfs["x5t"]})
    header = jwt.get_unverified_header(token)
    assert "kid" not in header

    out = json.loads(env.jwks.read_bytes())["keys"]
    [match] = [key for key in out if key.get("x5t") == header["x5t"]]
    der = base64.b64decode(match["x5c"][0])
    sha1 = hashlib.sha1(der).digest()
    assert match["x5t"] == base64.urlsafe_b64encode(sha1).rstrip(b"=").decode()
    public = jwt.PyJWK(match).key
    assert jwt.decode(token, public, algorithms=["RS256"], audience="api")["sub"] == "alice"
    spki = serialization.load_pem_private_key(pem, None).public_key()
    assert public.public_numbers() == spki.public_numbers()  # type: ignore[union-attr]


# --- alg "Ed25519" (RFC 9864) and the private-key rule ----------------------------------------


def test_fully_specified_ed25519_alg_is_accepted_from_a_jwks_url(env: Env) -> None:
    ed = {**jwk("EdDSA", "ed-new", private=False), "alg": "Ed25519"}
    es = jwk("ES256", "es-1", private=False)
    with http_server() as server:
        server.reply.body = json.dumps({"keys": [ed, es]}).encode()
        config = jwks_only(env, {"type": "jwks_url", "url": server.url("/jwks"), "timeout": "5s"})
        result = env.keysetd("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert published(env)["ed-new"]["alg"] == "Ed25519"
    assert events(result.stderr, "jwks_key_skipped") == []


def test_unusable_public_key_in_a_file_is_skipped_but_a_private_one_refused() -> None:
    small = jwk("RS256", "rsa-1024", bits=1024)
    good = jwk("ES256", "es-1")
    public_small = {k: v for k, v in small.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}

    keyset, skipped = check_report(json.dumps({"keys": [public_small, good]}).encode())
    assert keyset.kids == ("es-1",) and keyset.active_kid == "es-1"
    assert [(p.kid, p.rule) for p in skipped] == [("rsa-1024", "rsa-too-small")]

    with pytest.raises(InvalidKeyset) as caught:
        check(json.dumps({"keys": [small, good], "active_kid": "es-1"}).encode())
    assert caught.value.rules == {"rsa-too-small"}
    assert small["d"][:16] not in str(caught.value)
