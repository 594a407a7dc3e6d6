"""A real nats-server, real nats-py clients and a real ``keysetd run``: nkey rotation with
the dual-key overlap, and an include nats-server refuses, which is never written."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import nkeys
import pytest
from nats.aio.client import Client

from tests.conftest import Env, render_toml
from tests.servers import free_port, stop, wait_for_port
from tests.test_nats_output import ed25519_jwk, nats_server_bin

RETENTION = 3.0
#: A kid whose user gets a publish permission nats-server -t refuses ("orders..new" is
#: not a valid subject; keysetd's own subject rule lets it through).
BAD_KID = "k-bad"


class NatsServer:
    """nats-server on a free loopback port, its main config including keysetd's file."""

    def __init__(self, root: Path, include: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.config = root / "nats-server.conf"
        self.pidfile = root / "nats-server.pid"
        self.log = root / "nats-server.log"
        self.good_config = (
            f"listen: 127.0.0.1:{self.port}\n"
            f'pid_file: "{self.pidfile}"\n'
            f"include ./{include.relative_to(root)}\n"
        )
        self.config.write_text(self.good_config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_bin(), "-c", str(self.config)], stdout=log, stderr=log
            )
        wait_for_port(self.port, self.proc, self.log)
        assert self.pidfile.read_text().strip() == str(self.proc.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Seeds:
    """A user's 32-byte Ed25519 seed, as a JWK for the source and an nkey seed for clients."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        raw = os.urandom(32)
        self.jwk = ed25519_jwk(kid, raw)
        self.nkey_seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode()
        self.public = nkeys.from_seed(self.nkey_seed.encode()).public_key.decode()


async def _ignore_error(exc: Exception) -> None:
    """Connection errors are asserted through the callbacks and results, not logged."""


async def connect(server: NatsServer, user: Seeds, **callbacks: Any) -> Client:
    """A connection of ``user``; a refused one is closed here, so no socket leaks."""
    client = Client()
    try:
        await client.connect(
            server.url,
            nkeys_seed_str=user.nkey_seed,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=_ignore_error,
            **callbacks,
        )
    except BaseException:
        await client.close()
        raise
    return client


async def can_connect(server: NatsServer, user: Seeds) -> bool:
    """Whether the server accepts a new connection of ``user`` (a round trip proves it)."""
    try:
        client = await connect(server, user)
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    try:
        await client.flush(timeout=2)
    finally:
        await client.close()
    return True


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float, what: str
) -> None:
    """Poll ``condition`` (plain or a coroutine) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Watched:
    """A long-lived client connection that remembers whether it was ever dropped."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()
        self.closed = asyncio.Event()
        self.client: Client | None = None

    async def open(self, server: NatsServer, user: Seeds) -> Watched:
        async def on_disconnect() -> None:
            self.disconnected.set()

        async def on_close() -> None:
            self.closed.set()

        self.client = await connect(server, user, disconnected_cb=on_disconnect, closed_cb=on_close)
        return self

    async def alive(self) -> bool:
        assert self.client is not None
        if self.disconnected.is_set() or not self.client.is_connected:
            return False
        await self.client.flush(timeout=2)
        return True

    async def close(self) -> None:
        if self.client is not None and not self.client.is_closed:
            await self.client.close()


def source_doc(*users: Seeds, active: Seeds) -> bytes:
    return json.dumps({"keys": [u.jwk for u in users], "active_kid": active.kid}).encode()


@pytest.fixture
def nats_env(env: Env) -> Iterator[tuple[Env, NatsServer, Path]]:
    include = env.out / "nats-users.conf"
    server = NatsServer(env.root, include)
    env.config_path.write_text(
        render_toml(
            {
                "state_dir": str(env.state),
                "log_format": "json",
                "source": {"type": "file", "path": str(env.source), "refresh_interval": "30s"},
                "policy": {"activation_delay": "200ms", "retention": f"{RETENTION}s"},
                "outputs": [
                    {
                        "type": "nats",
                        "path": str(include),
                        "kind": "users",
                        "users": {BAD_KID: {"permissions": {"publish": ["orders..new"]}}},
                    },
                    *env.outputs_with_pem(),
                ],
                "notify": [
                    {
                        "type": "nats",
                        "config": str(server.config),
                        "include": str(include),
                        "pidfile": str(server.pidfile),
                        "nats_server": nats_server_bin(),
                        "outputs": ["nats"],
                        "retries": 1,
                        "timeout": "10s",
                    }
                ],
            }
        )
    )
    try:
        yield env, server, include
    finally:
        env.stop_all()
        server.stop()


def start_all(env: Env, server: NatsServer, include: Path, first: bytes) -> None:
    """Publish once (no server yet: its notification fails), start nats-server, then keysetd."""
    env.write_source(first)
    done = env.keysetd("once", "--config", str(env.config_path))
    assert done.returncode == 1 and "notifier" in done.stderr, done.stderr  # no server yet
    assert include.exists()
    server.start()
    env.start()


def retained(env: Env, kid: str) -> bool:
    try:
        status = json.loads((env.state / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return any(k["kid"] == kid and k["state"] == "retained" for k in status.get("keys", []))


def test_rotation_overlap_end_to_end(nats_env: tuple[Env, NatsServer, Path]) -> None:
    env, server, include = nats_env
    old, new = Seeds("2026-11-a"), Seeds("2026-11-b")
    start_all(env, server, include, source_doc(old, active=old))
    asyncio.run(_rotation(env, server, include, old, new))


async def _rotation(env: Env, server: NatsServer, include: Path, old: Seeds, new: Seeds) -> None:
    kept = await Watched().open(server, old)
    newcomer = Watched()
    try:
        assert not await can_connect(server, new)

        # The new key arrives: the server accepts it while the old one keeps working.
        env.write_source(source_doc(old, new, active=new))
        await eventually(lambda: can_connect(server, new), 10, "the new nkey to be accepted")
        assert new.public in include.read_text()
        assert await can_connect(server, old)
        assert await kept.alive()
        await newcomer.open(server, new)

        # The source drops the old key: it keeps working for the retention ...
        env.write_source(source_doc(new, active=new))
        dropped_at = time.monotonic()
        await eventually(lambda: retained(env, old.kid), 10, "the old kid to be retained")
        assert await can_connect(server, old)
        assert await kept.alive()
        assert time.monotonic() - dropped_at < RETENTION, "too slow to observe the overlap"

        # ... and after it the server closes its connection and refuses new ones.
        await asyncio.wait_for(kept.closed.wait(), RETENTION + 15)
        assert time.monotonic() - dropped_at >= RETENTION - 0.5
        assert old.public not in include.read_text()
        assert not await can_connect(server, old)

        # The kept key's connection was never dropped, through both reloads.
        assert await newcomer.alive()
        assert await can_connect(server, new)
        assert server.log_text().count("Reloaded server configuration") >= 2
    finally:
        await kept.close()
        await newcomer.close()


def test_a_refused_include_writes_nothing(nats_env: tuple[Env, NatsServer, Path]) -> None:
    env, server, include = nats_env
    old, bad, new = Seeds("k-old"), Seeds(BAD_KID), Seeds("k-new")
    start_all(env, server, include, source_doc(old, active=old))
    asyncio.run(_refused(env, server, include, old, bad, new))


def last_error(env: Env) -> str | None:
    """``status.last_error`` as keysetd last recorded it."""
    try:
        error = json.loads((env.state / "status.json").read_text()).get("last_error")
    except (OSError, ValueError):
        return None
    return error if isinstance(error, str) else None


async def _refused(
    env: Env, server: NatsServer, include: Path, old: Seeds, bad: Seeds, new: Seeds
) -> None:
    client = await Watched().open(server, old)
    try:
        before = env.snapshot_outputs()
        assert {"nats-users.conf", "jwks.json", "keyset.json", "pem/k-old.pem"} <= set(before)
        stat = include.stat()
        env.write_source(source_doc(old, bad, active=bad))

        await eventually(lambda: last_error(env) is not None, 15, "the refused cycle")
        message = last_error(env)
        assert message is not None
        assert message.startswith("notifier nats:") and str(server.config) in message
        assert "is not a valid subject" in message and "nothing was written" in message
        # The daemon retries (failure backoff, ~1 s): that cycle is refused the same way.
        await eventually(lambda: env.log().count("cycle_failed") >= 2, 10, "a retried cycle")
        # Every output, verifier and signer, is as it was: not rewritten and restored.
        assert env.snapshot_outputs() == before
        assert (include.stat().st_ino, include.stat().st_mtime_ns) == (
            stat.st_ino,
            stat.st_mtime_ns,
        )
        assert env.procs[0].poll() is None
        assert "Reloaded" not in server.log_text()
        assert await client.alive()
        assert not await can_connect(server, bad)

        # A later good keyset goes through: published, and the real server reloaded.
        env.write_source(source_doc(old, new, active=new))
        await eventually(lambda: can_connect(server, new), 10, "the new nkey to be accepted")
        assert new.public in include.read_text() and bad.public not in include.read_text()
        assert b'"k-new"' in (env.out / "jwks.json").read_bytes()
        await eventually(lambda: last_error(env) is None, 10, "last_error to clear")
        assert "Reloaded server configuration" in server.log_text()
        assert await client.alive()
    finally:
        await client.close()
