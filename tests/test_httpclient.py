"""keysetd.httpclient against real loopback servers: the total deadline, cancel, the seam."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysetd import cancel, httpclient
from keysetd.httpclient import Request, Response
from keysetd.notifiers.http import HttpNotifier, HttpNotifierConfig
from keysetd.plugin import NotifyEvent
from keysetd.sources.jwks_url import JwksUrlSource, JwksUrlSourceConfig
from tests.servers import HttpServer, Reply, free_port, http_server, loopback_tls

#: Generous for a loaded 2-core machine, far below any drip in these tests (20 s or more).
SLACK = 2.0


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with http_server() as running:
        yield running


@pytest.fixture(autouse=True)
def _not_stopping() -> Iterator[None]:
    yield
    cancel.reset()


def get(url: str, timeout: float = 1.0, **options: object) -> Response:
    return httpclient.send(Request("GET", url, timeout=timeout, **options))  # type: ignore[arg-type]


def timed(call: object) -> tuple[BaseException, float]:
    """The exception ``call()`` raised and how long it took."""
    started = time.monotonic()
    with pytest.raises(httpclient.HttpFailure) as info:
        call()  # type: ignore[operator]
    return info.value, time.monotonic() - started


def test_a_complete_answer(server: HttpServer) -> None:
    server.reply = Reply(200, b'{"keys": []}', {"X-Seen": "yes"})
    response = get(server.url("/certs?x=1"), headers={"Authorization": "Bearer t0k"})
    assert (response.status, response.body, response.headers["X-Seen"]) == (
        200,
        b'{"keys": []}',
        "yes",
    )
    [seen] = server.requests
    assert (seen.method, seen.path, seen.headers["Authorization"]) == (
        "GET",
        "/certs",
        "Bearer t0k",
    )
    assert seen.headers["Connection"] == "close"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"x" * 64, drip_head=0.5),
        Reply(200, b"x" * 64, drip_body=0.5),
        Reply(500, b"x" * 64, drip_body=0.5),
        Reply(200, b"x" * 64, delay=30),
    ],
    ids=["head", "body", "error-body", "silent"],
)
def test_the_timeout_bounds_the_whole_exchange(server: HttpServer, reply: Reply) -> None:
    server.reply = reply
    error, elapsed = timed(lambda: get(server.url(), timeout=1.0))
    assert isinstance(error, httpclient.HttpTimeout)
    assert error.reason == "timed out after 1s"
    assert 0.9 <= elapsed < 1 + SLACK, elapsed


def test_a_tls_handshake_that_never_comes_is_bounded(tmp_path: Path) -> None:
    """The port accepts TCP (the kernel's backlog) but nobody speaks TLS on it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/"
        error, elapsed = timed(
            lambda: get(url, timeout=0.5, ca_file=loopback_tls(tmp_path).ca_file)
        )
    assert isinstance(error, httpclient.HttpTimeout)
    assert elapsed < 0.5 + SLACK


def test_tls_is_verified_and_never_optional(tmp_path: Path) -> None:
    tls = loopback_tls(tmp_path)
    with http_server(tls.context) as server:
        server.reply = Reply(204)
        assert get(server.url(), ca_file=tls.ca_file).status == 204
        error, _ = timed(lambda: get(server.url()))
        assert isinstance(error, httpclient.HttpTlsError)
        assert error.reason.startswith("TLS verification failed: ")
        assert len(server.requests) == 1  # the refused handshake sent no request


def test_redirects_are_answers(server: HttpServer) -> None:
    server.reply = Reply(301, headers={"Location": "http://evil.example.net/x"})
    response = get(server.url())
    assert response.status == 301
    assert response.problem().startswith("HTTP 301 redirect to evil.example.net not followed")
    assert len(server.requests) == 1


def test_environment_proxies_are_not_used(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    server.reply = Reply(200, b"direct")
    assert get(server.url()).body == b"direct"


def test_size_cap_and_error_excerpt(server: HttpServer) -> None:
    server.reply = Reply(200, b"x" * 5000, content_length=False)
    error, _ = timed(lambda: get(server.url(), max_body=1000))
    assert isinstance(error, httpclient.HttpTooLarge)
    server.reply = Reply(503, b"upstream down " * 1000)
    response = get(server.url(), max_body=1000)
    assert response.status == 503 and len(response.body) <= 800
    assert response.problem().startswith("HTTP 503 Service Unavailable: upstream down")


def test_a_refused_port_is_a_connect_error() -> None:
    error, _ = timed(lambda: get(f"http://127.0.0.1:{free_port()}/"))
    assert isinstance(error, httpclient.HttpConnectError)
    assert error.reason == "Connection refused"


def test_cancel_ends_a_cancellable_exchange_at_once(server: HttpServer) -> None:
    server.reply = Reply(200, b"x" * 64, drip_head=0.5)
    threading.Timer(0.3, cancel.cancel_all).start()
    error, elapsed = timed(lambda: get(server.url(), timeout=30, cancellable=True))
    assert isinstance(error, httpclient.HttpCancelled)
    assert elapsed < 0.3 + SLACK
    # Once stopping, a cancellable exchange ends before it starts; others still run.
    error, _ = timed(lambda: get(server.url(), timeout=30, cancellable=True))
    assert isinstance(error, httpclient.HttpCancelled)
    server.reply = Reply(204)
    assert get(server.url()).status == 204


def test_the_transport_seam_serves_the_source_and_the_notifier(server: HttpServer) -> None:
    sent: list[Request] = []

    def recording(request: Request) -> Response:
        sent.append(request)
        return httpclient.send(request)

    server.reply = Reply(200, b'{"keys": []}')
    source = JwksUrlSource(
        JwksUrlSourceConfig(type="jwks_url", url=server.url("/certs"), timeout=3.0),
        transport=recording,
    )
    source.fetch()
    notifier = HttpNotifier(
        HttpNotifierConfig.parse({"type": "http", "url": server.url("/reload")}),
        transport=recording,
    )
    notifier.notify(NotifyEvent("f" * 64, "k1", ("jwks",)))
    assert [(r.method, r.timeout, r.cancellable) for r in sent] == [
        ("GET", 3.0, True),
        ("POST", 5.0, False),  # a notification is never cut short by SIGTERM
    ]
    assert [s.path for s in server.requests] == ["/certs", "/reload"]


# --- input that http.client or the resolver cannot take (issue 12) --------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer s3cr\u2019t-token"}, {"Authorization": "Bearer s3cr3t\n-token"}],
    ids=["non-latin-1", "line-break"],
)
def test_a_header_http_cannot_send_is_a_failure_that_never_quotes_it(
    server: HttpServer, headers: dict[str, str]
) -> None:
    """These once escaped as UnicodeEncodeError / ValueError quoting the value."""
    error, _ = timed(lambda: get(server.url(), headers=headers))
    assert type(error) is httpclient.HttpFailure
    assert error.reason.startswith("the request cannot be sent")
    assert "s3cr" not in error.reason and "token" not in error.reason
    assert error.__cause__ is None and error.__suppress_context__
    assert server.requests == []


def test_a_url_with_a_control_character_is_a_failure_that_never_quotes_it(
    server: HttpServer,
) -> None:
    error, _ = timed(lambda: get(server.url("/certs?key=s3cr3t\x01")))
    assert type(error) is httpclient.HttpFailure
    assert "s3cr3t" not in error.reason


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..b.example"])
def test_a_host_name_idna_refuses_is_a_connect_error(host: str) -> None:
    """The resolver thread once died of the UnicodeError and ``found[0]`` raised IndexError."""
    error, elapsed = timed(lambda: get(f"http://{host}/", timeout=2.0))
    assert isinstance(error, httpclient.HttpConnectError)
    assert error.reason == "cannot resolve the host"
    assert elapsed < 2.0


def test_a_non_ascii_digit_content_length_is_read_to_the_close(server: HttpServer) -> None:
    """'²'.isdigit() is True and int('²') raises: the length is ignored, as http.client does."""
    server.reply = Reply(200, b"x" * 10, {"Content-Length": "\u00b2"}, content_length=False)
    assert get(server.url()).body == b"x" * 10
    error, _ = timed(lambda: get(server.url(), max_body=5))
    assert isinstance(error, httpclient.HttpTooLarge)


def test_a_redirect_to_a_broken_url_is_described_without_a_host(server: HttpServer) -> None:
    server.reply = Reply(302, headers={"Location": "http://[x"})
    response = get(server.url())
    assert response.problem() == ("HTTP 302 redirect not followed (set url to the final address)")


def test_reprs_carry_neither_headers_nor_bodies(server: HttpServer) -> None:
    request = Request(
        "POST",
        server.url("/login"),
        timeout=1.0,
        headers={"Authorization": "Bearer s3cr3t-bearer"},
        body=b'{"secret_id": "s3cr3t-id"}',
    )
    server.reply = Reply(200, b'{"auth": {"client_token": "s3cr3t-client"}}', {"X-T": "s3cr3t-h"})
    response = httpclient.send(request)
    assert response.body.startswith(b'{"auth"')
    for shown in (repr(request), repr(response)):
        assert "s3cr3t" not in shown, shown
    assert "POST" in repr(request) and "200" in repr(response)
