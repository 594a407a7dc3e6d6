"""Decoders and renders: round trips, byte-stable output, and nothing private in public files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from keysetd.crypto import b64u_encode, generate
from keysetd.errors import InvalidKeyset
from keysetd.formats import decode, detect
from keysetd.formats.envfile import render_env
from keysetd.formats.jwks import decode_jwks, render_jwks, render_keyset
from keysetd.formats.pem import decode_pem, render_private_pem, render_public_pem
from keysetd.formats.rgs import decode_rgs, render_rgs
from keysetd.model import PRIVATE_MEMBERS, Key, Keyset
from keysetd.validate import check

VALID = Path(__file__).parent / "vectors" / "valid"
JSON_VECTORS = sorted(VALID.glob("*.json"))
ALL_VECTORS = sorted(VALID.iterdir())
PRIVATE_NAMES = {name for names in PRIVATE_MEMBERS.values() for name in names}


def oct_key(kid: str, secret: bytes, alg: str = "HS256") -> Key:
    return Key(kid=kid, kty="oct", alg=alg, public=(), private=(("k", b64u_encode(secret)),))


def same(a: Keyset, b: Keyset) -> bool:
    """Equal keysets up to key order (decoders keep document order; renders sort)."""
    return a.active_kid == b.active_kid and a.ordered() == b.ordered()


@pytest.mark.parametrize("path", ALL_VECTORS, ids=lambda p: p.name)
def test_keyset_render_round_trips_and_is_byte_stable(path: Path) -> None:
    keyset = check(path.read_bytes())
    rendered = render_keyset(keyset)
    assert rendered == render_keyset(keyset)
    again = check(rendered)
    assert same(again, keyset)
    assert render_keyset(again) == rendered
    assert rendered.endswith(b"}\n") and b'\n  "keys": [' in rendered


@pytest.mark.parametrize("path", ALL_VECTORS, ids=lambda p: p.name)
def test_public_render_holds_public_members_only(path: Path) -> None:
    keyset = check(path.read_bytes())
    rendered = render_jwks(keyset)
    doc = json.loads(rendered)
    assert list(doc) == ["keys"]
    for jwk in doc["keys"]:
        assert jwk["kty"] != "oct"
        assert not PRIVATE_NAMES & set(jwk), jwk
        assert list(jwk)[:4] == ["kty", "kid", "alg", "use"]
    for key in keyset:
        for _, value in key.private:
            assert value.encode() not in rendered
    expected = [k.kid for k in keyset.ordered() if k.kty != "oct"]
    assert [jwk["kid"] for jwk in doc["keys"]] == expected
    if expected:
        check(rendered, declared_public=True)


def test_jwks_order_is_active_first_then_kid() -> None:
    keyset = check((VALID / "mixed-private.json").read_bytes())
    kids = [jwk["kid"] for jwk in json.loads(render_jwks(keyset))["keys"]]
    assert kids == ["2026-11-b", "2026-09-ed", "2026-10-a"]
    shuffled = Keyset(tuple(reversed(keyset.keys)), keyset.active_kid)
    assert render_jwks(shuffled) == render_jwks(keyset)
    assert render_keyset(shuffled) == render_keyset(keyset)


def test_member_order_is_fixed() -> None:
    keyset = check((VALID / "rs256-private.json").read_bytes())
    jwk = json.loads(render_keyset(keyset))["keys"][0]
    assert list(jwk) == ["kty", "kid", "alg", "use", "n", "e", "d", "p", "q", "dp", "dq", "qi"]
    ec = json.loads(render_keyset(check((VALID / "es256-private.json").read_bytes())))
    assert list(ec["keys"][0]) == ["kty", "kid", "alg", "use", "crv", "x", "y", "d"]


def test_extra_members_are_dropped_and_defaults_filled() -> None:
    keyset = check((VALID / "mixed-public.json").read_bytes())
    rsa = keyset.get("2026-10-a")
    assert rsa is not None and rsa.alg == "RS256" and rsa.use == "sig"
    # Checked certificates are kept (x5c, x5t, x5t#S256); other extras are dropped.
    assert b'"x5c"' in render_jwks(keyset) and b'"x5t#S256"' in render_jwks(keyset)
    assert b"key_ops" not in render_jwks(keyset)
    anonymous = [key for key in keyset if key.kty == "EC" and key.alg == "ES384"]
    assert len(anonymous) == 1 and len(anonymous[0].kid) == 43  # RFC 7638 thumbprint


def test_detect() -> None:
    assert detect((VALID / "es256-public.json").read_bytes()) == "jwks"
    assert detect((VALID / "rgs.json").read_bytes()) == "rgs"
    assert detect((VALID / "public-mixed.pem").read_bytes()) == "pem"
    assert detect(b"\xef\xbb\xbf  " + (VALID / "rgs.json").read_bytes()) == "rgs"


def test_forced_format_that_does_not_fit_is_malformed() -> None:
    with pytest.raises(InvalidKeyset) as caught:
        decode((VALID / "rgs.json").read_bytes(), "jwks")
    assert caught.value.rules == {"malformed"}
    with pytest.raises(InvalidKeyset):
        decode((VALID / "es256-public.json").read_bytes(), "pem")
    with pytest.raises(ValueError, match="unknown keyset format"):
        decode(b"{}", "yaml")


def test_decoders_take_parsed_documents() -> None:
    doc = json.loads((VALID / "es256-public.json").read_bytes())
    assert decode_jwks(doc).kids == ("es256-1",)
    keyset = decode_rgs({"keys": {"a": "x" * 32}}, hmac_alg="HS512")
    assert keyset.keys[0].alg == "HS512"
    with pytest.raises(InvalidKeyset):
        decode_jwks({"keys": [{"kty": 1}]})


# --- rgs ----------------------------------------------------------------------------------


def test_rgs_round_trip_keeps_the_original_strings() -> None:
    data = (VALID / "rgs.json").read_bytes()
    keyset = check(data)
    rendered = render_rgs(keyset)
    doc = json.loads(rendered)
    assert doc == json.loads(data)
    assert list(doc) == ["active_kid", "keys"]
    assert same(check(rendered), keyset)
    assert render_rgs(check(rendered)) == rendered


def test_rgs_refuses_a_secret_that_is_not_utf8_and_names_only_the_kid() -> None:
    secret = b"\xff\xfe" + b"s3cr3t-bytes-never-shown" * 2
    with pytest.raises(ValueError, match="'bin'") as caught:
        render_rgs(Keyset((oct_key("bin", secret),), "bin"))
    assert "s3cr3t" not in str(caught.value) and "\\xff" not in str(caught.value)


def test_rgs_needs_oct_keys() -> None:
    with pytest.raises(ValueError, match="no HMAC"):
        render_rgs(check((VALID / "es256-private.json").read_bytes()))


# --- pem ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "EdDSA", "RS256"])
def test_pem_renders_are_plain_pem_and_load(alg: str) -> None:
    key = generate(alg, "k-1")
    public_pem = render_public_pem(key)
    private_pem = render_private_pem(key)
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    for pem in (public_pem, private_pem):
        assert pem.endswith(b"-----\n") and pem.count(b"-----BEGIN ") == 1
    serialization.load_pem_public_key(public_pem)
    serialization.load_pem_private_key(private_pem, password=None)
    assert render_public_pem(key) == public_pem
    [back] = decode_pem(public_pem).keys
    assert back.public == key.public and back.alg == key.alg
    [back_private] = decode_pem(private_pem).keys
    assert back_private.private == key.private


def test_pem_private_and_its_public_collapse_to_one_active_key() -> None:
    keyset = decode_pem((VALID / "es256-private.pem").read_bytes())
    assert len(keyset) == 1 and keyset.keys[0].has_private
    assert keyset.active_kid == keyset.keys[0].kid


def test_pem_public_only_has_no_active_kid() -> None:
    keyset = decode_pem((VALID / "public-mixed.pem").read_bytes())
    assert len(keyset) == 3 and keyset.active_kid is None
    assert {key.alg for key in keyset} == {"ES512", "EdDSA", "RS256"}


def test_pem_of_two_private_keys_has_no_active_kid() -> None:
    a, b = generate("ES256"), generate("EdDSA")
    keyset = decode_pem(render_private_pem(a) + render_private_pem(b))
    assert set(keyset.kids) == {a.kid, b.kid} and keyset.active_kid is None


def test_pem_refuses_oct_and_public_only_keys() -> None:
    with pytest.raises(ValueError):
        render_public_pem(oct_key("hs", b"x" * 32))
    with pytest.raises(ValueError):
        render_private_pem(generate("ES256").without_private())
    # The kid is in no PEM line any more: any kid renders.
    assert render_public_pem(generate("ES256", "bad\nkid")).startswith(b"-----BEGIN ")


def test_pem_of_an_older_release_with_its_comment_line_still_decodes() -> None:
    key = generate("ES256", "k-1")
    old = b"# generated by keysetd: k-1\n" + render_private_pem(key)
    [back] = decode_pem(old).keys
    assert back.private == key.private


# --- env ----------------------------------------------------------------------------------


def shell_read(path: Path, *names: str) -> list[str]:
    """What ``set -a; . file`` gives a POSIX shell for each variable."""
    values = []
    for name in names:
        script = f'set -a; . ./{path.name}; printf %s "${name}"'
        result = subprocess.run(
            ["/bin/sh", "-c", script],
            cwd=path.parent,
            capture_output=True,
            check=True,
            timeout=10,
            env={"PATH": "/usr/bin:/bin"},
        )
        values.append(result.stdout.decode("utf-8"))
    return values


def test_env_file_reads_back_through_sh(tmp_path: Path) -> None:
    secrets = {
        "k1": "plain-secret-0123456789abcdef0123",
        "k2": "shell $HOME `id` $(id) * ? [a] ; & | < > ~ # % ! {x} spaces  and tabs",
        "k3": "ünïcødé-sécret-ñ-日本語-0123456789abcdef",
    }
    doc = {"active_kid": "k2", "keys": secrets}
    keyset = check(json.dumps(doc).encode())
    rendered = render_env(keyset)
    lines = rendered.decode().splitlines()
    assert lines[0] == "# generated by keysetd"
    assert lines[1].startswith("RGS_JWT_KEYSET='") and lines[2] == "RGS_JWT_ACTIVE_KID=k2"
    path = tmp_path / "keyset.env"
    path.write_bytes(rendered)
    keyset_value, active = shell_read(path, "RGS_JWT_KEYSET", "RGS_JWT_ACTIVE_KID")
    assert json.loads(keyset_value) == secrets
    assert keyset_value == json.dumps(
        dict(sorted(secrets.items())), separators=(",", ":"), ensure_ascii=False
    )
    assert active == "k2"
    assert render_env(keyset) == rendered


def test_env_file_quotes_an_active_kid_that_is_not_a_plain_token(tmp_path: Path) -> None:
    kid = "2026 * $HOME ~ é"
    keyset = Keyset((oct_key(kid, b"x" * 32),), kid)
    rendered = render_env(keyset)
    assert rendered.decode().splitlines()[2] == f"RGS_JWT_ACTIVE_KID='{kid}'"
    path = tmp_path / "keyset.env"
    path.write_bytes(rendered)
    assert shell_read(path, "RGS_JWT_ACTIVE_KID") == [kid]


def test_env_file_custom_variable_names(tmp_path: Path) -> None:
    keyset = check((VALID / "rgs.json").read_bytes())
    path = tmp_path / "app.env"
    path.write_bytes(render_env(keyset, keyset_var="JWT_KEYS", active_kid_var="JWT_KID"))
    keys, kid = shell_read(path, "JWT_KEYS", "JWT_KID")
    assert kid == "k2" and set(json.loads(keys)) == {"k1", "k2"}


@pytest.mark.parametrize("bad", ["it's", "back\\slash", 'dq"uote', "new\nline", "tab\there"])
def test_env_carries_secrets_with_quotes_backslashes_and_control_characters(
    bad: str, tmp_path: Path
) -> None:
    secret = bad + "-padding-to-thirty-two-bytes-long ${HOME}"
    keyset = Keyset((oct_key("k1", secret.encode()),), "k1")
    rendered = render_env(keyset)
    value = rendered.decode().splitlines()[1].removeprefix("RGS_JWT_KEYSET=")
    assert value.count("'") == 2 and "${" not in value  # one quoted word, nothing expands
    path = tmp_path / "keyset.env"
    path.write_bytes(rendered)
    assert json.loads(shell_read(path, "RGS_JWT_KEYSET")[0]) == {"k1": secret}


@pytest.mark.parametrize("kid", ["it's", "back\\slash", "new\nline", "a${HOME}"])
def test_env_refuses_an_active_kid_no_quoting_carries(kid: str) -> None:
    keyset = Keyset((oct_key(kid, b"x" * 32),), kid)
    with pytest.raises(ValueError, match="env-unsafe-kid") as caught:
        render_env(keyset)
    assert "xxxx" not in str(caught.value)


@pytest.mark.parametrize("name", ["1ABC", "A-B", "", "A B", "A=B"])
def test_env_refuses_bad_variable_names(name: str) -> None:
    keyset = check((VALID / "rgs.json").read_bytes())
    with pytest.raises(ValueError, match="variable name"):
        render_env(keyset, keyset_var=name)


def test_env_needs_an_active_hmac_key() -> None:
    keys = (oct_key("a", b"a" * 32), oct_key("b", b"b" * 32))
    with pytest.raises(ValueError, match="active"):
        render_env(Keyset(keys))
    with pytest.raises(ValueError, match="no HMAC"):
        render_env(check((VALID / "es256-private.json").read_bytes()))
