"""The aws_kms plugin against a real moto_server on loopback: JWKs from KMS, aliases, faults."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from keysetd_aws_kms.source import AwsKmsSource, AwsKmsSourceConfig

from keysetd import registry as plugin
from keysetd.config import load_config
from keysetd.errors import ConfigError, SourceError
from tests.conftest import KEYSETD, Env, wait_for
from tests.keys import b64u
from tests.servers import binary, free_port, stop

REGION = "us-east-1"
PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "keysetd-aws-kms"
#: Fake credentials for moto, and nothing of the host's AWS setup.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextmanager
def running_moto(log: Path) -> Iterator[str]:
    """A real ``moto_server`` (KMS endpoint) on a free loopback port, for the block: its URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary("moto_server", "moto[server]"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _answers(url), 20, "moto_server")
        assert proc.poll() is None, log.read_text(errors="replace")
        yield url
    finally:
        stop(proc)


def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENV and none of AWS_UNSET, for the test and the keysetd processes it starts."""
    for name in AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The session's moto_server (tests/conftest.py)."""
    return moto_server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws(monkeypatch)


@pytest.fixture
def kms(moto_url: str) -> Iterator[Any]:
    client = boto3.client("kms", region_name=REGION, endpoint_url=moto_url)
    yield client
    client.close()


def new_key(kms: Any, spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY") -> dict[str, Any]:
    meta: dict[str, Any] = kms.create_key(KeyUsage=usage, KeySpec=spec)["KeyMetadata"]
    return meta


def new_alias(kms: Any, key_id: str) -> str:
    name = f"alias/jwt-{uuid.uuid4().hex[:12]}"
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    return name


def source(moto_url: str, key_ids: list[str], **extra: Any) -> AwsKmsSource:
    settings: dict[str, Any] = {
        "type": "aws_kms",
        "region": REGION,
        "endpoint_url": moto_url,
        "timeout": 5,
        "key_ids": key_ids,
        **extra,
    }
    return AwsKmsSource(AwsKmsSourceConfig(**settings))


def fetch(src: AwsKmsSource) -> dict[str, Any]:
    try:
        snapshot = src.fetch()
    finally:
        src.close()
    assert snapshot.format == "jwks" and snapshot.origin == f"aws_kms:{REGION}"
    doc: dict[str, Any] = json.loads(snapshot.data)
    return doc


def fetch_error(src: AwsKmsSource) -> SourceError:
    try:
        with pytest.raises(SourceError) as caught:
            src.fetch()
    finally:
        src.close()
    assert caught.value.source == f"aws_kms:{REGION}"
    return caught.value


def b64u_int(text: str) -> int:
    return int.from_bytes(jwt.utils.base64url_decode(text), "big")


# --- registration and import isolation ----------------------------------------------------


def test_registered_as_aws_kms_and_listed() -> None:
    plugin.load.cache_clear()
    assert plugin.load("keysetd.sources", "aws_kms") is AwsKmsSource
    assert AwsKmsSource.public_only
    done = subprocess.run(
        [*KEYSETD, "plugins"], capture_output=True, text=True, timeout=30, check=True
    )
    line = next(row for row in done.stdout.splitlines() if " aws_kms " in row)
    assert "keysetd_aws_kms.source:AwsKmsSource" in line
    assert re.search(r"\(keysetd[-_]aws[-_]kms \S+\)", line), line


def test_a_file_source_config_never_imports_boto(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[source]\ntype = "file"\npath = "/x"\n'
        f'[[outputs]]\ntype = "jwks"\npath = "{tmp_path}/j.json"\n'
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom keysetd.config import load_config\n"
        f"load_config(Path({str(config)!r})).build_source()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'keysetd_aws_kms')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


# --- config -------------------------------------------------------------------------------


def write_config(tmp_path: Path, source_lines: str, outputs: str = "jwks") -> Path:
    path = tmp_path / "keysetd.toml"
    path.write_text(
        f'state_dir = "{tmp_path}/state"\n[source]\ntype = "aws_kms"\nregion = "{REGION}"\n'
        f'{source_lines}\n[[outputs]]\ntype = "{outputs}"\npath = "{tmp_path}/out.json"\n'
    )
    return path


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ('key_ids = ["alias/a"]\naws_secret_access_key = "x"', "aws_secret_access_key"),
        ("key_ids = []", "key_ids"),
        ('key_ids = ["alias/a", "alias/a"]', "key_ids"),
        ('key_ids = ["alias/a"]\nkid_format = "{key_id}-{alias}"', "kid_format"),
        ('key_ids = ["alias/a"]\nkid_format = "static"', "kid_format"),
        ('key_ids = ["alias/a"]\nendpoint_url = "kms.internal:443"', "endpoint_url"),
        ('key_ids = ["alias/a"]\nrsa_alg = "RS512"', "rsa_alg"),
        ('key_ids = ["alias/a"]\nformat = "pem"', "format"),
    ],
)
def test_bad_config_is_refused_by_key(tmp_path: Path, lines: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write_config(tmp_path, lines))


def test_signer_outputs_are_refused_for_a_public_only_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="public keys only"):
        load_config(write_config(tmp_path, 'key_ids = ["alias/a"]', outputs="keyset"))


def test_readme_config_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (PLUGIN / "README.md").read_text(), flags=re.S)
    assert blocks
    for index, block in enumerate(blocks):
        path = tmp_path / f"readme-{index}.toml"
        path.write_text(block)
        config = load_config(path)
        assert isinstance(config.build_source(), AwsKmsSource)


# --- fetch --------------------------------------------------------------------------------


def test_jwks_from_der_spki_with_kids_resolved_from_alias_and_arn(moto_url: str, kms: Any) -> None:
    ec_key, rsa_key = new_key(kms), new_key(kms, "RSA_2048")
    alias = new_alias(kms, ec_key["KeyId"])
    src = source(moto_url, [alias, rsa_key["Arn"]])
    first = src.fetch()
    doc = fetch(src)
    assert src.fetch().data == first.data  # byte-stable across fetches (and a reopened client)
    src.close()
    keys = {k["kid"]: k for k in doc["keys"]}
    assert set(keys) == {ec_key["KeyId"], rsa_key["KeyId"]}
    assert doc["active_kid"] == ec_key["KeyId"]  # no `active`: the first key id

    ec_public = load_der_public_key(kms.get_public_key(KeyId=ec_key["KeyId"])["PublicKey"])
    assert isinstance(ec_public, ec.EllipticCurvePublicKey)
    jwk_ec = keys[ec_key["KeyId"]]
    assert (jwk_ec["kty"], jwk_ec["crv"], jwk_ec["alg"], jwk_ec["use"]) == (
        "EC",
        "P-256",
        "ES256",
        "sig",
    )
    numbers = ec_public.public_numbers()
    assert (b64u_int(jwk_ec["x"]), b64u_int(jwk_ec["y"])) == (numbers.x, numbers.y)
    assert "d" not in jwk_ec

    rsa_public = load_der_public_key(kms.get_public_key(KeyId=rsa_key["KeyId"])["PublicKey"])
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    jwk_rsa = keys[rsa_key["KeyId"]]
    assert (jwk_rsa["kty"], jwk_rsa["alg"]) == ("RSA", "RS256")
    rsa_numbers = rsa_public.public_numbers()
    assert (b64u_int(jwk_rsa["n"]), b64u_int(jwk_rsa["e"])) == (rsa_numbers.n, rsa_numbers.e)


def test_alias_arn_kid_format_and_ps256(moto_url: str, kms: Any) -> None:
    rsa_key = new_key(kms, "RSA_2048")
    alias = new_alias(kms, rsa_key["KeyId"])
    alias_arn = f"arn:aws:kms:{REGION}:{rsa_key['AWSAccountId']}:{alias}"
    doc = fetch(source(moto_url, [alias_arn], rsa_alg="PS256", kid_format="kms-{key_id}"))
    assert doc["active_kid"] == f"kms-{rsa_key['KeyId']}"
    assert [(k["kid"], k["alg"]) for k in doc["keys"]] == [(doc["active_kid"], "PS256")]


def test_active_follows_the_alias_swap_on_the_next_fetch(moto_url: str, kms: Any) -> None:
    old, new = new_key(kms), new_key(kms)
    signing = new_alias(kms, old["KeyId"])
    src = source(moto_url, [old["KeyId"], new["Arn"]], active=signing)
    try:
        before = json.loads(src.fetch().data)
        kms.update_alias(AliasName=signing, TargetKeyId=new["KeyId"])
        after = json.loads(src.fetch().data)
    finally:
        src.close()
    assert before["active_kid"] == old["KeyId"] and after["active_kid"] == new["KeyId"]
    assert before["keys"] == after["keys"]  # the same published keys; only the signer moved


def test_active_alias_outside_key_ids_is_a_source_error(moto_url: str, kms: Any) -> None:
    listed, other = new_key(kms), new_key(kms)
    signing = new_alias(kms, other["KeyId"])
    error = fetch_error(source(moto_url, [listed["KeyId"]], active=signing))
    assert signing in str(error) and other["KeyId"] in str(error) and "not in key_ids" in str(error)


@pytest.mark.parametrize(
    ("make_unusable", "state"),
    [
        (lambda kms, key_id: kms.disable_key(KeyId=key_id), "Disabled"),
        (
            lambda kms, key_id: kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7),
            "PendingDeletion",
        ),
    ],
    ids=["disabled", "pending-deletion"],
)
def test_a_configured_key_that_cannot_sign_is_a_source_error(
    moto_url: str, kms: Any, make_unusable: Any, state: str
) -> None:
    good, bad = new_key(kms), new_key(kms)
    alias = new_alias(kms, bad["KeyId"])
    make_unusable(kms, bad["KeyId"])
    error = fetch_error(source(moto_url, [good["KeyId"], alias]))
    assert f"KMS key {alias} ({bad['KeyId']}) is {state}" in str(error)


@pytest.mark.parametrize("ref", ["alias/no-such-alias", "11111111-2222-3333-4444-555555555555"])
def test_an_unknown_key_is_a_source_error(moto_url: str, kms: Any, ref: str) -> None:
    good = new_key(kms)
    error = fetch_error(source(moto_url, [good["KeyId"], ref]))
    assert f"DescribeKey {ref}: NotFoundException" in str(error)


def test_unusable_key_specs_are_named(moto_url: str, kms: Any) -> None:
    secp256k1 = new_key(kms, "ECC_SECG_P256K1")
    error = fetch_error(source(moto_url, [secp256k1["KeyId"]]))
    assert secp256k1["KeyId"] in str(error) and "KeySpec ECC_SECG_P256K1" in str(error)
    symmetric = new_key(kms, "SYMMETRIC_DEFAULT", usage="ENCRYPT_DECRYPT")
    error = fetch_error(source(moto_url, [symmetric["KeyId"]]))
    assert "KeyUsage ENCRYPT_DECRYPT, not SIGN_VERIFY" in str(error)


def test_the_same_key_listed_twice_is_a_source_error(moto_url: str, kms: Any) -> None:
    key = new_key(kms)
    alias = new_alias(kms, key["KeyId"])
    error = fetch_error(source(moto_url, [key["KeyId"], alias]))
    assert "are the same KMS key" in str(error)


def test_a_server_that_is_down_fails_within_the_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    error = fetch_error(source(url, ["alias/a"], timeout=3))
    assert time.monotonic() - started < 3
    assert "DescribeKey alias/a: Could not connect to the endpoint URL" in str(error)


@pytest.mark.parametrize("client_build", [0.0, 0.7], ids=["client-at-once", "client-slow"])
def test_a_server_that_never_answers_fails_on_the_timeout(
    client_build: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow first client build (botocore loading the KMS model on a busy machine) is not
    # counted against the fetch's timeout: the fetch still sends its request and names it.
    real_client = boto3.session.Session.client

    def slow_client(*args: Any, **kwargs: Any) -> Any:
        time.sleep(client_build)
        return real_client(*args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", slow_client)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        error = fetch_error(source(url, ["alias/a"], timeout=0.5))
        elapsed = time.monotonic() - started - client_build
    # Two attempts of 0.5 s each plus botocore's jittered backoff (under 1 s) between them,
    # and the client's first build (loading the KMS service model: seconds on a busy
    # machine). botocore's own read timeout would be 60 s.
    assert 0.5 <= elapsed < 8.0
    assert "DescribeKey alias/a: no answer within the timeout" in str(error)


def test_no_credentials_is_a_source_error(
    moto_url: str, kms: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_key(kms)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = fetch_error(source(moto_url, [key["KeyId"]]))
    assert "no AWS credentials found in the standard chain" in str(error)


# --- end to end: a keysetd process publishes, KMS signs, PyJWT verifies --------------------


def kms_jwt(kms: Any, key_id: str, alg: str, claims: dict[str, Any], kid: str | None = None) -> str:
    """A JWT signed by KMS ``Sign``: DER ECDSA becomes JWS r||s; PKCS#1 v1.5 is JWS as is."""
    header = {"alg": alg, "kid": kid or key_id, "typ": "JWT"}
    signing_input = ".".join(
        b64u(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    ).encode()
    if alg == "ES256":
        # RAW: KMS hashes with SHA-256 itself (moto does not implement MessageType DIGEST).
        der = kms.sign(
            KeyId=key_id, Message=signing_input, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256"
        )["Signature"]
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = kms.sign(
            KeyId=key_id,
            Message=signing_input,
            MessageType="RAW",
            SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256",
        )["Signature"]
    return signing_input.decode() + "." + b64u(signature)


def test_keysetd_once_publishes_kms_keys_that_verify_kms_signed_jwts(
    moto_url: str, kms: Any, env: Env
) -> None:
    ec_key, rsa_key = new_key(kms), new_key(kms, "RSA_2048")
    signing = new_alias(kms, ec_key["KeyId"])
    config = env.config(
        source={
            "type": "aws_kms",
            "region": REGION,
            "endpoint_url": moto_url,
            "key_ids": [signing, rsa_key["Arn"]],
            "active": signing,
            "timeout": "5s",
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    done = env.keysetd("once", "--config", str(config))
    assert done.returncode == 0, done.stderr
    published = env.jwks.read_bytes()
    jwks = jwt.PyJWKSet.from_json(published.decode())
    assert jwks.keys[0].key_id == ec_key["KeyId"]  # active key first

    claims = {"sub": "svc", "aud": "api", "exp": int(time.time()) + 300}
    for key_id, alg in ((ec_key["KeyId"], "ES256"), (rsa_key["KeyId"], "RS256")):
        token = kms_jwt(kms, key_id, alg, claims)
        assert jwt.get_unverified_header(token)["kid"] == key_id
        decoded = jwt.decode(token, key=jwks[key_id], algorithms=[alg], audience="api")
        assert decoded["sub"] == "svc"
    stranger = new_key(kms)  # a KMS key keysetd does not publish, claiming a published kid
    forged = kms_jwt(kms, stranger["KeyId"], "ES256", claims, kid=ec_key["KeyId"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key=jwks[ec_key["KeyId"]], algorithms=["ES256"], audience="api")

    # A KMS key disabled: the cycle fails naming source and fault; outputs stay byte-for-byte.
    kms.disable_key(KeyId=rsa_key["KeyId"])
    failed = env.keysetd("once", "--config", str(config))
    assert failed.returncode == 1
    assert f"aws_kms:{REGION}" in failed.stderr and "is Disabled" in failed.stderr
    assert "testing" not in failed.stderr  # the (fake) credentials never show
    assert env.jwks.read_bytes() == published
