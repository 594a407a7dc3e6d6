"""The real ``keysetd run`` process: triggers, bad input, reload, stop, notifiers, restarts."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.servers import Reply, http_server


def kids(path: Path) -> list[str]:
    try:
        return [k["kid"] for k in json.loads(path.read_bytes())["keys"]]
    except (OSError, ValueError):
        return []


def active(path: Path) -> str | None:
    try:
        return json.loads(path.read_bytes()).get("active_kid")
    except (OSError, ValueError):
        return None


def events(env: Env, name: str) -> list[dict[str, Any]]:
    found = []
    for line in env.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == name:
            found.append(entry)
    return found


@pytest.fixture
def running(env: Env, keys: dict[str, dict[str, Any]]) -> Env:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    return env


def test_first_publish_modes_and_contents(running: Env, keys: dict[str, Any]) -> None:
    assert kids(running.jwks) == ["es-a"]
    jwks = json.loads(running.jwks.read_bytes())
    assert "d" not in jwks["keys"][0]
    assert os.stat(running.jwks).st_mode & 0o777 == 0o644
    assert os.stat(running.signer).st_mode & 0o777 == 0o600
    assert json.loads(running.signer.read_bytes())["keys"][0]["d"] == keys["es-a"]["d"]


def test_atomic_rename_is_picked_up(running: Env, keys: dict[str, Any]) -> None:
    running.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="rename")
    assert kids(running.jwks) == ["es-b", "es-a"]


def test_in_place_write_is_picked_up(running: Env, keys: dict[str, Any]) -> None:
    with running.source.open("wb") as handle:
        handle.write(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="in-place write")


def test_delete_and_recreate(running: Env, keys: dict[str, Any]) -> None:
    before = running.snapshot_outputs()
    running.source.unlink()
    wait_for(lambda: events(running, "cycle_failed"), timeout=5, what="failure on deletion")
    assert running.snapshot_outputs() == before
    running.source.write_bytes(jwks_doc(keys["es-b"], keys["es-a"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="re-creation")


def test_kubernetes_configmap_symlink_swap(env: Env, keys: dict[str, Any]) -> None:
    mount = env.source.parent
    first = mount / "..2026_11_23_00_00_00.1"
    first.mkdir()
    (first / "keyset.json").write_bytes(jwks_doc(keys["es-a"], active="es-a"))
    (mount / "..data").symlink_to(first.name)
    env.source.symlink_to("..data/keyset.json")
    env.config()
    env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    second = mount / "..2026_11_23_00_01_00.2"
    second.mkdir()
    (second / "keyset.json").write_bytes(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    wait_for(lambda: active(env.signer) == "es-b", timeout=5, what="..data swap")


BAD_DOCUMENTS: dict[str, Any] = {
    "garbage": lambda k: b"\x00\xffnot a keyset at all",
    "truncated-json": lambda k: jwks_doc(k["es-b"], active="es-b")[:40],
    "empty-file": lambda k: b"",
    "alg-none": lambda k: jwks_doc({**k["es-b"], "alg": "none"}, active="es-b"),
    "alg-mismatch": lambda k: jwks_doc({**k["es-b"], "alg": "RS256"}, active="es-b"),
    "missing-active-kid": lambda k: jwks_doc(k["es-a"], k["es-b"]),
    "duplicate-kid": lambda k: jwks_doc(k["es-b"], k["es-b"], active="es-b"),
    "empty-keyset": lambda k: b'{"keys": []}',
    "point-not-on-curve": lambda k: jwks_doc({**k["es-b"], "y": k["es-c"]["y"]}, active="es-b"),
    "private-mismatch": lambda k: jwks_doc({**k["es-b"], "d": k["es-c"]["d"]}, active="es-b"),
    "kid-reused": lambda k: jwks_doc({**k["es-b"], "kid": "es-a"}, active="es-a"),
    "too-large": lambda k: b'{"keys": [], "pad": "' + b"x" * (20 << 20) + b'"}',
    "rsa-too-small": lambda k: jwks_doc(jwk("RS256", "rsa-1024", bits=1024), active="rsa-1024"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_bad_input_keeps_outputs_and_daemon(running: Env, keys: dict[str, Any], case: str) -> None:
    before = running.snapshot_outputs()
    running.write_source(BAD_DOCUMENTS[case](keys))
    failure = wait_for(lambda: events(running, "cycle_failed"), timeout=10, what="rejection")
    rule = {"garbage": "malformed", "truncated-json": "malformed", "empty-file": "malformed"}
    assert rule.get(case, case) in failure[0]["error"], failure[0]["error"]
    assert running.snapshot_outputs() == before
    assert running.procs[0].poll() is None
    running.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="recovery")


def test_sighup_rereads_config(running: Env) -> None:
    pem_dir = running.out / "pem"
    running.config(
        outputs=[
            {"type": "jwks", "path": str(running.jwks)},
            {"type": "keyset", "path": str(running.signer)},
            {"type": "pem", "path": str(pem_dir)},
        ]
    )
    running.procs[0].send_signal(signal.SIGHUP)
    wait_for((pem_dir / "es-a.pem").exists, timeout=5, what="new output after SIGHUP")


def test_sighup_with_broken_config_keeps_running(running: Env, keys: dict[str, Any]) -> None:
    running.config_path.write_text("[source\nbroken")
    running.procs[0].send_signal(signal.SIGHUP)
    wait_for(lambda: events(running, "reload_refused"), timeout=5, what="refusal")
    running.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="still serving")


def test_sigterm_stops_cleanly(running: Env) -> None:
    proc = running.procs[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert events(running, "stopped")


def test_second_daemon_on_same_state_dir_refuses(running: Env) -> None:
    second = running.keysetd("run", "--config", str(running.config_path), timeout=10)
    assert second.returncode == 2
    assert "in use by another keysetd" in second.stderr


def test_restart_with_source_gone_republishes_last_known_good(running: Env) -> None:
    before = running.snapshot_outputs()
    running.procs[0].send_signal(signal.SIGTERM)
    running.procs[0].wait(timeout=5)
    running.source.unlink()
    for path in running.out.iterdir():
        path.unlink()
    running.start()
    wait_for(running.signer.exists, timeout=5, what="republish from last-known-good")
    assert running.snapshot_outputs() == before
    status = json.loads(running.keysetd("status", "--json", "-c", str(running.config_path)).stdout)
    assert status["last_error"] and "no such file" in status["last_error"].lower()
    assert status["active_kid"] == "es-a"


def test_interval_refresh_without_watch(env: Env, keys: dict[str, Any]) -> None:
    """A command source has nothing to watch: refresh_interval alone brings changes in."""
    held = env.root / "held.json"
    held.write_bytes(jwks_doc(keys["es-a"], active="es-a"))
    env.config(
        source={"type": "command", "argv": ["/bin/cat", str(held)], "refresh_interval": "200ms"}
    )
    env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    held.write_bytes(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(env.signer) == "es-b", timeout=5, what="interval refresh")


# -- notifiers ----------------------------------------------------------------

CHILD = r"""
import os, signal, sys, time
out = sys.argv[1]
def on_hup(signum, frame):
    with open(out, "a") as f:
        f.write("HUP\n")
signal.signal(signal.SIGHUP, on_hup)
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def child(env: Env) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    got, pidfile = env.root / "child.log", env.root / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(got), str(pidfile)])
    wait_for(pidfile.exists, what="child pidfile")
    yield proc, got, pidfile
    proc.kill()
    proc.wait(timeout=5)


def test_signal_notifier_reaches_a_real_process_once_per_change(
    env: Env, keys: dict[str, Any], child: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    _proc, got, pidfile = child
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(notify=[{"type": "signal", "pidfile": str(pidfile), "signal": "SIGHUP"}])
    env.start()
    wait_for(lambda: got.exists() and got.read_text().count("HUP") == 1, what="first signal")
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: got.read_text().count("HUP") == 2, timeout=5, what="signal on change")
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))  # same bytes
    env.write_source(b"garbage")
    wait_for(lambda: events(env, "cycle_failed"), what="rejection")
    assert got.read_text().count("HUP") == 2


def test_verifiers_are_committed_and_notified_before_signers(
    env: Env, keys: dict[str, Any]
) -> None:
    seen = env.root / "seen"
    seen.mkdir()
    script = f"cp {env.signer} {seen}/signer-at-jwks-notify 2>/dev/null; cp {env.jwks} {seen}/jwks"
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(notify=[{"type": "command", "argv": ["/bin/sh", "-c", script], "outputs": ["jwks"]}])
    env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    old_signer = env.signer.read_bytes()
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(env.signer) == "es-b", timeout=5, what="rotation")
    wait_for(lambda: "es-b" in kids(seen / "jwks"), what="notifier ran")
    assert (seen / "signer-at-jwks-notify").read_bytes() == old_signer


def test_http_notifier_posts_to_a_real_server(env: Env, keys: dict[str, Any]) -> None:
    with http_server() as server:
        server.reply = Reply(204)
        env.write_source(jwks_doc(keys["es-a"], active="es-a"))
        env.config(notify=[{"type": "http", "url": server.url("/-/reload")}])
        env.start()
        wait_for(lambda: server.hits(path="/-/reload"), what="webhook")
        body = json.loads(server.hits()[0].body)
        assert body["active_kid"] == "es-a"
        assert sorted(body["outputs"]) == ["jwks", "keyset"]
        assert len(body["fingerprint"]) == 64


def test_a_signal_storm_never_deadlocks_the_daemon(running: Env) -> None:
    """Signal handlers take no lock: a burst of SIGHUPs, then SIGTERM, and keysetd exits.

    The handlers once called ``threading.Event.set``; a signal landing while the main
    thread held that Event's lock (inside ``wait`` or ``clear``) hung the daemon forever.
    """
    proc = running.procs[0]
    deadline = time.monotonic() + 5
    for sent in range(2000):
        if time.monotonic() > deadline or proc.poll() is not None:
            break
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.0005 if sent % 50 else 0.02)
    assert proc.poll() is None, running.log()[-2000:]
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("keysetd did not exit within 10 s of SIGTERM after a SIGHUP burst")
    assert events(running, "config_reloaded")


# -- failure handling (issue 12) -------------------------------------------------------------


def audit_events(env: Env) -> list[str]:
    path = env.state / "audit.jsonl"
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_a_failing_due_change_backs_off_and_is_audited_once(env: Env, keys: dict[str, Any]) -> None:
    """After retention ends the nats output cannot render the plan (no Ed25519 key left).

    The change stays due; the daemon used to retry it every 10 ms, writing an
    fsynced audit line each time (372 cycles and audit lines in 4 s).
    """
    nats = env.out / "nats.conf"
    env.write_source(jwks_doc(keys["ed-a"], keys["es-b"]))
    env.config(
        policy={"retention": "1s"},
        outputs=[{"type": "jwks", "path": str(env.jwks)}, {"type": "nats", "path": str(nats)}],
    )
    env.start()
    wait_for(nats.exists, what="first publish")
    env.write_source(jwks_doc(keys["es-b"]))
    wait_for(lambda: "ed-a" in kids(env.jwks) and events(env, "cycle_failed"), what="failure")
    before = env.snapshot_outputs()
    window_end = time.monotonic() + 2.0

    def window_over() -> bool:
        # Backoff 1 s, 2 s (jitter +-10%): failures at ~0, ~1 and ~3 s (the spin made ~200).
        assert len(events(env, "cycle_failed")) <= 3, len(events(env, "cycle_failed"))
        return time.monotonic() >= window_end

    wait_for(window_over, timeout=4, what="a 2 s window of failures")
    failed = len(events(env, "cycle_failed"))
    assert 2 <= failed <= 3, failed
    assert "needs Ed25519" in events(env, "cycle_failed")[-1]["error"]
    assert env.snapshot_outputs() == before  # every output as it was
    assert audit_events(env).count("commit_failed") == 1  # the repeats are only counted
    assert env.procs[0].poll() is None

    # Recovery: a new Ed25519 key; the count of repeats is written before the publish.
    env.write_source(jwks_doc(jwk("EdDSA", "ed-b"), keys["es-b"]))
    wait_for(lambda: "ed-b" in nats.read_text(), timeout=10, what="recovery")

    def published_after_the_summary() -> bool:
        """The publish is audited after the commit and its notifiers: later than nats.conf."""
        try:
            names = audit_events(env)
        except ValueError:  # a line being appended
            return False
        tail = names[names.index("failure_repeated") :] if "failure_repeated" in names else []
        return "published" in tail

    wait_for(published_after_the_summary, what="the publish audited after the summary")
    lines = [json.loads(x) for x in (env.state / "audit.jsonl").read_text().splitlines()]
    names = [line["event"] for line in lines]
    summary = lines[names.index("failure_repeated")]
    assert names.index("commit_failed") < names.index("failure_repeated") < len(names) - 1
    assert summary["failed"] == "commit_failed" and summary["stage"] == "commit"
    assert summary["repeats"] == len(events(env, "cycle_failed")) - 1
    verdict = env.keysetd("audit", "verify", "-c", str(env.config_path))
    assert verdict.returncode == 0 and "intact" in verdict.stdout, verdict.stdout


def status_json(env: Env, config: Path) -> dict[str, Any]:
    done = env.keysetd("status", "--json", "-c", str(config))
    assert done.returncode in (0, 1), done.stderr  # 1: there is a last error
    return dict(json.loads(done.stdout))


def test_sighup_with_an_unknown_key_names_it_in_the_log_and_status(
    running: Env, keys: dict[str, Any]
) -> None:
    good = running.config_path.read_text()
    reader = running.root / "reader.toml"  # `status` needs a config it can load
    reader.write_text(good)
    running.config_path.write_text('refresh_intervall = "5s"\n' + good)
    running.procs[0].send_signal(signal.SIGHUP)
    refused = wait_for(lambda: events(running, "reload_refused"), timeout=5, what="refusal")[0]
    assert "refresh_intervall: unknown key" in refused["error"], refused
    assert "\n" not in refused["error"]  # one log line, also in the text format
    assert refused["problems"] == ["refresh_intervall: unknown key"]
    last = wait_for(
        lambda: (
            (e := status_json(running, reader)["last_error"]) and "refresh_intervall" in e and e
        ),
        timeout=5,
        what="status naming the key",
    )
    assert "unknown key" in last

    # The daemon keeps serving under the old config, and status keeps naming the key.
    running.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(running.signer) == "es-b", timeout=5, what="still serving")
    doc = status_json(running, reader)
    assert doc["active_kid"] == "es-b" and "refresh_intervall" in (doc["last_error"] or "")

    # Fixed and reloaded: the error is gone from status.
    running.config_path.write_text(good)
    running.procs[0].send_signal(signal.SIGHUP)
    wait_for(lambda: events(running, "config_reloaded"), timeout=5, what="reload")
    wait_for(
        lambda: status_json(running, reader)["last_error"] is None, timeout=5, what="error cleared"
    )


def _log_time(entry: dict[str, Any]) -> float:
    stamp = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def test_a_planned_change_is_applied_without_asking_the_source_again(
    env: Env, keys: dict[str, Any]
) -> None:
    """After a change, the retained old key is dropped by a re-plan, not by a second fetch.

    Every source paid for it: a vault_transit source read the transit key twice per
    rotation, a command source ran its KMS client twice.
    """
    fetches = env.root / "fetches"
    staged = env.root / "staged.json"
    staged.write_bytes(jwks_doc(keys["es-a"]))
    script = f'date +%s.%N >> "{fetches}"; exec cat "{staged}"'
    env.config(
        source={"type": "command", "argv": ["/bin/sh", "-c", script], "refresh_interval": "1s"}
    )
    env.start()
    wait_for(lambda: kids(env.jwks) == ["es-a"], what="first publish")
    staged.write_bytes(jwks_doc(keys["es-b"]))  # es-a leaves; retention 0

    def dropped() -> bool:  # the log line follows the commit
        return kids(env.jwks) == ["es-b"] and any(
            e["kids"] == "es-b" for e in events(env, "published")
        )

    wait_for(dropped, timeout=10, what="es-a dropped")
    published = [e for e in events(env, "published") if "es-b" in e["kids"].split(",")]
    both, alone = published[0], published[-1]
    assert set(both["kids"].split(",")) == {"es-a", "es-b"} and alone["kids"] == "es-b"
    fetched_at = [float(line) for line in fetches.read_text().split()]
    between = [t for t in fetched_at if _log_time(both) < t < _log_time(alone) - 0.001]
    assert between == [], "the source was fetched again to apply a planned change"
    # The refresh still runs on its own schedule.
    count = len(fetched_at)
    wait_for(lambda: len(fetches.read_text().split()) >= count + 2, timeout=5, what="refreshes")
