"""Envelope encryption of state_dir with the key_file provider: sealed files, upgrade, refusals.

The Vault/OpenBao and AWS KMS providers run the same checks against real servers in
tests/test_vault_plugin.py and tests/test_aws_kms_plugin.py (``check_sealed_state``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keysetd.config import load_config
from keysetd.errors import SealError
from keysetd.keyfile import KeyFileConfig, KeyFileProvider
from keysetd.pipeline import Pipeline
from keysetd.sealing import Sealer, WrappedKey, is_sealed
from keysetd.state import LastKnownGood, StateStore
from keysetd.status import readiness, status_document
from keysetd.tables import TableError
from tests.conftest import Env, wait_for
from tests.keys import assert_clean, jwk, jwks_doc, secrets_of

PRIVATE_MEMBERS = ("d", "k", "p", "q", "dp", "dq", "qi")


def make_key(path: Path) -> Path:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def sealer(key: Path, *previous: Path, ttl: float = 300.0) -> Sealer:
    config = KeyFileConfig(
        type="key_file", key_file=key, previous_key_files=tuple(previous), cache_ttl=ttl
    )
    return Sealer(KeyFileProvider(config))


def assert_no_private_material(state_dir: Path, keys: list[dict[str, Any]]) -> None:
    """No file under state_dir holds a private member, a PEM private block or a secret."""
    secrets = secrets_of(*keys)
    assert secrets
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        raw = path.read_bytes()
        text = raw.decode(errors="replace")
        for member in PRIVATE_MEMBERS:
            assert not re.search(rf'"{member}"\s*:', text), f'"{member}" in {path.name}'
        assert "PRIVATE KEY" not in text, f"a PEM private block in {path.name}"
        for secret in secrets:
            assert secret not in text, f"key material in {path.name}"
            assert base64.urlsafe_b64decode(secret + "==") not in raw, f"raw bytes in {path.name}"
        # base64 of the plaintext last-known-good would hide members one level down
        for blob in re.findall(r'"data":"([A-Za-z0-9+/=]+)"', text):
            inner = base64.b64decode(blob).decode(errors="replace")
            assert not any(f'"{m}"' in inner for m in PRIVATE_MEMBERS), path.name


def encrypted_env(env: Env, key: Path, **extra: Any) -> Path:
    return env.config(state={"encryption": "key_file", "key_file": str(key)}, **extra)


def published_encrypted(env: Env, keys: dict[str, Any]) -> Path:
    """es-a published once by ``keysetd once`` with key_file encryption; the key file."""
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    encrypted_env(env, key)
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    return key


# -- the sealer ----------------------------------------------------------------------------


def test_seal_open_round_trip_fresh_data_key_each_write(tmp_path: Path) -> None:
    box = sealer(make_key(tmp_path / "k"))
    path = tmp_path / "signer-keyset.json"
    one, two = box.seal(path, b"secret document"), box.seal(path, b"secret document")
    assert is_sealed(one) and one != two
    assert json.loads(one)["wrapped_key"] != json.loads(two)["wrapped_key"]
    assert b"secret document" not in one
    assert box.open(path, one) == b"secret document"
    fresh = sealer(tmp_path / "k")  # a new process: unwraps with the key file
    assert fresh.open(path, two) == b"secret document"


def test_a_sealed_file_under_another_name_does_not_open(tmp_path: Path) -> None:
    box = sealer(make_key(tmp_path / "k"))
    raw = box.seal(tmp_path / "signer-keyset.json", b"x")
    with pytest.raises(SealError, match=r"last-known-good\.json"):
        sealer(tmp_path / "k").open(tmp_path / "last-known-good.json", raw)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_key", "key_version"])
def test_edited_or_corrupt_sealed_files_are_refused_by_name(tmp_path: Path, field: str) -> None:
    box = sealer(make_key(tmp_path / "k"), ttl=0)
    path = tmp_path / "signer-keyset.json"
    doc = json.loads(box.seal(path, b"payload"))
    if field == "key_version":
        doc[field] = 2
    else:
        value = base64.b64decode(doc[field])
        doc[field] = base64.b64encode(bytes([value[0] ^ 1]) + value[1:]).decode()
    with pytest.raises(SealError) as caught:
        box.open(path, json.dumps(doc).encode())
    assert str(path) in str(caught.value)
    for raw in (b'{"keysetd_sealed":1,', b'{"keysetd_sealed":1}'):
        with pytest.raises(SealError, match=r"corrupt|not a sealed file"):
            box.open(path, raw)


def test_another_key_does_not_open_and_previous_key_files_do(tmp_path: Path) -> None:
    old, new = make_key(tmp_path / "old"), make_key(tmp_path / "new")
    path = tmp_path / "last-known-good.json"
    raw = sealer(old).seal(path, b"payload")
    with pytest.raises(SealError, match="no configured key file holds key sha256:"):
        sealer(new).open(path, raw)
    assert sealer(new, old).open(path, raw) == b"payload"
    resealed = sealer(new, old).seal(path, b"payload")
    assert json.loads(resealed)["key_id"] != json.loads(raw)["key_id"]


def test_key_material_never_in_a_repr_or_an_error(tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    box = sealer(key)
    path = tmp_path / "signer-keyset.json"
    raw = box.seal(path, b"payload")
    doc = json.loads(raw)
    wrapped = WrappedKey(doc["wrapped_key"], doc["key_id"], doc["key_version"])
    key_text = key.read_text().strip()
    cached = [data_key for data_key, _ in box._cache.values()]
    assert cached
    texts = [repr(wrapped), str(wrapped), repr(box), repr(box.provider.config)]
    bad = dict(doc, ciphertext=base64.b64encode(b"\0" * 40).decode())
    for attempt in (
        lambda: box.open(path, json.dumps(bad).encode()),
        lambda: sealer(make_key(tmp_path / "other")).open(path, raw),
        lambda: box.open(tmp_path / "other-name", raw),
    ):
        with pytest.raises(SealError) as caught:
            attempt()
        texts.append(str(caught.value))
        texts.append(repr(caught.value))
    for text in texts:
        assert doc["wrapped_key"] not in text
        assert key_text not in text
        for data_key in cached:
            assert base64.b64encode(data_key).decode() not in text
            assert data_key.hex() not in text


def test_cached_data_keys_expire(tmp_path: Path) -> None:
    now = [0.0]
    config = KeyFileConfig(type="key_file", key_file=make_key(tmp_path / "k"), cache_ttl=10.0)
    box = Sealer(KeyFileProvider(config), clock=lambda: now[0])
    path = tmp_path / "signer-keyset.json"
    raw = box.seal(path, b"payload")
    (tmp_path / "k").unlink()  # the provider is gone; the cache answers while it is fresh
    assert box.open(path, raw) == b"payload"
    now[0] = 11.0
    with pytest.raises(SealError, match="cannot read key file"):
        box.open(path, raw)
    make_key(tmp_path / "k")
    box.seal(path, b"again")  # cached from its own seal...
    assert box._cache
    now[0] = 22.0
    box.expire()  # ...and gone from memory once past the TTL, not only unused
    assert not box._cache


def test_cache_ttl_is_at_most_an_hour(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="cache_ttl"):
        KeyFileConfig.parse(
            {"type": "key_file", "key_file": str(tmp_path / "k"), "cache_ttl": "2h"}
        )


# -- state_dir -----------------------------------------------------------------------------


def test_state_dir_holds_no_private_material(env: Env, keys: dict[str, Any]) -> None:
    key = make_key(env.root / "state.key")
    used = [keys["es-a"], keys["rs-a"], jwk("HS256", "hs-a"), keys["ed-a"]]
    env.write_source(jwks_doc(*used, active="es-a"))
    encrypted_env(env, key)
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 0
    state = StateStore(env.state, sealer(key))
    # Neither the key, nor a wrapped data key, nor what it opens reaches a log line or status.
    public = (
        done.stdout
        + done.stderr
        + env.keysetd("status", "--json", "-c", str(env.config_path)).stdout
    )
    public += state.audit_path.read_text() + state.status_path.read_text()
    for secret in [
        key.read_text().strip(),
        *(json.loads(p.read_bytes())["wrapped_key"] for p in state.private_paths),
    ]:
        assert secret not in public
    assert_clean(public, secrets_of(*used), "logs and status")
    assert is_sealed(state.lkg_path.read_bytes())
    assert is_sealed(state.signer_path.read_bytes())
    assert json.loads(state.encryption_path.read_text())["encryption"] == "key_file"
    assert_no_private_material(env.state, used)
    # It reads back: a restart with a failing source publishes from it.
    before = env.snapshot_outputs()
    env.source.unlink()
    shutil.rmtree(env.out)
    env.out.mkdir()
    env.keysetd("once", "--config", str(env.config_path))
    assert env.snapshot_outputs() == before
    assert_no_private_material(env.state, used)


def test_plaintext_state_is_upgraded_once_and_never_downgraded(
    env: Env, keys: dict[str, Any]
) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    state = StateStore(env.state)
    assert not is_sealed(state.lkg_path.read_bytes())
    with pytest.raises(AssertionError, match=r"last-known-good\.json|signer-keyset\.json"):
        assert_no_private_material(env.state, [keys["es-a"]])
    key = make_key(env.root / "state.key")
    encrypted_env(env, key)
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    assert is_sealed(state.lkg_path.read_bytes()) and is_sealed(state.signer_path.read_bytes())
    assert_no_private_material(env.state, [keys["es-a"]])
    audit = state.audit_path.read_text()
    assert '"event":"state_sealed"' in audit
    assert StateStore(env.state, sealer(key)).verified_lkg() is not None
    # Dropping [state] encryption is refused before anything is read or written.
    env.config()
    sealed = {p.name: p.read_bytes() for p in env.state.iterdir() if p.is_file()}
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 2
    assert "holds encrypted state" in done.stderr and str(env.state) in done.stderr
    assert state.lkg_path.read_bytes() == sealed["last-known-good.json"]
    assert state.signer_path.read_bytes() == sealed["signer-keyset.json"]


def test_a_plaintext_file_planted_in_encrypted_state_is_refused(
    env: Env, keys: dict[str, Any]
) -> None:
    key = published_encrypted(env, keys)
    state = StateStore(env.state, sealer(key))
    state.signer_path.write_bytes(jwks_doc(keys["es-b"], active="es-b"))
    with pytest.raises(SealError, match="is plaintext, but state_dir is encrypted"):
        state.load_signer()
    before = env.snapshot_outputs()
    env.write_source(jwks_doc(keys["es-a"], keys["es-c"], active="es-a"))
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1
    assert "signer-keyset.json" in done.stderr and "is plaintext" in done.stderr
    assert env.snapshot_outputs() == before


def test_key_provider_down_at_start_keeps_outputs_and_is_not_ready(
    env: Env, keys: dict[str, Any]
) -> None:
    """No plaintext fallback: the cycle fails by name, outputs stay byte for byte, then
    the daemon publishes from the sealed last-known-good once the key is back."""
    key = published_encrypted(env, keys)
    before = env.snapshot_outputs()
    hidden = key.rename(env.root / "hidden.key")
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1
    assert "signer-keyset.json" in done.stderr and "cannot read key file" in done.stderr
    assert env.snapshot_outputs() == before
    doc = status_document(env.state)
    assert doc["state_error"] and not readiness(doc, 3600)[0]
    # The source fails too: the last-known-good is sealed and the key is missing.
    env.source.unlink()
    shutil.rmtree(env.out)
    env.out.mkdir()
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 1
    assert env.snapshot_outputs() == {}
    hidden.rename(key)
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 1  # source gone
    assert env.snapshot_outputs() == before  # ... but the sealed last-known-good opened


def test_config_of_the_state_table(env: Env) -> None:
    env.write_source(b"{}")
    env.config(state={"encryption": "nope"})
    done = env.keysetd("check-config", "--config", str(env.config_path))
    assert done.returncode == 2 and "state.encryption" in done.stderr
    env.config(state={"encryption": "key_file"})
    done = env.keysetd("check-config", "--config", str(env.config_path))
    assert done.returncode == 2 and "state.key_file" in done.stderr
    env.config(state={"key_file": "/x"})
    done = env.keysetd("check-config", "--config", str(env.config_path))
    assert done.returncode == 2 and "state.key_file" in done.stderr


# -- managed rotation ----------------------------------------------------------------------


def test_the_managed_source_is_sealed_written_and_read(env: Env, keys: dict[str, Any]) -> None:
    """keysetd generates the keys of a managed source: they are sealed like state_dir's."""
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))  # a plaintext seed
    encrypted_env(env, key, rotation={"every": "1d"})
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    assert is_sealed(env.source.read_bytes())  # read once, written back sealed
    done = env.keysetd("rotate", "--kid", "es-new", "-c", str(env.config_path))
    assert done.returncode == 0, done.stderr
    raw = env.source.read_bytes()
    assert is_sealed(raw) and b"es-new" not in raw
    assert sealer(key).open(env.source, raw).count(b'"es-new"') == 2  # kid and active_kid
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    assert "es-new" in env.jwks.read_text()
    assert_no_private_material(env.state, [keys["es-a"]])
    assert '"d"' not in raw.decode()
    # Without the key the managed source does not open: a source error naming the file.
    key.rename(env.root / "gone.key")
    before = env.snapshot_outputs()
    env.write_source(raw)  # a file event: the cycle reads it again
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1 and f"source file:{env.source}" in done.stderr
    assert env.snapshot_outputs() == before
    # A config that dropped [rotation] reads the sealed file as a plain file: named so.
    (env.root / "gone.key").rename(key)
    encrypted_env(env, key)
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1 and "sealed by keysetd" in done.stderr
    assert "only a config with [rotation]" in done.stderr
    assert env.snapshot_outputs() == before


def test_the_daemon_stays_up_unready_while_the_key_is_missing_then_publishes(
    env: Env, keys: dict[str, Any]
) -> None:
    """keysetd run: started with the key provider down (and the source down), it is alive,
    not ready, writes nothing; once the key unwraps it publishes the sealed last-known-good.
    Nothing it serves (status, metrics) or logs holds key material."""
    from tests.servers import free_port
    from tests.test_operations import get

    key = make_key(env.root / "state.key")
    used = [keys["es-a"], keys["es-b"]]
    env.write_source(jwks_doc(*used, active="es-a"))
    port = free_port()
    encrypted_env(env, key, server={"listen": f"127.0.0.1:{port}"}, policy={"max_staleness": "1h"})
    assert env.keysetd("once", "--config", str(env.config_path)).returncode == 0
    before = env.snapshot_outputs()
    hidden = key.rename(env.root / "hidden.key")
    env.source.unlink()
    shutil.rmtree(env.out)
    env.out.mkdir()
    proc = env.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: "state_error" in get(base + "/status")[1], what="the refusal in status")
    assert get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 503
    assert "encrypted state unusable" in get(base + "/readyz")[1]
    assert env.snapshot_outputs() == {}
    hidden.rename(key)
    wait_for(lambda: env.snapshot_outputs() == before, timeout=30, what="the republish")
    wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready again")
    assert proc.poll() is None
    served = get(base + "/status")[1] + get(base + "/metrics")[1] + env.log()
    sealed = [
        json.loads(p.read_bytes())["wrapped_key"] for p in StateStore(env.state).private_paths
    ]
    for secret in [key.read_text().strip(), *sealed]:
        assert secret not in served
    assert_clean(served, secrets_of(*used), "status, metrics and the log")


def test_a_swapped_or_corrupt_sealed_file_fails_by_name_and_keeps_outputs(
    env: Env, keys: dict[str, Any]
) -> None:
    published_encrypted(env, keys)
    state = StateStore(env.state)
    before = env.snapshot_outputs()
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-a"))
    shutil.copy(state.lkg_path, state.signer_path)  # a sealed file under another name
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1
    assert f"{state.signer_path}: cannot unwrap its data key" in done.stderr
    assert env.snapshot_outputs() == before
    doc = json.loads(state.lkg_path.read_bytes())
    doc["ciphertext"] = base64.b64encode(b"\0" * 64).decode()
    state.signer_path.write_bytes(json.dumps(doc).encode())
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1 and str(state.signer_path) in done.stderr
    assert env.snapshot_outputs() == before


# -- properties ----------------------------------------------------------------------------

_BOX: list[Sealer] = []


def _property_sealer(tmp_path_factory: pytest.TempPathFactory) -> Sealer:
    if not _BOX:
        _BOX.append(sealer(make_key(tmp_path_factory.mktemp("prop") / "k")))
    return _BOX[0]


@given(
    plaintext=st.binary(max_size=2048),
    name=st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True),
    data=st.data(),
)
@settings(max_examples=150, deadline=None)
def test_any_single_byte_change_of_a_sealed_file_is_refused(
    tmp_path_factory: pytest.TempPathFactory, plaintext: bytes, name: str, data: st.DataObject
) -> None:
    box = _property_sealer(tmp_path_factory)
    path = Path("/state") / name
    raw = box.seal(path, plaintext)
    assert box.open(path, raw) == plaintext
    index = data.draw(st.integers(0, len(raw) - 2))  # the document, not its final newline
    value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[index]))
    changed = raw[:index] + bytes([value]) + raw[index + 1 :]
    with pytest.raises(SealError):
        box.open(path, changed)


def test_commands_that_write_state_refuse_encrypted_state_without_encryption(
    env: Env, keys: dict[str, Any]
) -> None:
    """revoke, unrevoke and forget append audit lines: unkeyed ones would break the chain."""
    published_encrypted(env, keys)
    audit = (env.state / "audit.jsonl").read_bytes()
    plain = env.config()  # the same state_dir, no [state] encryption
    for command in (["revoke", "es-a"], ["unrevoke", "es-a"], ["forget", "es-a"]):
        done = env.keysetd(*command, "-c", str(plain))
        assert done.returncode == 2 and "holds encrypted state" in done.stderr, command
    assert (env.state / "audit.jsonl").read_bytes() == audit
    assert not (env.state / "revocations.json").exists()


def test_a_provider_failing_at_the_signer_seal_moves_no_signer(
    env: Env, keys: dict[str, Any]
) -> None:
    """The signer keyset is sealed before the signer outputs move, not after."""
    key = make_key(env.root / "state.key")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    encrypted_env(env, key)
    cycle = Pipeline.open(load_config(env.config_path))
    try:
        assert cycle.cycle().ok
        env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
        real = cycle.state.seal_signer

        def down(document: bytes) -> bytes:
            raise SealError(str(cycle.state.signer_path), "cannot wrap a data key: provider down")

        cycle.state.seal_signer = down  # type: ignore[method-assign]
        assert not cycle.cycle(force=True).ok
        assert json.loads(env.signer.read_bytes())["active_kid"] == "es-a"
        cycle.state.seal_signer = real  # type: ignore[method-assign]
        assert cycle.cycle(force=True).ok
        assert json.loads(env.signer.read_bytes())["active_kid"] == "es-b"
        published = [
            json.loads(line)
            for line in cycle.state.audit_path.read_text().splitlines()
            if json.loads(line)["event"] == "published"
        ]
        assert published[-1]["active_kid"] == "es-b"
    finally:
        cycle.close()


@contextlib.contextmanager
def killed_at_write(name: str) -> Iterator[None]:
    """State writes of ``name`` end the process there (SystemExit), as a kill -9 would."""
    import keysetd.state

    real = keysetd.state.write_atomic

    def killed(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.name == name:
            raise SystemExit("kill -9 here")
        real(path, *args, **kwargs)

    keysetd.state.write_atomic = killed  # type: ignore[assignment]
    try:
        yield
    finally:
        keysetd.state.write_atomic = real


def test_a_rewrap_cut_off_at_the_last_known_good_leaves_it_trusted(tmp_path: Path) -> None:
    """The digest history records is of the document: re-sealing it writes no history, so
    a kill between the two writes cannot leave a file that history disowns."""
    key = make_key(tmp_path / "k")
    state = StateStore(tmp_path / "state", sealer(key))
    state.ensure()
    state.save_lkg(LastKnownGood(b'{"keys":[]}', "jwks", "o", 1.0, "fp"), {})
    history = state.history_path.read_bytes()
    with killed_at_write("last-known-good.json"), pytest.raises(SystemExit):
        StateStore(tmp_path / "state", sealer(key)).rewrap()
    assert state.history_path.read_bytes() == history
    assert StateStore(tmp_path / "state", sealer(key)).verified_lkg() is not None
    StateStore(tmp_path / "state", sealer(key)).rewrap()
    assert state.history_path.read_bytes() == history
    assert StateStore(tmp_path / "state", sealer(key)).verified_lkg() is not None


def test_a_move_between_two_key_files_cut_off_half_way_completes_when_run_again(
    tmp_path: Path,
) -> None:
    """Each file opens with whichever of the two keys sealed it (one provider type)."""
    old, new = make_key(tmp_path / "a"), make_key(tmp_path / "b")
    state = StateStore(tmp_path / "state", sealer(old))
    state.ensure()
    state.save_lkg(LastKnownGood(b'{"keys":[]}', "jwks", "o", 1.0, "fp"), {})
    state.save_signer(b'{"keys":[]}')
    with killed_at_write("signer-keyset.json"), pytest.raises(SystemExit):
        StateStore(tmp_path / "state", sealer(new)).rewrap(previous=sealer(old))
    moved = StateStore(tmp_path / "state", sealer(new)).rewrap(previous=sealer(old))
    assert {name for name, _, _ in moved} == {"last-known-good.json", "signer-keyset.json"}
    done = StateStore(tmp_path / "state", sealer(new))
    assert done.verified_lkg() is not None and done.load_signer() is not None
