"""Issue 12, lost or half-written files, through real ``keysetd`` processes.

An output over keysetd's own inputs is refused at config load; a pem directory
switches as one step and removes only what keysetd wrote; a kid that cannot be
a file name, or a missing directory, fails the cycle before any output is
written, so every output stays old and ``status`` tells the truth.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from keysetd.config import load_config
from keysetd.errors import ConfigError
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.pemdir import check_pem_dir


def status(env: Env) -> dict[str, Any]:
    return StateStore(env.state).load_status() or {}


def outputs_bytes(env: Env) -> dict[str, bytes]:
    """Every output file as a consumer reads it (pem names followed into ``..data``)."""
    found = {}
    for path in sorted(env.out.rglob("*")):
        if path.is_file() and ".." not in path.relative_to(env.out).as_posix():
            found[str(path.relative_to(env.out))] = path.read_bytes()
    return found


# -- an output over the source, the config, state_dir or another output --------------------


def test_output_over_the_source_is_refused_and_the_source_survives(env: Env) -> None:
    source = jwks_doc(jwk("ES256", "s0"), active="s0")
    env.write_source(source)
    alias = env.root / "src-alias"
    alias.symlink_to(env.source.parent, target_is_directory=True)
    sneaky = env.out / ".." / "src-alias" / "keyset.json"  # a symlink and ".." away
    env.config(
        outputs=[
            {"type": "jwks", "path": str(sneaky), "name": "public"},
            {"type": "keyset", "path": str(env.signer)},
        ]
    )
    proc = env.start()
    assert proc.wait(timeout=20) == 2
    log = env.log()
    assert "outputs.0.path: output 'public'" in log, log
    assert str(sneaky) in log and str(env.source) in log and "the source file" in log, log
    assert env.source.read_bytes() == source
    checked = env.keysetd("check-config", "--config", str(env.config_path))
    assert checked.returncode == 2
    assert "outputs.0.path" in checked.stderr and str(env.source) in checked.stderr
    assert env.source.read_bytes() == source
    assert not env.signer.exists()


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([{"type": "jwks", "path": "{config}"}], "is the config file"),
        ([{"type": "jwks", "path": "{state}/history.json"}], "lies inside state_dir"),
        ([{"type": "pem", "path": "{state}"}], "is state_dir"),
        ([{"type": "pem", "path": "{src}"}], "contains the source file"),
        (
            [{"type": "jwks", "path": "{out}/pem/jwks.json"}, {"type": "pem", "path": "{out}/pem"}],
            "outputs.1.path: output 'pem' ({out}/pem) contains outputs.0 'jwks'",
        ),
        (
            [{"type": "pem", "path": "{out}/pem"}, {"type": "jwks", "path": "{out}/pem/jwks.json"}],
            "outputs.1.path: output 'jwks' ({out}/pem/jwks.json) lies inside outputs.0 'pem'",
        ),
        (
            [
                {"type": "jwks", "path": "{out}/a.json"},
                {"type": "jwks", "name": "b", "path": "{out}/x/../a.json"},
            ],
            "outputs.1.path: output 'b' ({out}/x/../a.json (-> {out}/a.json)) is outputs.0",
        ),
    ],
)
def test_overlapping_outputs_are_refused_at_config_load(
    env: Env, outputs: list[dict[str, str]], expected: str
) -> None:
    env.write_source(jwks_doc(jwk("ES256", "o0"), active="o0"))
    (env.out / "x").mkdir()
    names = {
        "config": str(env.config_path),
        "state": str(env.state),
        "src": str(env.source.parent),
        "out": str(env.out),
    }
    for table in outputs:
        table["path"] = table["path"].format(**names)
    env.config(outputs=outputs)
    with pytest.raises(ConfigError) as caught:
        load_config(env.config_path, environ={})
    assert expected.format(**names) in str(caught.value), str(caught.value)


def test_outputs_next_to_each_other_are_accepted(env: Env) -> None:
    env.write_source(jwks_doc(jwk("ES256", "n0"), active="n0"))
    env.config(
        outputs=[
            *env.outputs_with_pem(),
            {"type": "jwks", "name": "b", "path": str(env.out / "pem.json")},
        ]
    )
    assert len(load_config(env.config_path, environ={}).outputs) == 4


# -- a pem directory removes only what keysetd wrote -----------------------------------------


def test_foreign_files_in_the_pem_directory_survive_publishes_and_removals(env: Env) -> None:
    keys = [jwk("ES256", f"p{i}") for i in range(3)]
    env.pem.mkdir()
    foreign = {"notmine.pem": b"an operator's CA\n", "server.key": b"not keysetd's\n"}
    for name, data in foreign.items():
        (env.pem / name).write_bytes(data)
    env.write_source(jwks_doc(keys[0], keys[1], active="p0"))
    env.config(outputs=env.outputs_with_pem())
    env.start()
    wait_for(lambda: check_pem_dir(env.pem) == {"p0", "p1"}, what="first publish")
    env.write_source(jwks_doc(keys[2], active="p2"))  # p0 and p1 leave: their files go
    wait_for(lambda: check_pem_dir(env.pem) == {"p2"}, what="the removal of p0 and p1")
    wait_for(lambda: json.loads(env.signer.read_bytes())["active_kid"] == "p2", what="signer")
    for name, data in foreign.items():
        assert (env.pem / name).read_bytes() == data
    shown = sorted(p.name for p in env.pem.iterdir() if not p.name.startswith(".."))
    assert shown == ["notmine.pem", "p2.pem", "server.key"]
    assert env.procs[-1].poll() is None


# -- a kid too long for a file name, a missing directory: every output old -------------------


def _running(env: Env, outputs: list[dict[str, str]]) -> list[dict[str, Any]]:
    keys = [jwk("ES256", "k0"), jwk("ES256", "k1")]
    env.write_source(jwks_doc(keys[0], active="k0"))
    env.config(outputs=outputs)
    env.start()
    wait_for(lambda: status(env).get("published_kids") == ["k0"], what="first publish")
    return keys


def _assert_all_old(env: Env, before: dict[str, bytes], fingerprint: str) -> None:
    assert outputs_bytes(env) == before
    now = status(env)
    assert now["fingerprint"] == fingerprint and now["published_kids"] == ["k0"]
    assert now["active_kid"] == "k0"
    assert env.procs[-1].poll() is None, "the daemon must stay up"


def test_a_kid_too_long_for_a_file_name_is_published_under_a_hashed_name(env: Env) -> None:
    keys = _running(env, env.outputs_with_pem())
    long_kid = "k" * 252
    document = env.root / "long-kid.json"
    document.write_bytes(jwks_doc(jwk("ES256", long_kid), keys[0], active=long_kid))
    assert env.keysetd("validate", str(document)).returncode == 0
    env.write_source(document.read_bytes())
    wait_for(lambda: status(env).get("active_kid") == long_kid, what="the long kid published")
    index = json.loads((env.pem / "index.json").read_bytes())["kids"]
    assert index["k0"] == "k0.pem" and index[long_kid].startswith("%sha256-")
    assert (env.pem / index[long_kid]).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    check_pem_dir(env.pem)
    env.write_source(jwks_doc(keys[1], keys[0], active="k1"))  # the old active kid may linger
    wait_for(lambda: status(env).get("active_kid") == "k1", what="the next snapshot")
    assert {"k0", "k1"} <= check_pem_dir(env.pem)


def test_a_missing_output_directory_leaves_every_output_old(env: Env) -> None:
    sign = env.out / "sign"
    sign.mkdir()
    outputs = [*env.outputs_with_pem()[:2], {"type": "keyset", "path": str(sign / "keyset.json")}]
    keys = _running(env, outputs)
    before, fingerprint = outputs_bytes(env), status(env)["fingerprint"]
    (sign / "keyset.json").unlink()
    sign.rmdir()
    del before["sign/keyset.json"]
    env.write_source(jwks_doc(keys[1], keys[0], active="k1"))
    error = wait_for(lambda: status(env).get("last_error"), what="the missing directory")
    assert str(sign) in error and "No such file or directory" in error, error
    _assert_all_old(env, before, fingerprint)
    assert [p for p in env.out.rglob("*") if ".keysetd-" in p.name] == []
    sign.mkdir()
    env.procs[-1].send_signal(signal.SIGHUP)  # refetch now rather than at the backoff retry
    wait_for(lambda: status(env).get("active_kid") == "k1", timeout=15, what="recovery")
    assert json.loads((sign / "keyset.json").read_bytes())["active_kid"] == "k1"
    assert os.readlink(env.pem / "k1.pem") == "..data/k1.pem"


def test_a_foreign_file_at_a_kid_name_fails_the_cycle_with_every_output_old(env: Env) -> None:
    from keysetd.pipeline import Pipeline

    keys = [jwk("ES256", "f0"), jwk("ES256", "f1")]
    env.write_source(jwks_doc(keys[0], active="f0"))
    env.config(outputs=env.outputs_with_pem())
    pipeline = Pipeline.open(load_config(env.config_path, environ={}))
    assert pipeline.cycle().ok
    (env.pem / "f1.pem").write_bytes(b"an operator's file\n")
    before = outputs_bytes(env)
    env.write_source(jwks_doc(keys[1], keys[0], active="f1"))
    result = pipeline.cycle()
    assert not result.ok and result.error is not None
    assert str(env.pem / "f1.pem") in result.error and "did not write" in result.error
    assert outputs_bytes(env) == before
    (env.pem / "f1.pem").unlink()
    assert pipeline.cycle().ok
    assert check_pem_dir(env.pem) == {"f0", "f1"}
