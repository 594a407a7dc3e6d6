"""The asyncio service: connect to NATS as an ``auth_users`` user, answer ``$SYS.REQ.USER.AUTH``.

Stops on SIGTERM/SIGINT after draining the subscription. A handler failure is logged
and answered with an empty reply (a refusal): one bad request never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from keysetd.plugin import event, sd_notify
from keysetd.verifier import KeysetUnavailable, Verifier
from keysetd_nats_callout.authorizer import Authorizer
from keysetd_nats_callout.config import CalloutConfig, read_password, read_signer, read_xkey

__all__ = ["SUBJECT", "CalloutError", "build_authorizer", "open_verifier", "serve"]

SUBJECT = "$SYS.REQ.USER.AUTH"


class CalloutError(Exception):
    """A runtime failure at start (NATS unreachable, no jwks): exit 1."""


async def open_verifier(config: CalloutConfig) -> Verifier:
    """The verifier over ``config.jwks``, waiting up to ``jwks_wait`` for keysetd to write it."""
    deadline = time.monotonic() + config.jwks_wait
    while True:
        try:
            return await asyncio.to_thread(
                Verifier, config.jwks, config.algorithms, config.check_interval
            )
        except KeysetUnavailable as exc:
            if time.monotonic() >= deadline:
                raise CalloutError(str(exc)) from None
            reason = exc.reason
        event("callout_waiting_for_jwks", logging.INFO, path=str(config.jwks), reason=reason)
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


async def build_authorizer(config: CalloutConfig) -> Authorizer:
    signer, xkey = read_signer(config), read_xkey(config)
    return Authorizer(config, await open_verifier(config), signer, xkey)


async def _log_error(exc: Exception) -> None:
    event("callout_nats_error", logging.WARNING, error=f"{type(exc).__name__}: {exc}")


async def _log_disconnect() -> None:
    event("callout_nats_disconnected", logging.WARNING)


async def _log_reconnect() -> None:
    event("callout_nats_reconnected", logging.INFO)


async def serve(config: CalloutConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    authorizer = await build_authorizer(config)
    stop = stop or _signal_stop()
    client = Client()
    try:
        await client.connect(
            config.nats.url,
            user=config.nats.user,
            password=read_password(config),
            name="keysetd-nats-callout",
            connect_timeout=math.ceil(config.nats.connect_timeout),
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=_log_error,
            disconnected_cb=_log_disconnect,
            reconnected_cb=_log_reconnect,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await client.close()
        raise CalloutError(f"cannot connect to {config.nats.url}: {type(exc).__name__}") from None

    async def on_request(msg: Msg) -> None:
        try:
            reply = await authorizer.handle(msg.data, msg.headers)
        except Exception as exc:  # a bug must not take the service down with it
            event("callout_error", logging.ERROR, error=type(exc).__name__)
            reply = b""
        if msg.reply:
            await client.publish(msg.reply, reply)

    try:
        await client.subscribe(SUBJECT, queue=config.nats.queue, cb=on_request)
        await client.flush(timeout=math.ceil(config.nats.connect_timeout))
        event(
            "callout_ready",
            subject=SUBJECT,
            account=authorizer.signer.public_key,
            # The public key the server's auth_callout xkey must name (None: plain).
            xkey=authorizer.xkey.public_key if authorizer.xkey else None,
            jwks=str(config.jwks),
            kids=list(authorizer.verifier.kids),
        )
        sd_notify("READY=1", "STATUS=answering auth callouts")
        await stop.wait()
        sd_notify("STOPPING=1")
        event("callout_stopping")
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await client.drain()
    finally:
        await client.close()


def _signal_stop() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
