"""Verifier: ``Verifier.decode`` against its floor and PyJWKClient; latency while keysetd rotates.

Throughput (single thread, ES256 / RS256 / EdDSA): ``Verifier.decode`` vs ``jwt.decode``
with a pre-loaded key object (the floor) vs PyJWT's ``PyJWKClient`` fetching the same
jwks from a ``ThreadingHTTPServer`` on 127.0.0.1 (its caches on, as a service runs it).
The three run side by side: rounds of ``BATCH`` decodes each, in a rotating order; the
ratio is the median over rounds of floor time / Verifier time from the same round.

Rotation under load: a real ``keysetd run`` (file source, jwks + keyset outputs,
``activation_delay`` and ``retention``) and one thread verifying at full speed with a
Verifier on the jwks output. The source gains a new active key ``ROTATIONS`` times; the
load thread switches to a token of the new kid once the signer output names it (as a
token issuer would). Failures must be zero. The p99 latency of decodes while rotations
run (each burst until its last retention ran out) is compared with that of steady windows
of the same load (same file polling, idle daemon) interleaved with the bursts. The daemon
runs on its own CPU. A control, ``jwt.decode`` with the key in hand, runs in the same loop
right after each ``Verifier.decode``: what the machine alone does to the tail.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

from benchmarks._common import Row, Workspace, document, key_pool, percentile, wait_for
from keysetd.crypto import load_private, load_public
from keysetd.formats.jwks import render_jwks
from keysetd.model import Key, Keyset
from keysetd.verifier import Verifier

__all__ = ["run"]

TARGET_RATIO = 0.97
TARGET_P99_RATIO = 1.5
BATCH = 200
ROUNDS = 25
ROTATIONS = 100
#: Steady windows and rotation bursts alternate, so noise from the rest of the machine
#: falls on both alike: BLOCKS x (steady window, ROTATIONS / BLOCKS rotations, tail).
BLOCKS = 5
STEADY_WINDOW = 1.0
ACTIVATION_DELAY = "50ms"
RETENTION = "300ms"
#: After a burst: the retention of the last dropped kid runs out (a jwks change), then slack.
TAIL = 0.5
CHECK_INTERVAL = 0.1
#: How often the driver reads the signer output, in both phases.
POLL = 0.002


def _token(key: Key) -> str:
    claims = {"sub": "bench", "aud": "api", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, load_private(key), algorithm=key.alg, headers={"kid": key.kid})


class _JwksServer:
    """The jwks document over HTTP on loopback, for PyJWKClient."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def __enter__(self) -> _JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _side_by_side(methods: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Per-op seconds of each method, one batch per method per round, order rotating."""
    names = list(methods)
    for fn in methods.values():  # warm-up: caches, first fetch
        for _ in range(BATCH // 4):
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(ROUNDS):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            fn = methods[name]
            started = time.perf_counter()
            for _ in range(BATCH):
                fn()
            times[name].append((time.perf_counter() - started) / BATCH)
    return times


def _throughput() -> list[Row]:
    pool = key_pool(("EC", "RSA", "OKP"), prefix="verify")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-verify-") as tmp:
        path = Path(tmp) / "jwks.json"
        body = render_jwks(Keyset(tuple(pool), pool[0].kid).public_only())
        path.write_bytes(body)
        verifier = Verifier(path, ["ES256", "RS256", "EdDSA"], check_interval=1.0)
        with _JwksServer(body) as server:
            client = jwt.PyJWKClient(server.url, cache_keys=True, timeout=5)
            for key in pool:
                token, alg, public = _token(key), key.alg, load_public(key)

                def floor(token: str = token, alg: str = alg, public: Any = public) -> object:
                    return jwt.decode(token, public, algorithms=[alg], audience="api")

                def ours(token: str = token) -> object:
                    return verifier.decode(token, audience="api")

                def pyjwk(token: str = token, alg: str = alg) -> object:
                    signing = client.get_signing_key_from_jwt(token)
                    return jwt.decode(token, signing, algorithms=[alg], audience="api")

                times = _side_by_side({"floor": floor, "verifier": ours, "pyjwkclient": pyjwk})
                ratio = statistics.median(
                    f / v for f, v in zip(times["floor"], times["verifier"], strict=True)
                )
                client_ratio = statistics.median(
                    f / c for f, c in zip(times["floor"], times["pyjwkclient"], strict=True)
                )

                def figure(name: str, times: dict[str, list[float]] = times) -> str:
                    per_op = statistics.median(times[name])
                    return f"{1 / per_op:,.0f}/s ({per_op * 1e6:.1f} us)"

                rows += [
                    Row(f"{alg} jwt.decode, pre-loaded key (floor)", figure("floor")),
                    Row(f"{alg} Verifier.decode", figure("verifier")),
                    Row(f"{alg} PyJWKClient + jwt.decode", figure("pyjwkclient")),
                    Row(
                        f"{alg} Verifier / floor throughput",
                        f"{ratio:.3f}x",
                        f">= {TARGET_RATIO}x",
                        ratio >= TARGET_RATIO,
                    ),
                    Row(f"{alg} PyJWKClient / floor throughput", f"{client_ratio:.3f}x"),
                ]
            # What the Verifier adds to jwt.decode, alone: interval check, kid, dict lookup.
            token = _token(pool[0])
            lookups = 100_000
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(lookups):
                    verifier.key_for(token)
                best = min(best, (time.perf_counter() - started) / lookups)
            rows.append(
                Row("Verifier's own work per token (key_for, best of 5)", f"{best * 1e6:.2f} us")
            )
    return rows


def _active_kid(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    kid = doc.get("active_kid") if isinstance(doc, dict) else None
    return kid if isinstance(kid, str) else None


def _pinned(daemon_pid: int) -> Callable[[], None]:
    """Keep the daemon and this process on different CPUs; returns the undo."""
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    if len(cpus) < 2:
        return lambda: None
    os.sched_setaffinity(daemon_pid, {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return lambda: os.sched_setaffinity(0, mine)


def _rotation() -> list[Row]:
    pool = key_pool(("EC",) * (ROTATIONS + 1), prefix="rot")
    tokens = [(_token(key), load_public(key)) for key in pool]
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-verify-rot-") as tmp:
        ws = Workspace(Path(tmp))
        jwks, signer = ws.out / "jwks.json", ws.out / "keyset.json"
        ws.source.write_bytes(document([(pool[0], True)], pool[0].kid))
        ws.write_config(
            outputs=[{"type": "jwks", "path": str(jwks)}, {"type": "keyset", "path": str(signer)}]
        )
        with ws.config_path.open("a") as config:
            config.write(
                f'\n[policy]\nactivation_delay = "{ACTIVATION_DELAY}"\nretention = "{RETENTION}"\n'
            )
        proc = ws.start()
        unpin = _pinned(proc.pid)
        try:
            wait_for(lambda: _active_kid(signer) == pool[0].kid, 15, "first publish")
            verifier = Verifier(jwks, ["ES256"], check_interval=CHECK_INTERVAL)
            current = [tokens[0]]
            ours: list[int] = []
            floor: list[int] = []
            failures: list[str] = []
            stop = threading.Event()
            segments: list[tuple[str, int, int]] = []
            per_block = ROTATIONS // BLOCKS

            def load() -> None:
                # Each turn: the Verifier, then the floor (jwt.decode with the key object
                # in hand) on the same token, so both see the same moments of the run.
                clock, decode, floor_decode = time.perf_counter_ns, verifier.decode, jwt.decode
                while not stop.is_set():
                    token, public = current[0]
                    started = clock()
                    try:
                        decode(token, audience="api")
                    except jwt.InvalidTokenError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    middle = clock()
                    floor_decode(token, public, algorithms=["ES256"], audience="api")
                    ours.append(middle - started)
                    floor.append(clock() - middle)

            def poll_until(deadline: float, kid: str | None) -> bool:
                while time.monotonic() < deadline:
                    active = _active_kid(signer)  # the issuer's view, read in both phases
                    if kid is not None and active == kid:
                        return True
                    time.sleep(POLL)
                return False

            thread = threading.Thread(target=load, name="verify-load")
            thread.start()
            try:
                rotation_seconds = 0.0
                for block in range(BLOCKS):
                    start = len(ours)
                    poll_until(time.monotonic() + STEADY_WINDOW, None)
                    segments.append(("steady", start, len(ours)))
                    start, started = len(ours), time.monotonic()
                    for i in range(block * per_block + 1, (block + 1) * per_block + 1):
                        old, new = pool[i - 1], pool[i]
                        ws.stage(document([(old, True), (new, True)], new.kid))
                        ws.publish()
                        if not poll_until(time.monotonic() + 15, new.kid):
                            raise TimeoutError(f"rotation {i}: signers never moved to {new.kid}")
                        current[0] = tokens[i]  # the issuer signs with the new key from now on
                    rotation_seconds += time.monotonic() - started
                    poll_until(time.monotonic() + TAIL, None)
                    segments.append(("rotating", start, len(ours)))
            finally:
                stop.set()
                thread.join(timeout=30)
            status = verifier.status()
        finally:
            unpin()
            ws.stop(proc)

    def us(values: list[int], kind: str) -> list[float]:
        return [ns / 1e3 for k, a, b in segments if k == kind for ns in values[a:b]]

    steady, rotating = us(ours, "steady"), us(ours, "rotating")
    floor_steady, floor_rotating = us(floor, "steady"), us(floor, "rotating")
    p99 = {
        name: percentile(values, 99)
        for name, values in (
            ("steady", steady),
            ("rotating", rotating),
            ("floor_steady", floor_steady),
            ("floor_rotating", floor_rotating),
        )
    }
    ratio = p99["rotating"] / p99["steady"]
    return [
        Row(
            f"rotation: {ROTATIONS} keysetd rotations ({rotation_seconds:.1f} s), failures",
            f"{len(failures)} of {len(rotating):,}",
            "0",
            not failures,
        ),
        Row(
            "rotation: Verifier p50 / p99, steady",
            f"{percentile(steady, 50):.0f} / {p99['steady']:.0f} us",
        ),
        Row(
            "rotation: Verifier p50 / p99 / max, rotating",
            f"{percentile(rotating, 50):.0f} / {p99['rotating']:.0f} / {max(rotating):.0f} us",
        ),
        Row(
            "rotation: Verifier p99 rotating / steady",
            f"{ratio:.2f}x",
            f"<= {TARGET_P99_RATIO}x",
            ratio <= TARGET_P99_RATIO,
        ),
        Row(
            "rotation: control, jwt.decode p99 rotating / steady",
            f"{p99['floor_rotating'] / p99['floor_steady']:.2f}x"
            f" ({p99['floor_steady']:.0f} -> {p99['floor_rotating']:.0f} us)",
        ),
        Row(
            "rotation: Verifier p99 / jwt.decode p99, rotating",
            f"{p99['rotating'] / p99['floor_rotating']:.2f}x",
        ),
        Row("rotation: verifier checks / parses", f"{status.checks} / {status.parses}"),
    ] + ([Row("rotation: first failure", failures[0][:60])] if failures else [])


def run() -> list[Row]:
    return _throughput() + _rotation()


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:60} {row.figure:>28} {row.target:>10} {row.verdict}")
