"""Two ``keysetd run`` on one state_dir: the second refuses (exit 2) and corrupts nothing.

The second start is tried again and again while the first is busy rotating, so
it meets the first mid-commit: it must not clean the first's temp files, touch
the lock holder's pid, write an output or append to the audit log.
"""

from __future__ import annotations

import json
import signal

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from keysetd.audit_read import verify
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc

SECOND_STARTS = 8


def test_second_daemon_on_same_state_dir_refuses_while_first_rotates(env: Env) -> None:
    pool = [jwk("ES256", f"c{i}") for i in range(4)]
    pem_dir = env.pem

    def document(gen: int) -> bytes:
        current, previous = pool[gen % 4], pool[(gen - 1) % 4]
        return jwks_doc(*([current, previous] if gen else [current]), active=current["kid"])

    env.write_source(document(0))
    env.config(outputs=env.outputs_with_pem())
    first = env.start()
    wait_for(env.signer.exists, what="first publish")
    lock = env.state / "lock"
    holder = lock.read_text()
    assert holder.strip() == str(first.pid)
    gen = 0
    for _ in range(SECOND_STARTS):
        gen += 1
        env.write_source(document(gen))  # the first daemon is now busy publishing it
        second = env.keysetd("run", "--config", str(env.config_path), timeout=30)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "in use by another keysetd" in second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stdout + second.stderr
        assert lock.read_text() == holder
        assert verify(StateStore(env.state).audit_path).ok
        signer = json.loads(env.signer.read_bytes())
        published = {k["kid"] for k in json.loads(env.jwks.read_bytes())["keys"]}
        assert signer["active_kid"] in published
        for pem in pem_dir.glob("*.pem"):
            load_pem_public_key(pem.read_bytes())
    expected = pool[gen % 4]["kid"]
    wait_for(
        lambda: json.loads(env.signer.read_bytes())["active_kid"] == expected,
        what="the first daemon publishing the last document",
    )
    assert first.poll() is None, "the first daemon must keep running"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    store = StateStore(env.state)
    assert verify(store.audit_path).ok
    assert store.load_lkg() is not None and store.load_history()
    assert [p for p in env.root.rglob("*") if ".keysetd-" in p.name] == []
    assert {p.stem for p in pem_dir.glob("*.pem")} == {
        pool[gen % 4]["kid"],
        pool[(gen - 1) % 4]["kid"],
    }
