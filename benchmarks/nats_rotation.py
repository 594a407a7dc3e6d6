"""NATS: source change -> nats-server accepts the new nkey; auth callout authorizations per second.

Rotations: a real ``keysetd run`` (file source of Ed25519 keys, ``nats`` output of
``kind = "users"``, ``nats`` notifier: ``nats-server -t`` on the rendered include before
the commit, ``--signal reload`` after it) and a
real nats-server including the output. ``ROTATIONS`` times the source gains a new active
key; latency = ``time.time_ns()`` before the ``os.replace`` of the source -> the first
successful nats-py connection with the new nkey seed (attempts every ``POLL`` s; each
refused attempt is a full CONNECT round trip, so the figure is an upper bound by about
that much).

Callout: ``keysetd-nats-callout`` (keysetd-nats-callout plugin) on one CPU.
(1) In process: ``Authorizer.handle`` over realistic request JWTs (signed by a server
nkey, carrying an RS256 or ES256 client token): the callout's own cost per
authorization (request signature, token verification, user JWT and response signing).
(2) End to end: the callout as its own process pinned to one CPU, nats-server with
auth_callout, sequential nats-py connects with valid tokens: connects per second and the
connect latency (what a client sees; bound by round trips, not by the callout's CPU).

Run with ``benchmarks/run.py --only nats`` or ``python -m benchmarks.nats`` (as a plain
script, ``benchmarks/`` would come first on sys.path and this module would shadow nats-py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import nkeys
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from nats.aio.client import Client

from benchmarks._common import (
    Row,
    Workspace,
    binary,
    document,
    free_port,
    key_pool,
    percentile,
    wait_for,
)
from benchmarks._install import keysetd_command
from keysetd.crypto import b64u_decode, load_private
from keysetd.model import Key

__all__ = ["run"]

ROTATIONS = 100
WARMUP = 3
#: Between connection attempts while waiting for the new nkey.
POLL = 0.002
LAND_TIMEOUT = 15.0
#: In-process authorizations per algorithm, after a warm-up.
HANDLER_CALLS = 2000
#: End-to-end: sequential connects for this long.
CONNECT_SECONDS = 4.0
AUDIENCE = "nats"
ISSUER = "https://sso.example.com/realms/app"


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("nats-server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(up, 10, "nats-server to listen", interval=0.01)


@contextmanager
def _one_cpu() -> Iterator[int]:
    """Pin this process to one CPU (the last allowed one) for the block."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


async def _quiet(exc: Exception) -> None:
    """Refused attempts are counted, not printed."""


async def _connects(url: str, **auth: Any) -> bool:
    client = Client()
    try:
        await client.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=_quiet,
            **auth,
        )
        await client.flush(timeout=2)
    except Exception:
        return False
    finally:
        await client.close()
    return True


# -- (a) rotations ---------------------------------------------------------------------------


def _seed(key: Key) -> str:
    raw = b64u_decode(key.member("d") or "")
    return str(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode())


async def _await_new_key(url: str, seed: str, started_ns: int) -> float:
    deadline = time.monotonic() + LAND_TIMEOUT
    while not await _connects(url, nkeys_seed_str=seed):
        if time.monotonic() > deadline:
            raise TimeoutError("the new nkey was not accepted in time")
        await asyncio.sleep(POLL)
    return (time.time_ns() - started_ns) / 1e6


def rotations(count: int = ROTATIONS) -> list[float]:
    """Latencies in ms from a source change to the first connection with the new nkey."""
    pool = key_pool(("OKP",) * (count + WARMUP + 1), prefix="nats")
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-nats-") as tmp:
        ws = Workspace(Path(tmp))
        include = ws.out / "nats-users.conf"
        port = free_port()
        server_conf, pidfile = ws.root / "nats-server.conf", ws.root / "nats-server.pid"
        server_conf.write_text(
            f'listen: 127.0.0.1:{port}\npid_file: "{pidfile}"\ninclude ./out/nats-users.conf\n'
        )
        ws.write_config(
            outputs=[{"type": "nats", "path": str(include), "kind": "users"}],
            notify=[
                {
                    "type": "nats",
                    "config": str(server_conf),
                    "include": str(include),
                    "pidfile": str(pidfile),
                    "nats_server": binary("nats-server"),
                    "retries": 1,
                }
            ],
        )
        ws.stage(document([(pool[0], True)], pool[0].kid))
        ws.publish()
        once = subprocess.run(
            [*keysetd_command(), "once", "--config", str(ws.config_path)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if not include.exists():
            raise RuntimeError(f"keysetd once wrote no include: {once.stderr.decode()[-500:]}")
        with (ws.root / "nats-server.log").open("ab") as log:
            server = subprocess.Popen(
                [binary("nats-server"), "-c", str(server_conf)], stdout=log, stderr=log
            )
        daemon: subprocess.Popen[bytes] | None = None
        try:
            _wait_port(port, server)
            wait_for(pidfile.exists, 10, "the nats-server pid file")
            daemon = ws.start()
            url = f"nats://127.0.0.1:{port}"
            assert asyncio.run(_connects(url, nkeys_seed_str=_seed(pool[0])))
            latencies = []
            for i in range(1, count + WARMUP + 1):
                old, new = pool[i - 1], pool[i]
                ws.stage(document([(old, True), (new, True)], new.kid))
                started = ws.publish()
                latency = asyncio.run(_await_new_key(url, _seed(new), started))
                if i > WARMUP:
                    latencies.append(latency)
                if daemon.poll() is not None:
                    raise RuntimeError("keysetd exited:\n" + ws.log_tail())
            return latencies
        finally:
            if daemon is not None:
                Workspace.stop(daemon)
            Workspace.stop(server)


# -- (b) the callout -------------------------------------------------------------------------


class _Callout:
    """The callout's files: jwks of an RS256 and an ES256 key, issuer account seed, config."""

    def __init__(self, root: Path, nats_url: str = "nats://127.0.0.1:1") -> None:
        self.keys = key_pool(("RSA", "EC"), prefix="realm")
        self.jwks = root / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [k.public_jwk() for k in self.keys]}))
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
        self.account_public = nkeys.from_seed(seed).public_key.decode()
        seed_file = root / "account.nk"
        seed_file.write_bytes(seed + b"\n")
        seed_file.chmod(0o600)
        self.config = root / "callout.toml"
        self.config.write_text(
            "\n".join(
                [
                    'log_format = "json"',
                    f"jwks = {json.dumps(str(self.jwks))}",
                    f"issuer = {json.dumps(ISSUER)}",
                    f"audience = {json.dumps(AUDIENCE)}",
                    'algorithms = ["RS256", "ES256"]',
                    f"issuer_account_seed_file = {json.dumps(str(seed_file))}",
                    'account = "APP"',
                    "",
                    "[nats]",
                    f"url = {json.dumps(nats_url)}",
                    'user = "callout"',
                    'password = "callout-pw"',
                    "",
                    "[permissions]",
                    'publish = ["app.>"]',
                    'subscribe = ["app.>", "_INBOX.>"]',
                    "",
                ]
            )
        )

    def token(self, key: Key) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": [AUDIENCE, "account"],
            "sub": "f3c1d2a4-0000-4000-8000-000000000001",
            "preferred_username": "alice",
            "realm_access": {"roles": ["user"]},
            "iat": now,
            "exp": now + 3600,
        }
        private = load_private(key)
        assert isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        return jwt.encode(claims, private, algorithm=key.alg, headers={"kid": key.kid})


def _requests(callout: _Callout, key: Key, count: int) -> list[bytes]:
    """Request JWTs as nats-server sends them: a fresh user nkey each, one server nkey."""
    from keysetd_nats_callout import natsjwt
    from keysetd_nats_callout.natsjwt import NkeySigner

    server = NkeySigner.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))
    token = callout.token(key)
    out = []
    for i in range(count):
        user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        claims = {
            "sub": callout.account_public,
            "aud": "nats-authorization-request",
            "exp": int(time.time()) + 3600,
            "nats": {
                "type": "authorization_request",
                "server_id": {"name": "bench", "host": "127.0.0.1", "id": server.public_key},
                "user_nkey": user.public_key.decode(),
                "client_info": {"host": "127.0.0.1", "id": i, "kind": "Client", "type": "nats"},
                "connect_opts": {"auth_token": token, "lang": "python3", "protocol": 1},
            },
        }
        out.append(natsjwt.encode(claims, server, now=int(time.time())).encode())
    return out


def handler_rates(calls: int = HANDLER_CALLS) -> dict[str, float]:
    """Authorizations per second of ``Authorizer.handle`` on one CPU, per token alg."""
    import logging

    from keysetd_nats_callout.authorizer import Authorizer
    from keysetd_nats_callout.config import load_config, read_signer

    from keysetd.verifier import Verifier

    logging.getLogger("keysetd").setLevel(logging.ERROR)  # no log line per authorization
    rates = {}
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-callout-") as tmp:
        callout = _Callout(Path(tmp))
        config = load_config(callout.config)
        authorizer = Authorizer(
            config, Verifier(callout.jwks, config.algorithms, 1.0), read_signer(config)
        )
        for key in callout.keys:
            requests = _requests(callout, key, calls + 100)

            async def drive(batch: list[bytes]) -> float:
                started = time.perf_counter()
                for data in batch:
                    if not await authorizer.handle(data):
                        raise RuntimeError("a valid request was refused")
                return time.perf_counter() - started

            with _one_cpu():
                asyncio.run(drive(requests[:100]))
                elapsed = asyncio.run(drive(requests[100:]))
            rates[key.alg] = calls / elapsed
    return rates


def end_to_end(seconds: float = CONNECT_SECONDS) -> tuple[float, float, float]:
    """(connects/s, p50 ms, p99 ms) of sequential connects through the callout on one CPU."""
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-callout-e2e-") as tmp:
        root = Path(tmp)
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        callout = _Callout(root, url)
        server_conf = root / "nats-server.conf"
        server_conf.write_text(
            f"listen: 127.0.0.1:{port}\n"
            "accounts {\n"
            '  AUTH { users: [ { user: callout, password: "callout-pw" } ] }\n'
            "  APP {}\n"
            "}\n"
            "authorization {\n"
            f"  auth_callout {{ issuer: {callout.account_public}, account: AUTH,"
            " auth_users: [ callout ] }\n"
            "}\n"
        )
        log = (root / "processes.log").open("ab")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            server = subprocess.Popen(
                [binary("nats-server"), "-c", str(server_conf)], stdout=log, stderr=log
            )
            procs.append(server)
            _wait_port(port, server)
            proc = subprocess.Popen(
                [sys.executable, "-m", "keysetd_nats_callout", "--config", str(callout.config)],
                stdout=log,
                stderr=log,
            )
            procs.append(proc)
            os.sched_setaffinity(proc.pid, {max(os.sched_getaffinity(0))})
            log_path = root / "processes.log"
            wait_for(lambda: b"callout_ready" in log_path.read_bytes(), 15, "the callout")
            tokens = [callout.token(key) for key in callout.keys]

            async def drive() -> list[float]:
                latencies = []
                deadline = time.monotonic() + seconds
                i = 0
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    if not await _connects(url, token=tokens[i % len(tokens)]):
                        raise RuntimeError("a valid token was refused")
                    latencies.append((time.perf_counter() - started) * 1000)
                    i += 1
                return latencies

            asyncio.run(drive())  # warm-up is cheap: the first second counts too
            latencies = asyncio.run(drive())
            return (
                len(latencies) / (sum(latencies) / 1000),
                percentile(latencies, 50),
                percentile(latencies, 99),
            )
        finally:
            for proc in reversed(procs):
                Workspace.stop(proc)
            log.close()


def run() -> list[Row]:
    latencies = rotations()
    rates = handler_rates()
    connects, p50, p99 = end_to_end()
    return [
        Row(
            f"rotation -> new nkey accepted p50 ({len(latencies)})",
            f"{percentile(latencies, 50):.1f} ms",
        ),
        Row(
            f"rotation -> new nkey accepted p99 ({len(latencies)})",
            f"{percentile(latencies, 99):.1f} ms",
        ),
        *(
            Row(f"callout handler, {alg} tokens, 1 CPU", f"{rate:.0f} auth/s")
            for alg, rate in rates.items()
        ),
        Row("callout end to end, sequential connects, 1 CPU", f"{connects:.0f} conn/s"),
        Row("callout end to end, connect latency p50", f"{p50:.2f} ms"),
        Row("callout end to end, connect latency p99", f"{p99:.2f} ms"),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:55} {row.figure:>14}  {row.target}")
