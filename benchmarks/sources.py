"""Sources: requests per hour a ``keysetd run`` sends its provider at default settings, healthy
and during an outage, and the RSS of the daemon with each source plugin loaded.

Two daemons run side by side on one window (``BENCH_SOURCE_SECONDS``, default 180 s),
each with a jwks_url source at the default refresh_interval and timeout against a
loopback server that counts requests: one healthy, one whose server answers 503
from the start of the window (a SIGHUP makes it refetch at once, so the window
opens with the first failed request). The counts are extrapolated to an hour and
set beside the schedule computed from keysetd.daemon's backoff constants. RSS
(VmRSS) is read ~1 s after the first publish of a daemon with a file, jwks_url,
vault_transit (a real ``bao server -dev``) and aws_kms (a real ``moto_server``) source.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Row,
    Workspace,
    binary,
    document,
    free_port,
    key_pool,
    proc_status,
    wait_for,
)
from benchmarks._install import keysetd_command
from keysetd import backoff
from keysetd.plugin import SourceConfig

WINDOW = float(os.environ.get("BENCH_SOURCE_SECONDS", "180"))
REFRESH = SourceConfig.parse({"type": "file"}).refresh_interval
#: The range of the jitter factor keysetd.backoff.next_wait applies to every wait.
JITTER = (1.0 - backoff.JITTER, 1.0 + backoff.JITTER)
#: "A few times a minute at most during an outage": once the backoff has ramped up.
OUTAGE_TARGET_PER_MIN = 6.0
HOUR = 3600.0
#: A request due exactly at the window's end (the cycle's own time) still counts.
GRACE = 0.5
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def failure_schedule(refresh: float, seconds: float, jitter: float = 1.0) -> list[float]:
    """Request times in [0, seconds) of an outage starting at 0, as backoff.next_wait plans them."""
    draw = (jitter - 1.0 + backoff.JITTER) / (2 * backoff.JITTER)  # the random draw for ``jitter``
    times, now, failures = [], 0.0, 0
    while now < seconds:
        times.append(now)
        failures += 1
        now += backoff.next_wait(failures, refresh, None, now, lambda: draw)
    return times


# -- a counting JWKS provider -------------------------------------------------------------------


class _Provider(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body = body
        self.status = 200
        self.hits: list[tuple[float, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/certs"

    def times(self, status: int) -> list[float]:
        return [t for t, s in list(self.hits) if s == status]


class _Handler(BaseHTTPRequestHandler):
    server: _Provider

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status, body = self.server.status, self.server.body
        self.server.hits.append((time.monotonic(), status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _serving(body: bytes) -> Iterator[_Provider]:
    provider = _Provider(body)
    thread = threading.Thread(target=provider.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        provider.shutdown()
        provider.server_close()
        thread.join(timeout=5)


# -- daemons ----------------------------------------------------------------------------------


def _daemon(
    root: Path, source: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Workspace]:
    """A ``keysetd run`` with ``source`` and one jwks output, in ``env`` (default: ours).

    Config values are written as JSON, which TOML reads alike for strings and lists.
    """
    ws = Workspace(root)
    lines = [f"state_dir = {json.dumps(str(ws.state))}", 'log_format = "json"', "", "[source]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in source.items()]
    lines += ["", "[[outputs]]", 'type = "jwks"', f"path = {json.dumps(str(ws.out / 'jwks.json'))}"]
    ws.config_path.write_text("\n".join(lines) + "\n")
    with ws.log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*keysetd_command(), "run", "--config", str(ws.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(os.environ) if env is None else env,
        )
    return proc, ws


def _rss_after_publish(proc: subprocess.Popen[bytes], ws: Workspace, timeout: float = 30) -> float:
    """VmRSS in MB about 1 s after the jwks output first appears."""
    jwks = ws.out / "jwks.json"

    def published() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"keysetd exited {proc.returncode}:\n{ws.log_tail()}")
        return jwks.exists()

    wait_for(published, timeout, f"first publish ({ws.root.name})", interval=0.01)
    time.sleep(1.0)
    return proc_status(proc.pid)["VmRSS"] / 1024


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _call(url: str, body: dict[str, Any], token: str) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"X-Vault-Token": token}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@contextmanager
def _bao(root: Path) -> Iterator[tuple[str, str]]:
    """(address, root token) of a ``bao server -dev`` with transit and one ECDSA key."""
    port, token = free_port(), "bench-root-token"
    root.mkdir()
    with (root / "bao.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary("bao"),
                "server",
                "-dev",
                f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(root)},
        )
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{address}/v1/sys/health"), 20, "bao", interval=0.05)
        _call(f"{address}/v1/sys/mounts/transit", {"type": "transit"}, token)
        _call(f"{address}/v1/transit/keys/jwt-ec", {"type": "ecdsa-p256"}, token)
        yield address, token
    finally:
        Workspace.stop(proc)


@contextmanager
def _moto(root: Path) -> Iterator[tuple[str, str]]:
    """(endpoint url, key id) of a ``moto_server`` holding one ECC_NIST_P256 signing key."""
    import boto3

    port = free_port()
    root.mkdir()
    with (root / "moto.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/moto-api/"), 20, "moto_server", interval=0.05)
        kms = boto3.client(
            "kms",
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            endpoint_url=url,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        try:
            key = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
        finally:
            kms.close()
        yield url, str(key["KeyMetadata"]["KeyId"])
    finally:
        Workspace.stop(proc)


def _plugin_rss(tmp: Path) -> list[tuple[str, float]]:
    """VmRSS after the first publish with a file, vault_transit and aws_kms source."""
    results: list[tuple[str, float]] = []
    pool = key_pool(("EC",), prefix="src")
    file_root = tmp / "file"
    file_root.mkdir()
    (file_root / "keyset.json").write_bytes(document([(pool[0], True)], pool[0].kid))
    proc, ws = _daemon(
        tmp / "file-daemon", {"type": "file", "path": str(file_root / "keyset.json")}
    )
    try:
        results.append(("file", _rss_after_publish(proc, ws)))
    finally:
        Workspace.stop(proc)
    with _bao(tmp / "bao") as (address, token):
        source = {"type": "vault_transit", "address": address, "token": token, "keys": ["jwt-ec"]}
        proc, ws = _daemon(tmp / "vault-daemon", source)
        try:
            results.append(("vault_transit", _rss_after_publish(proc, ws)))
        finally:
            Workspace.stop(proc)
    with _moto(tmp / "moto") as (url, key_id):
        source = {
            "type": "aws_kms",
            "region": AWS_ENV["AWS_DEFAULT_REGION"],
            "endpoint_url": url,
            "key_ids": [key_id],
        }
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        proc, ws = _daemon(tmp / "kms-daemon", source, env={**clean, **AWS_ENV})
        try:
            results.append(("aws_kms", _rss_after_publish(proc, ws)))
        finally:
            Workspace.stop(proc)
    return results


# -- the benchmark ------------------------------------------------------------------------------


def _in_window(times: Sequence[float], start: float, seconds: float) -> list[float]:
    """Seconds since ``start`` of the requests in the window (plus GRACE for the last one)."""
    return [t - start for t in times if start <= t <= start + seconds + GRACE]


def _first(provider: _Provider, status: int, what: str) -> float:
    def found() -> list[float]:
        return provider.times(status)

    return wait_for(found, 30, what, interval=0.01)[0]


def run(seconds: float = WINDOW) -> list[Row]:
    pool = key_pool(("EC",), prefix="jwks")
    body = document([(pool[0], False)], pool[0].kid)
    with (
        tempfile.TemporaryDirectory(prefix="keysetd-bench-sources-") as name,
        _serving(body) as healthy,
        _serving(body) as failing,
    ):
        tmp = Path(name)
        good_proc, good_ws = _daemon(tmp / "healthy", {"type": "jwks_url", "url": healthy.url})
        bad_proc, bad_ws = _daemon(tmp / "outage", {"type": "jwks_url", "url": failing.url})
        try:
            jwks_rss = _rss_after_publish(good_proc, good_ws)
            _rss_after_publish(bad_proc, bad_ws)
            healthy_start = _first(healthy, 200, "the healthy daemon's first request")
            failing.status = 503
            bad_proc.send_signal(signal.SIGHUP)  # refetch now: the outage window opens
            outage_start = _first(failing, 503, "the first failed request")
            plugins = _plugin_rss(tmp)  # meanwhile: the windows run on their own
            end = max(healthy_start, outage_start) + seconds
            time.sleep(max(0.0, end - time.monotonic()) + GRACE + 0.05)
            for proc, ws in ((good_proc, good_ws), (bad_proc, bad_ws)):
                if proc.poll() is not None:
                    raise RuntimeError(f"keysetd exited {proc.returncode}:\n{ws.log_tail()}")
        finally:
            Workspace.stop(good_proc)
            Workspace.stop(bad_proc)
        good = _in_window(healthy.times(200), healthy_start, seconds)
        bad = _in_window(failing.times(503), outage_start, seconds)
    return _rows(seconds, good, bad, jwks_rss, plugins)


def _rate(times: Sequence[float]) -> str:
    """Requests per hour from the mean gap between the requests seen, or why not."""
    if len(times) < 2:
        return "one request (window <= one gap)"
    gap = (times[-1] - times[0]) / (len(times) - 1)
    return f"mean gap {gap:.1f} s -> {HOUR / gap:.0f}/h"


def _rows(
    seconds: float,
    good: list[float],
    bad: list[float],
    jwks_rss: float,
    plugins: list[tuple[str, float]],
) -> list[Row]:
    def planned(span: float) -> tuple[int, int]:
        """Fewest (longest jitter) and most (shortest jitter) outage requests in ``span``."""
        slow = failure_schedule(REFRESH, span, JITTER[1])
        fast = failure_schedule(REFRESH, span + GRACE, JITTER[0])
        return len(slow), len(fast)

    hour = {j: len(failure_schedule(REFRESH, HOUR, j)) for j in (JITTER[1], 1.0, JITTER[0])}
    hour_text = f"schedule {hour[1.0]}/h ({hour[JITTER[1]]}-{hour[JITTER[0]]} with jitter)"
    lo, hi = planned(seconds)
    rows = [
        Row(
            f"healthy: requests in {seconds:.0f} s (refresh_interval {REFRESH:g} s)",
            f"{len(good)}, {_rate(good)}",
            f"schedule {HOUR / REFRESH:.0f}/h",
        ),
        Row(
            f"outage (503): requests in {seconds:.0f} s",
            f"{len(bad)}",
            f"schedule {lo}-{hi}",
            lo <= len(bad) <= hi,
        ),
        Row(
            "outage: gaps between requests",
            ", ".join(f"{b - a:.1f}" for a, b in itertools.pairwise(bad)) + " s",
        ),
    ]
    if seconds >= 60:
        first = [t for t in bad if t < 60.0]
        lo, hi = planned(60.0)
        rows.append(
            Row(
                "outage: requests in the first minute",
                f"{len(first)}",
                f"schedule {lo}-{hi}",
                lo <= len(first) <= hi,
            )
        )
    if seconds >= 120:
        first = [t for t in bad if t < 60.0]
        later = [t for t in bad if t >= 60.0]
        per_minute = len(later) / ((seconds - 60.0) / 60.0)
        rows += [
            Row(
                "outage: requests/min after the first minute",
                f"{per_minute:.2f}/min",
                f"<= {OUTAGE_TARGET_PER_MIN:g}/min",
                per_minute <= OUTAGE_TARGET_PER_MIN,
            ),
            Row(
                "outage: requests/h (first minute + 59 x the later rate)",
                f"{len(first) + 59 * per_minute:.0f}/h",
                hour_text,
            ),
        ]
    else:
        rows.append(
            Row("outage: requests/min after the first minute", "not measured (window < 120 s)")
        )
    fastest = failure_schedule(REFRESH, HOUR, JITTER[0])
    scheduled = sum(1 for t in fastest if t >= 60.0) / ((HOUR - 60.0) / 60.0)
    rows += [
        Row(
            "outage: schedule, requests/min after the first minute (shortest jitter)",
            f"{scheduled:.2f}/min",
            f"<= {OUTAGE_TARGET_PER_MIN:g}/min",
            scheduled <= OUTAGE_TARGET_PER_MIN,
        ),
        Row("outage: schedule, requests in the first hour", f"{hour[1.0]}", hour_text),
        Row("VmRSS ~1 s after first publish: jwks_url", f"{jwks_rss:.1f} MB"),
    ]
    rows += [
        Row(f"VmRSS ~1 s after first publish: {name}", f"{rss:.1f} MB") for name, rss in plugins
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row.name}: {row.figure} (target {row.target}) {row.verdict}")
