"""Hypothesis over every decoder (``formats.decode`` with each fmt) and the config loader.

decode: any bytes give a Keyset or an InvalidKeyset with named problems, never
another exception. load_config on fuzzed TOML text: a Config or a ConfigError,
never another exception. ``make test`` runs ``FUZZ_EXAMPLES`` (default 100) per
test; ``make stress`` runs >= 100,000 examples in total (see tests/RELIABILITY.md).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysetd.config import Config, load_config
from keysetd.errors import ConfigError, InvalidKeyset
from keysetd.formats import FORMATS, decode, decode_partial
from keysetd.model import Keyset
from tests.conftest import render_toml

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VECTORS = Path(__file__).parent / "vectors"
SEEDS = [p.read_bytes() for p in sorted((VECTORS / "valid").iterdir())]
PEM_SEEDS = [s for s in SEEDS if b"-----BEGIN " in s]
CONFIG_SEEDS = [
    p.read_text()
    for p in sorted((Path(__file__).parent.parent / "examples").rglob("*.toml"))
    if p.stat().st_size < 64 * 1024
]

LABELS = [
    "PUBLIC KEY",
    "PRIVATE KEY",
    "EC PRIVATE KEY",
    "RSA PRIVATE KEY",
    "RSA PUBLIC KEY",
    "OPENSSH PRIVATE KEY",
    "CERTIFICATE",
    "ENCRYPTED PRIVATE KEY",
    "",
    "X",
]


def decoded(data: bytes, fmt: str) -> Keyset | None:
    """decode() on the bytes: the Keyset, or None for InvalidKeyset; anything else fails."""
    partial, problems = decode_partial(data, fmt)
    assert partial is None or isinstance(partial, Keyset)
    try:
        keyset = decode(data, fmt)
    except InvalidKeyset as exc:
        assert exc.problems and all(p.rule for p in exc.problems)
        assert str(exc)
        assert problems or partial is None
        return None
    assert isinstance(keyset, Keyset) and not problems
    return keyset


def pem_block(label: str, body: bytes) -> bytes:
    text = base64.encodebytes(body).decode()
    return f"-----BEGIN {label}-----\n{text}-----END {label}-----\n".encode()


def der_of(seed: bytes) -> bytes:
    lines = [ln for ln in seed.splitlines() if ln and not ln.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))


pem_documents = st.one_of(
    st.lists(
        st.builds(pem_block, st.sampled_from(LABELS), st.binary(max_size=300)),
        min_size=1,
        max_size=3,
    ).map(b"".join),
    st.builds(
        lambda seed, at, value, label: pem_block(
            label,
            der_of(seed)[:at] + bytes([value]) + der_of(seed)[at + 1 :],
        ),
        st.sampled_from(PEM_SEEDS or [b""]),
        st.integers(0, 200),
        st.integers(0, 255),
        st.sampled_from(LABELS[:6]),
    ),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
rgs_documents = st.fixed_dictionaries(
    {
        "keys": st.one_of(
            st.dictionaries(st.text(max_size=12), json_values, max_size=5), json_values
        )
    },
    optional={"active_kid": json_values},
)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(FORMATS))
def test_decode_arbitrary_bytes_every_format(data: bytes, fmt: str) -> None:
    decoded(data, fmt)


@FUZZ
@given(pem_documents, st.sampled_from(["auto", "pem"]))
def test_decode_pem_blocks(data: bytes, fmt: str) -> None:
    decoded(data, fmt)


@FUZZ
@given(rgs_documents, st.sampled_from(["auto", "rgs"]))
def test_decode_rgs_documents(doc: dict[str, Any], fmt: str) -> None:
    decoded(json.dumps(doc).encode(), fmt)


@FUZZ
@given(st.sampled_from(SEEDS), st.sampled_from(FORMATS), st.data())
def test_decode_mutated_seeds_every_format(seed: bytes, fmt: str, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if buf and data.draw(st.booleans()):
            buf[at] = data.draw(st.integers(0, 255))
        else:
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    decoded(bytes(buf), fmt)


# -- the config loader ----------------------------------------------------------------------

KEYS = ["state_dir", "strict", "log_format", "server", "source", "policy", "outputs", "notify"]
KEYS += ["rotation", "type", "path", "format", "refresh_interval", "timeout", "argv", "url"]
KEYS += ["listen", "activation_delay", "retention", "max_staleness", "hmac_alg", "mode", "name"]
KEYS += ["pidfile", "pid", "signal", "var", "every", "alg", "kind", "private", "keyset_var"]
WORDS = ["file", "command", "env", "jwks_url", "jwks", "keyset", "rgs", "pem", "nats", "signal"]
WORDS += ["http", "auto", "30s", "1h30m", "7d", "-1s", "0644", "0o600", "SIGHUP", "HS256", "json"]
WORDS += ["text", "127.0.0.1:0", "/nonexistent/k.json", "http://127.0.0.1:1/x", "", "ES256"]
toml_scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
toml_leaves = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))
toml_tables = st.dictionaries(st.sampled_from(KEYS), toml_leaves, max_size=6)
toml_documents = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(toml_leaves, toml_tables, st.lists(toml_tables, min_size=1, max_size=3)),
    max_size=8,
)


@pytest.mark.parametrize("text", ['source = "file"\n', "source = 1\n", "source = []\n"])
def test_config_source_not_a_table(tmp_path: Path, text: str) -> None:
    """Found by this fuzzer: it once raised AttributeError instead of ConfigError."""
    path = tmp_path / "keysetd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def loaded(text: str | bytes) -> Config | None:
    """load_config on the text: the Config, or None for ConfigError; anything else fails."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keysetd.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            config = load_config(path, environ={})
        except ConfigError as exc:
            assert exc.problems and str(exc)
            return None
        assert isinstance(config, Config)
        config.build_outputs()
        return config


@FUZZ
@given(toml_documents)
def test_config_loader_structured(doc: dict[str, Any]) -> None:
    loaded(render_toml(doc))


@FUZZ
@given(st.sampled_from(CONFIG_SEEDS or [""]), st.data())
def test_config_loader_mutated_examples(seed: str, data: st.DataObject) -> None:
    buf = bytearray(seed.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set" and buf:
            buf[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = data.draw(st.sampled_from([b"[", b"]", b"=", b'"', b"\n", b"[[x]]"]))
        else:
            del buf[at : at + data.draw(st.integers(1, 32))]
    loaded(bytes(buf))


@FUZZ
@given(st.text(max_size=400))
def test_config_loader_arbitrary_text(text: str) -> None:
    loaded(text)
