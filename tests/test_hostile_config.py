"""Hostile config and state through the real daemon: refused by name at load, never a traceback.

Issue 12: a pid above 2^63 (pidfile or ``pid =``) killed ``keysetd run``; absurd
durations were accepted and then crashed ``status`` and ``plan``;
``refresh_interval = 0`` spun; a Kubernetes Service named ``keysetd`` injected
variables that made keysetd refuse to start.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, wait_for
from tests.keys import jwks_doc

HUGE_PID = 2**64


def active(path: Path) -> str | None:
    try:
        return json.loads(path.read_bytes()).get("active_kid")
    except (OSError, ValueError):
        return None


def log_lines(env: Env, *needles: str) -> list[str]:
    """Log lines holding every needle."""
    return [line for line in env.log().splitlines() if all(n in line for n in needles)]


def refused(env: Env, *args: str) -> str:
    """Run keysetd; it must exit 2 (configuration error) without a traceback. Its stderr."""
    done = env.keysetd(*args, "--config", str(env.config_path), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


# -- pids ---------------------------------------------------------------------------------


def test_pidfile_above_2_64_is_a_notify_error_and_the_daemon_stays_up(
    env: Env, keys: dict[str, Any]
) -> None:
    pidfile = env.root / "app.pid"
    pidfile.write_text(f"{HUGE_PID}\n")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(notify=[{"type": "signal", "pidfile": str(pidfile), "retries": 0}])
    proc = env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    wait_for(
        lambda: log_lines(env, str(pidfile), "above the kernel's pid_max"),
        timeout=10,
        what="a notify error naming the pidfile",
    )
    assert "Traceback" not in env.log()
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(env.signer) == "es-b", what="the next change")
    assert proc.poll() is None, env.log()
    assert "Traceback" not in env.log()


def test_pid_above_pid_max_is_refused_at_config_load(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    nats = {"type": "nats", "config": "/etc/nats.conf", "include": str(env.out / "n.conf")}
    env.config(notify=[{"type": "signal", "pid": HUGE_PID}, {**nats, "pid": HUGE_PID}])
    stderr = refused(env, "run")
    assert "notify.0.pid: must be a pid from 1 to" in stderr
    assert "notify.1.pid: must be a pid from 1 to" in stderr
    assert not env.signer.exists()


# -- durations ------------------------------------------------------------------------------

ABSURD = [
    ("policy", "retention", "9999999999999999999d", "at most 3650d"),
    ("policy", "retention", 1e300, "at most 3650d"),
    ("policy", "activation_delay", float("inf"), "at most 3650d"),
    ("policy", "activation_delay", float("nan"), "not NaN"),
    ("policy", "max_staleness", "0s", "greater than 0"),
    ("source", "refresh_interval", 0, "at least 100ms"),
    ("source", "refresh_interval", "2d", "at most 1d"),
    ("source", "timeout", 0, "greater than 0s"),
    ("source", "timeout", "2h", "at most 1h"),
    ("rotation", "every", "1ms", "at least 1s"),
]


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    ABSURD,
    ids=[f"{table}.{key}={value}" for table, key, value, _ in ABSURD],
)
def test_absurd_durations_are_refused_by_name(
    env: Env, keys: dict[str, Any], table: str, key: str, value: object, message: str
) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    extra: dict[str, Any] = {table: {key: value}}
    if table == "rotation":
        extra["rotation"] = {"every": value, "alg": "ES256"}
    env.config(**extra)
    stderr = refused(env, "run")
    assert f"{table}.{key}: " in stderr and message in stderr, stderr
    assert not env.jwks.exists()


def test_every_plugin_timeout_is_bounded(env: Env, keys: dict[str, Any]) -> None:
    """Notifier tables too (command, systemd, nats type it as a plain duration)."""
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(
        notify=[
            {"type": "command", "argv": ["/bin/true"], "timeout": 0},
            {"type": "systemd", "unit": "x.service", "timeout": "3650d"},
        ]
    )
    stderr = refused(env, "check-config")
    assert "notify.0.timeout: must be greater than 0s" in stderr
    assert "notify.1.timeout: must be at most 1h" in stderr


def test_refresh_interval_from_the_environment_is_named(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    done = env.keysetd(
        "run",
        "--config",
        str(env.config_path),
        env={"RGS_JWT_KEYSET_REFRESH_INTERVAL": "0"},
    )
    assert done.returncode == 2, done.stderr
    assert "source.refresh_interval: must be at least 100ms" in done.stderr
    assert "$RGS_JWT_KEYSET_REFRESH_INTERVAL" in done.stderr


def test_sighup_to_a_zero_refresh_interval_keeps_the_running_config(
    env: Env, keys: dict[str, Any]
) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    proc = env.start()
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    env.config(source={"refresh_interval": 0})
    proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: log_lines(env, "reload_refused", "source.refresh_interval"),
        timeout=5,
        what="the reload refused by key",
    )
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: active(env.signer) == "es-b", what="still serving")
    assert proc.poll() is None


# -- status and plan over whatever state holds ---------------------------------------------


def test_status_and_plan_print_out_of_range_times_from_state(
    env: Env, keys: dict[str, Any]
) -> None:
    """State left by an older keysetd (or a person): huge, infinite or wrong-typed times."""
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(policy={"retention": "1h"})
    env.keysetd("once", "--config", str(env.config_path), check=True)
    env.write_source(jwks_doc(keys["es-b"], active="es-b"))
    env.keysetd("once", "--config", str(env.config_path), check=True)

    history_path = env.state / "history.json"
    history = json.loads(history_path.read_text())
    history["keys"]["es-a"]["left_source_at"] = 1e300  # until = 1e300 + retention
    history_path.write_text(json.dumps(history))
    status_path = env.state / "status.json"
    status = json.loads(status_path.read_text())
    status["keys"] = [
        {"kid": "es-a", "state": "retained", "reason": "left", "until": 1e300},
        {"kid": "es-b", "state": "active", "reason": "x", "until": "soon"},
        {"kid": 7, "until": float("inf")},
        "not a table",
    ]
    status["published_kids"] = ["es-a", 5]
    text = json.dumps(status)[:-1] + ', "lkg_fetched_at": ' + "9" * 400 + "}"
    status_path.write_text(text)

    for args in (["status"], ["status", "--json"], ["plan"]):
        done = env.keysetd(*args, "--config", str(env.config_path))
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in (0, 1), done.stderr
    shown = env.keysetd("status", "--config", str(env.config_path)).stdout
    assert "es-a" in shown and "out of range" in shown and "lkg age:        -" in shown
    plan = env.keysetd("plan", "--config", str(env.config_path)).stdout
    assert "es-a" in plan and "out of range" in plan


# -- Kubernetes service links ----------------------------------------------------------------

#: What a Service named keysetd (port 9464, named http) injects into every pod.
SERVICE_LINKS = {
    "KEYSETD_SERVICE_HOST": "10.96.0.12",
    "KEYSETD_SERVICE_PORT": "9464",
    "KEYSETD_SERVICE_PORT_HTTP": "9464",
    "KEYSETD_PORT": "tcp://10.96.0.12:9464",
    "KEYSETD_PORT_9464_TCP": "tcp://10.96.0.12:9464",
    "KEYSETD_PORT_9464_TCP_PROTO": "tcp",
    "KEYSETD_PORT_9464_TCP_PORT": "9464",
    "KEYSETD_PORT_9464_TCP_ADDR": "10.96.0.12",
}


def test_kubernetes_service_links_do_not_stop_the_daemon(env: Env, keys: dict[str, Any]) -> None:
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config()
    proc = env.start(env=SERVICE_LINKS)
    wait_for(lambda: active(env.signer) == "es-a", what="first publish")
    assert proc.poll() is None
    assert "unknown key" not in env.log()
