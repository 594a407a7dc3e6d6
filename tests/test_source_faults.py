"""Source faults through a real ``keysetd run``: outputs hold, status and /readyz tell, and the
daemon recovers by itself when the fault ends.

A loopback JWKS provider whose answer the test flips (503, 403, slow past the
timeout, garbage, empty, stopped), a command source script switched by a mode
file (hang, non-zero exit, 50 MiB, garbage), a real OpenBao sealed and unsealed,
and a real moto KMS key disabled and enabled. The outage request rate is
checked against keysetd.backoff.next_wait.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from keysetd.backoff import next_wait
from tests.conftest import Env, wait_for
from tests.keys import jwks_doc
from tests.servers import HttpServer, Reply, Seen, free_port
from tests.test_aws_kms_plugin import REGION, fake_aws, new_alias, new_key
from tests.test_operations import get
from tests.test_vault_plugin import Bao

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def public(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k not in PRIVATE_MEMBERS}


# --- a JWKS provider on loopback whose behaviour the test flips ------------------------------


class Provider:
    """A real HTTP server on a fixed loopback port that can be stopped and started again.

    ``hits`` is (monotonic time, status answered), 0 for a request held past keysetd's timeout.
    """

    def __init__(self) -> None:
        self.server = HttpServer()
        self.server.respond = self._respond
        self.answer = Reply(200, b'{"keys": []}', {"Content-Type": "application/json"})
        self.hits: list[tuple[float, int]] = []

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url("/realms/app/protocol/openid-connect/certs")

    def _respond(self, seen: Seen) -> Reply:
        answer = self.answer
        self.hits.append((seen.at, 0 if answer.delay else answer.status))
        return answer

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def hold(self, seconds: float) -> None:
        """Answer nothing for ``seconds`` (past keysetd's timeout: it has given up)."""
        self.answer = Reply(delay=seconds)

    def serve(self, body: bytes, status: int = 200) -> None:
        """Answer ``status`` with ``body`` from now on (restarting a stopped server)."""
        self.answer = Reply(status, body, {"Content-Type": "application/json"})
        if not self.server.running:
            self.start()

    def hits_since(self, since: float, status: int | None = None) -> list[float]:
        hits = list(self.hits)
        return [t for t, s in hits if t >= since and (status is None or s == status)]


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider()
    server.start()
    yield server
    server.stop()


# --- the daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    env: Env
    base: str

    def status(self) -> dict[str, Any]:
        code, body = get(self.base + "/status")
        if code != 200:
            exited = self.env.procs[-1].poll()
            raise AssertionError(f"/status: {code} (keysetd exit {exited})\n{self.env.log()}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    def readyz(self) -> int:
        return get(self.base + "/readyz")[0]

    def cli_status(self) -> dict[str, Any]:
        """``keysetd status --json``; it exits 1 while the latest cycle failed, else 0."""
        done = self.env.keysetd("status", "--config", str(self.env.config_path), "--json")
        doc: dict[str, Any] = json.loads(done.stdout)
        assert done.returncode == (0 if doc["last_error"] is None else 1), done.stderr
        return doc

    def failing(self, pattern: str) -> str:
        """Wait until the latest cycle failed with ``pattern``; returns last_error."""

        def error() -> str | None:
            message = self.status().get("last_error")
            return message if message and re.search(pattern, message) else None

        try:
            message: str = wait_for(error, timeout=10, what=f"last_error matching {pattern!r}")
        except AssertionError:
            raise AssertionError(f"{self.status().get('last_error')!r}\n{self.env.log()}") from None
        return message

    def published(self, kid: str, timeout: float = 10) -> None:
        """Wait until the jwks output leads with ``kid`` and the cycle that wrote it is recorded."""

        def done() -> bool:
            if not self.env.jwks.exists():
                return False
            keys = json.loads(self.env.jwks.read_bytes())["keys"]
            if not keys or keys[0]["kid"] != kid:
                return False
            status = self.status()  # recorded once every output of the cycle is committed
            return kid in status["published_kids"] and status["last_error"] is None

        try:
            wait_for(done, timeout=timeout, what=f"{kid} published with no error")
        except AssertionError:
            raise AssertionError(f"{self.status().get('last_error')!r}\n{self.env.log()}") from None


def run_daemon(env: Env, source: dict[str, Any], max_staleness: str = "1h", **extra: Any) -> Daemon:
    port = free_port()
    env.config(
        source=source,
        server={"listen": f"127.0.0.1:{port}"},
        policy={"max_staleness": max_staleness},
        **extra,
    )
    env.start()
    return Daemon(env, f"http://127.0.0.1:{port}")


def jwks_url_daemon(env: Env, provider: Provider, **settings: Any) -> Daemon:
    source = {
        "type": "jwks_url",
        "url": provider.url,
        "refresh_interval": "200ms",
        "timeout": "500ms",
        **settings.pop("source", {}),
    }
    return run_daemon(env, source, outputs=[{"type": "jwks", "path": str(env.jwks)}], **settings)


def assert_outage_reported(
    daemon: Daemon, origin: str, pattern: str, before: dict[str, bytes]
) -> None:
    """The contract while a source fails: outputs as they were, the fault named, still ready."""
    daemon.failing(pattern)
    assert daemon.env.snapshot_outputs() == before
    status = daemon.cli_status()
    assert status["last_error"] is not None, status
    assert origin in status["last_error"] and re.search(pattern, status["last_error"]), status
    assert daemon.readyz() == 200  # the last-known-good is far younger than max_staleness
    assert daemon.env.snapshot_outputs() == before
    assert daemon.env.procs[-1].poll() is None


# --- jwks_url ------------------------------------------------------------------------------------

JWKS_FAULTS: dict[str, tuple[Callable[[Provider], None], str]] = {
    "503": (lambda p: p.serve(b"upstream down", 503), r"HTTP 503 Service Unavailable"),
    "403": (lambda p: p.serve(b'{"error": "forbidden"}', 403), r"HTTP 403 Forbidden"),
    "slow": (lambda p: p.hold(5.0), r"timed out after 0\.5s"),
    "garbage": (lambda p: p.serve(b"<html>502 proxy error</html>"), r"invalid keyset from"),
    "empty": (lambda p: p.serve(b""), r"invalid keyset from"),
    "refused": (lambda p: p.stop(), r"Connection refused"),
}


@pytest.mark.parametrize("fault", list(JWKS_FAULTS))
def test_jwks_url_fault_keeps_outputs_and_heals_by_itself(
    fault: str, env: Env, provider: Provider, keys: dict[str, dict[str, Any]]
) -> None:
    provider.serve(jwks_doc(public(keys["es-a"])))
    daemon = jwks_url_daemon(env, provider)
    daemon.published("es-a")
    wait_for(lambda: daemon.readyz() == 200, what="ready")
    before = env.snapshot_outputs()

    inject, pattern = JWKS_FAULTS[fault]
    inject(provider)
    assert_outage_reported(daemon, f"jwks_url:http://127.0.0.1:{provider.port}/", pattern, before)

    provider.serve(jwks_doc(public(keys["es-b"])))  # no signal: the retry schedule finds it
    daemon.published("es-b")
    assert daemon.readyz() == 200
    assert daemon.cli_status()["published_kids"] == ["es-b"]


def test_readyz_turns_503_once_the_last_known_good_passes_max_staleness(
    env: Env, provider: Provider, keys: dict[str, dict[str, Any]]
) -> None:
    provider.serve(jwks_doc(public(keys["es-a"])))
    daemon = jwks_url_daemon(env, provider, max_staleness="2s")
    daemon.published("es-a")
    before = env.snapshot_outputs()

    provider.serve(b"upstream down", 503)
    daemon.failing("HTTP 503")
    status = daemon.status()
    if status["lkg_age_seconds"] < 1.5:  # a slow machine may already be near the limit
        assert daemon.readyz() == 200
    wait_for(lambda: daemon.readyz() == 503, timeout=6, what="/readyz 503 once stale")
    assert "older than max_staleness" in get(daemon.base + "/readyz")[1]
    assert get(daemon.base + "/healthz")[0] == 200
    assert env.snapshot_outputs() == before
    assert daemon.cli_status()["lkg_age_seconds"] > 2

    provider.serve(jwks_doc(public(keys["es-b"])))
    daemon.published("es-b")
    wait_for(lambda: daemon.readyz() == 200, timeout=5, what="ready again")


# --- the outage request rate ---------------------------------------------------------------------
# The schedule itself (1 s doubling, capped at refresh_interval and 60 s, jittered; one success
# resets it; any failure count) is checked without a clock in test_backoff.py. Here only: a real
# daemon keeps to its first two steps during an outage and recovers by itself.

#: Far above the first backoff steps (1 s, 2 s), so a retry at the refresh interval shows.
REFRESH = 10.0
#: Scheduling and loaded-machine slack around a computed wait, in seconds.
SLACK = 0.1


def backoff_range(failures: int) -> tuple[float, float]:
    """The shortest and longest wait after ``failures`` failed cycles, jitter at its extremes."""
    low = next_wait(failures, REFRESH, None, 0.0, lambda: 0.0)
    high = next_wait(failures, REFRESH, None, 0.0, lambda: 1.0)
    return low - SLACK, high + 1.0


def test_an_outage_is_retried_at_the_backoff_then_recovers(
    env: Env, provider: Provider, keys: dict[str, dict[str, Any]]
) -> None:
    provider.serve(jwks_doc(public(keys["es-a"])))
    daemon = jwks_url_daemon(env, provider, source={"refresh_interval": "10s", "timeout": "1s"})
    daemon.published("es-a")
    before = env.snapshot_outputs()
    provider.serve(b"upstream down", 503)
    env.procs[-1].send_signal(signal.SIGHUP)  # a cycle now, not at the 10 s refresh

    first = wait_for(lambda: provider.hits_since(0, 503), 5, what="a 503")[0]
    second = wait_for(lambda: provider.hits_since(first, 503)[1:], 5, what="a retry")[0]
    daemon.failing("HTTP 503")
    assert env.snapshot_outputs() == before
    provider.serve(jwks_doc(public(keys["es-b"])))  # no signal: the retry schedule finds it
    daemon.published("es-b", timeout=5)
    recovery = provider.hits_since(second, 200)[0]

    assert provider.hits_since(first) == [first, second, *provider.hits_since(recovery)]
    low, high = backoff_range(1)
    assert low <= second - first <= high, (first, second)  # 1 s: not a spin, not the refresh
    low, high = backoff_range(2)
    assert low <= recovery - second <= high, (second, recovery)  # doubled to 2 s
    assert daemon.cli_status()["published_kids"] == ["es-b"]


# --- command ------------------------------------------------------------------------------------

KMS_SCRIPT = """\
mode=$(cat "$1")
case "$mode" in
  ok) exec cat "$2" ;;
  hang) exec sleep 30 ;;
  fail) echo "kms-client: access denied to key jwt-signing" >&2; exit 3 ;;
  flood) exec head -c 52428800 /dev/zero ;;
  garbage) echo "<html>kms proxy error</html>" ;;
esac
"""

COMMAND_FAULTS = {
    "hang": r"timed out after 1s \(process group killed\)",
    "fail": r"exited with status 3: kms-client: access denied to key jwt-signing",
    "flood": r"output exceeds \d+ bytes \(process group killed\)",
    "garbage": r"invalid keyset from command:/bin/sh",
}


@pytest.mark.parametrize("fault", list(COMMAND_FAULTS))
def test_command_fault_keeps_outputs_and_heals_by_itself(
    fault: str, env: Env, keys: dict[str, dict[str, Any]]
) -> None:
    script, mode = env.root / "kms-client.sh", env.root / "mode"
    script.write_text(KMS_SCRIPT)
    mode.write_text("ok")
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    source = {
        "type": "command",
        "argv": ["/bin/sh", str(script), str(mode), str(env.source)],
        "refresh_interval": "200ms",
        "timeout": "1s",
    }
    daemon = run_daemon(env, source)
    daemon.published("es-a")
    before = env.snapshot_outputs()
    assert set(before) == {"jwks.json", "keyset.json"}

    mode.write_text(fault)
    assert_outage_reported(daemon, "command:/bin/sh", COMMAND_FAULTS[fault], before)

    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    mode.write_text("ok")
    daemon.published("es-b")
    assert json.loads(env.signer.read_bytes())["active_kid"] == "es-b"
    assert daemon.readyz() == 200


# --- plugins: OpenBao sealed then unsealed, a KMS key disabled then enabled ----------------------


def test_vault_transit_sealed_then_unsealed(env: Env, tmp_path: Path) -> None:
    bao = Bao(tmp_path / "bao").start()
    try:
        bao.api("POST", "sys/mounts/transit", {"type": "transit"})
        bao.create_key("jwt-ec", "ecdsa-p256")
        unseal_key = wait_for(
            lambda: re.search(r"Unseal Key: (\S+)", (bao.workdir / "bao.log").read_text()),
            what="the dev server's unseal key in its log",
        )
        source = {
            "type": "vault_transit",
            "address": bao.address,
            "token": bao.root,
            "keys": ["jwt-ec"],
            "refresh_interval": "200ms",
            "timeout": "2s",
        }
        daemon = run_daemon(env, source, outputs=[{"type": "jwks", "path": str(env.jwks)}])
        daemon.published("jwt-ec-v1")
        before = env.snapshot_outputs()

        bao.cli("operator", "seal")
        origin = f"vault_transit:{bao.address}/transit"
        assert_outage_reported(daemon, origin, r"Vault is sealed", before)
        assert bao.root not in daemon.cli_status()["last_error"]

        bao.cli("operator", "unseal", unseal_key.group(1))
        wait_for(bao._healthy, timeout=10, what="bao unsealed")
        bao.api("POST", "transit/keys/jwt-ec/rotate")
        daemon.published("jwt-ec-v2")
        assert daemon.readyz() == 200
    finally:
        bao.stop()


@pytest.fixture
def moto_url(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's moto_server (KMS on loopback; this test makes keys of its own), and an
    AWS environment for keysetd."""
    fake_aws(monkeypatch)
    return moto_server


def test_aws_kms_key_disabled_then_enabled(env: Env, moto_url: str) -> None:
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_url)
    try:
        first, second = new_key(kms), new_key(kms)
        alias = new_alias(kms, first["KeyId"])
        source = {
            "type": "aws_kms",
            "region": REGION,
            "endpoint_url": moto_url,
            "key_ids": [first["KeyId"], second["KeyId"]],
            "active": alias,
            "refresh_interval": "200ms",
            "timeout": "5s",
        }
        daemon = run_daemon(env, source, outputs=[{"type": "jwks", "path": str(env.jwks)}])
        daemon.published(first["KeyId"])
        before = env.snapshot_outputs()

        kms.disable_key(KeyId=second["KeyId"])
        assert_outage_reported(daemon, f"aws_kms:{REGION}", r"is Disabled", before)
        assert "testing" not in daemon.cli_status()["last_error"]

        kms.update_alias(AliasName=alias, TargetKeyId=second["KeyId"])  # rotated meanwhile
        kms.enable_key(KeyId=second["KeyId"])
        daemon.published(second["KeyId"])
        assert daemon.readyz() == 200
    finally:
        kms.close()
