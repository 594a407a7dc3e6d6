"""A hostile HTTP server against the real ``keysetd run``: the daemon stays up and names it.

A ``Content-Length`` that ``str.isdigit`` accepts and ``int`` refuses, and a redirect
whose ``Location`` ``urlsplit`` refuses, once escaped the HTTP client as ValueErrors
that neither the jwks_url source nor the notifiers caught: every cycle crashed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Env, wait_for
from tests.keys import jwks_doc
from tests.servers import HttpServer, Reply, http_server

#: U+00B2 SUPERSCRIPT TWO: "²".isdigit() is True, int("²") raises ValueError. The length is
#: unusable, so the answer is read to the close, as http.client itself does.
SUPERSCRIPT = {"Content-Length": "\u00b2"}
REDIRECT = Reply(302, b"", {"Location": "http://[x"})
NOT_FOLLOWED = "HTTP 302 redirect not followed"


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with http_server() as running:
        yield running


def public(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}


def status(env: Env) -> dict[str, Any]:
    done = env.keysetd("status", "--json", "-c", str(env.config_path))
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def jwks_url_daemon(env: Env, server: HttpServer, keys: dict[str, Any]) -> Any:
    server.reply = Reply(200, jwks_doc(public(keys["es-a"])))
    env.config(
        source={
            "type": "jwks_url",
            "url": server.url("/certs"),
            "timeout": "2s",
            "refresh_interval": "200ms",
        },
        outputs=[{"type": "jwks", "path": str(env.jwks)}],
    )
    proc = env.start()
    wait_for(env.jwks.exists, what="first publish")
    return proc


def test_a_jwks_url_answer_with_a_non_ascii_digit_length_is_read_to_the_close(
    env: Env, server: HttpServer, keys: dict[str, Any]
) -> None:
    proc = jwks_url_daemon(env, server, keys)
    rotated = jwks_doc(public(keys["es-a"]), public(keys["es-b"]))
    server.reply = Reply(200, rotated, SUPERSCRIPT, content_length=False)
    wait_for(lambda: b"es-b" in env.jwks.read_bytes(), timeout=10, what="the rotation")
    assert proc.poll() is None, env.log()[-3000:]
    assert status(env)["last_error"] is None
    assert "Traceback" not in env.log()


def test_a_jwks_url_redirect_to_a_broken_url_is_named_and_the_daemon_stays_up(
    env: Env, server: HttpServer, keys: dict[str, Any]
) -> None:
    proc = jwks_url_daemon(env, server, keys)
    before = env.snapshot_outputs()
    server.reply = REDIRECT
    wait_for(
        lambda: NOT_FOLLOWED in (status(env)["last_error"] or ""),
        timeout=10,
        what="status naming the redirect",
    )
    asked = len(server.requests)
    wait_for(lambda: len(server.requests) > asked + 1, timeout=10, what="more cycles")
    assert proc.poll() is None, env.log()[-3000:]
    assert env.snapshot_outputs() == before
    assert "Traceback" not in env.log()
    # The server comes back: the same daemon publishes again.
    server.reply = Reply(200, jwks_doc(public(keys["es-a"]), public(keys["es-b"])))
    wait_for(lambda: b"es-b" in env.jwks.read_bytes(), timeout=10, what="recovery")


def logged(env: Env, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in env.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


@pytest.mark.parametrize("hostile", ["superscript-length", "broken-redirect"])
def test_a_hostile_webhook_answer_never_stops_the_daemon(
    env: Env, server: HttpServer, keys: dict[str, Any], hostile: str
) -> None:
    if hostile == "superscript-length":
        server.reply = Reply(200, b"ok", SUPERSCRIPT, content_length=False)
        expected = "notified"
    else:
        server.reply = REDIRECT
        expected = "notify_failed"
    env.write_source(jwks_doc(keys["es-a"], active="es-a"))
    env.config(notify=[{"type": "http", "url": server.url("/-/reload"), "timeout": "2s"}])
    proc = env.start()
    wait_for(lambda: logged(env, expected), timeout=20, what=expected)
    if expected == "notify_failed":
        assert NOT_FOLLOWED in logged(env, expected)[0]["error"]
    assert proc.poll() is None, env.log()[-3000:]
    # Still up: a rotation is published and notified again.
    env.write_source(jwks_doc(keys["es-a"], keys["es-b"], active="es-b"))
    wait_for(lambda: b"es-b" in env.signer.read_bytes(), timeout=10, what="next publish")
    wait_for(lambda: len(logged(env, expected)) >= 2, timeout=20, what=f"a second {expected}")
    assert proc.poll() is None, env.log()[-3000:]
    assert "Traceback" not in env.log()
