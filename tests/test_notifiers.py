"""Built-in notifiers against real processes, real signals and a real HTTP server."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from keysetd.errors import NotifyError
from keysetd.notifiers.command import CommandNotifier, CommandNotifierConfig
from keysetd.notifiers.http import HttpNotifier, HttpNotifierConfig
from keysetd.notifiers.signal import SignalNotifier, SignalNotifierConfig
from keysetd.plugin import NotifyEvent
from keysetd.registry import load
from keysetd.tables import TableError
from tests.conftest import is_dead, wait_for
from tests.servers import HttpServer, Reply, http_server, loopback_tls

PY = sys.executable
EVENT = NotifyEvent(fingerprint="ab" * 32, active_kid="2026-11-b", outputs=("jwks", "keyset"))

# Records every SIGHUP/SIGUSR1 it gets as a line in argv[1]; "ready" once handlers are set.
RECORDER = """
import signal, sys
out = sys.argv[1]
def record(signum, frame):
    with open(out, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGHUP, record)
signal.signal(signal.SIGUSR1, record)
with open(out, "a") as f:
    f.write("ready\\n")
while True:
    signal.pause()
"""


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@dataclass
class Recorder:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def received(self) -> list[str]:
        return [line for line in lines(self.log) if line != "ready"]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[], Recorder]]:
    """Start recorder processes (ready to take signals); kill and reap them afterwards."""
    started: list[Recorder] = []

    def start() -> Recorder:
        log = tmp_path / f"signals-{len(started)}.log"
        child = subprocess.Popen([PY, "-c", RECORDER, str(log)])
        recorder = Recorder(child, log)
        started.append(recorder)
        wait_for(lambda: "ready" in lines(log))
        return recorder

    yield start
    for recorder in started:
        recorder.proc.kill()
        recorder.proc.wait(timeout=5)


def signal_notifier(**table: object) -> SignalNotifier:
    config = SignalNotifierConfig.parse({"type": "signal", "name": "app", **table})
    return SignalNotifier(config)


def test_entry_points_resolve_to_these_classes() -> None:
    assert load("keysetd.notifiers", "signal") is SignalNotifier
    assert load("keysetd.notifiers", "command") is CommandNotifier
    assert load("keysetd.notifiers", "http") is HttpNotifier


# --- signal -------------------------------------------------------------------


def test_signal_via_pidfile(spawn: Callable[[], Recorder], tmp_path: Path) -> None:
    child = spawn()
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{child.pid}\n")
    notifier = signal_notifier(pidfile=str(pidfile))
    notifier.notify(EVENT)
    wait_for(lambda: child.received() == ["SIGHUP"])


def test_signal_via_pid_with_other_signal(spawn: Callable[[], Recorder]) -> None:
    child = spawn()
    signal_notifier(pid=child.pid, signal="USR1").notify(EVENT)
    wait_for(lambda: child.received() == ["SIGUSR1"])


def test_pidfile_is_reread_every_time(spawn: Callable[[], Recorder], tmp_path: Path) -> None:
    first, second = spawn(), spawn()
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(first.pid))
    notifier = signal_notifier(pidfile=str(pidfile))
    notifier.notify(EVENT)
    wait_for(lambda: first.received() == ["SIGHUP"])
    pidfile.write_text(str(second.pid))
    notifier.notify(EVENT)
    wait_for(lambda: second.received() == ["SIGHUP"])
    assert first.received() == ["SIGHUP"]


def test_process_name_match_is_signalled(spawn: Callable[[], Recorder]) -> None:
    child = spawn()
    comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
    signal_notifier(pid=child.pid, process_name=comm).notify(EVENT)
    wait_for(lambda: child.received() == ["SIGHUP"])


def test_process_name_mismatch_is_refused(spawn: Callable[[], Recorder], tmp_path: Path) -> None:
    child = spawn()
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(child.pid))
    notifier = signal_notifier(pidfile=str(pidfile), process_name="nats-server")
    with pytest.raises(NotifyError, match="not 'nats-server'; not signalled") as info:
        notifier.notify(EVENT)
    assert info.value.notifier == "app"
    assert str(pidfile) in str(info.value)
    # Prove the child got nothing: a later, accepted signal is the only one it records.
    signal_notifier(pid=child.pid, signal="SIGUSR1").notify(EVENT)
    wait_for(lambda: child.received() != [])
    assert child.received() == ["SIGUSR1"]


def test_stale_pid_is_an_error(tmp_path: Path) -> None:
    gone = subprocess.Popen([PY, "-c", "pass"])
    gone.wait(timeout=5)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(gone.pid))
    with pytest.raises(NotifyError, match=r"does not exist \(stale pid\)") as info:
        signal_notifier(pidfile=str(pidfile)).notify(EVENT)
    assert str(pidfile) in str(info.value)


def test_stale_pid_with_process_name() -> None:
    gone = subprocess.Popen([PY, "-c", "pass"])
    gone.wait(timeout=5)
    with pytest.raises(NotifyError, match="stale pid"):
        signal_notifier(pid=gone.pid, process_name="app").notify(EVENT)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("", "is empty"),
        ("\n", "is empty"),
        ("12ab", "does not hold a pid"),
        ("-5", "does not hold a pid"),
        ("1" * 100, "does not hold a pid"),
        ("0", "refusing to signal pid 0"),
        ("self", "that is keysetd itself"),
    ],
)
def test_bad_pidfile_is_refused(tmp_path: Path, content: str | None, reason: str) -> None:
    pidfile = tmp_path / "app.pid"
    if content is not None:
        pidfile.write_text(str(os.getpid()) if content == "self" else content)
    with pytest.raises(NotifyError, match=reason) as info:
        signal_notifier(pidfile=str(pidfile)).notify(EVENT)
    assert f"notifier app: pidfile {pidfile}" in str(info.value)


def test_pidfile_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    os.mkfifo(pidfile)
    with pytest.raises(NotifyError, match="not a regular file"):
        signal_notifier(pidfile=str(pidfile)).notify(EVENT)


@pytest.mark.parametrize(
    "table",
    [
        {},
        {"pid": 10, "pidfile": "/run/app.pid"},
        {"pid": 0},
        {"pid": 10, "signal": "SIGNOPE"},
        {"pid": 10, "process_name": ""},
        {"pid": 10, "pid_file": "/run/app.pid"},
    ],
)
def test_signal_config_rejects(table: dict[str, object]) -> None:
    with pytest.raises(TableError):
        SignalNotifierConfig.parse({"type": "signal", **table})


@pytest.mark.parametrize("name", ["SIGHUP", "HUP", "hup", " sighup "])
def test_signal_names_normalised(name: str) -> None:
    config = SignalNotifierConfig.parse({"type": "signal", "pid": 1, "signal": name})
    assert config.signal == "SIGHUP"
    assert SignalNotifier(config).name == "signal"


# --- command ------------------------------------------------------------------


def command_notifier(argv: list[str], **table: object) -> CommandNotifier:
    config = CommandNotifierConfig.parse({"type": "command", "argv": argv, **table})
    return CommandNotifier(config)


def test_command_sees_event_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", "must-not-leak")
    out = tmp_path / "env.json"
    script = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    command_notifier([PY, "-c", script, str(out)], env={"APP": "web"}).notify(EVENT)
    env = json.loads(out.read_text())
    assert env["KEYSETD_FINGERPRINT"] == EVENT.fingerprint
    assert env["KEYSETD_ACTIVE_KID"] == "2026-11-b"
    assert env["KEYSETD_CHANGED_OUTPUTS"] == "jwks,keyset"
    assert env["APP"] == "web"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert "RGS_JWT_KEYSET" not in env


def test_command_active_kid_none_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "kid"
    script = "import os, sys; open(sys.argv[1], 'w').write(repr(os.environ['KEYSETD_ACTIVE_KID']))"
    event = NotifyEvent(fingerprint="f", active_kid=None, outputs=("jwks",))
    command_notifier([PY, "-c", script, str(out)]).notify(event)
    assert out.read_text() == "''"


def test_command_failure_has_exit_code_and_redacted_stderr() -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbC1hYmNkZWZnaGlqa2xtbm9w"
    script = f"import sys; sys.stderr.write('reload failed: {secret}'); sys.exit(4)"
    with pytest.raises(NotifyError, match="exited with status 4") as info:
        command_notifier([PY, "-c", script], name="reloader").notify(EVENT)
    assert str(info.value).startswith("notifier reloader: ")
    assert "reload failed: [redacted]" in str(info.value)
    assert secret not in str(info.value)


def test_command_timeout_kills_process_group(tmp_path: Path) -> None:
    gc_file = tmp_path / "grandchild.pid"
    notifier = command_notifier(
        ["/bin/sh", "-c", f"sleep 100 & echo $! > {gc_file}; sleep 100"], timeout="400ms"
    )
    start = time.monotonic()
    with pytest.raises(NotifyError, match=r"timed out after 0\.4s \(process group killed\)"):
        notifier.notify(EVENT)
    assert time.monotonic() - start < 3
    wait_for(lambda: gc_file.exists() and gc_file.read_text().strip() != "")
    grandchild = int(gc_file.read_text())
    wait_for(lambda: is_dead(grandchild))


@pytest.mark.parametrize(
    "table",
    [
        {"argv": []},
        {"argv": ["x"], "env": {"KEYSETD_FINGERPRINT": "forged"}},
        {"argv": ["x"], "timeout": "soon"},
        {"argv": "reload.sh"},
    ],
)
def test_command_config_rejects(table: dict[str, object]) -> None:
    with pytest.raises(TableError):
        CommandNotifierConfig.parse({"type": "command", **table})


# --- http ---------------------------------------------------------------------


#: Seconds between two bytes of a dripped answer: a whole answer takes 30 s or more.
DRIP = 0.5
_FAIL_BODY = b"boom " + b"x" * 5000 + b" c2VjcmV0LWtleS1tYXRlcmlhbC1hYmNkZWZn"
ROUTES = {
    "/ok": Reply(204),
    "/fail": Reply(500, _FAIL_BODY),
    "/redirect": Reply(302, headers={"Location": "/ok"}),
    "/slow": Reply(204, delay=5.0),
    "/drip-head": Reply(200, b"ok", drip_head=DRIP),
    "/drip-body": Reply(200, b"delivered, reloading " * 4, drip_body=DRIP),
}


@contextmanager
def recording(context: ssl.SSLContext | None = None) -> Iterator[HttpServer]:
    """A real HTTP server on 127.0.0.1 recording every POST (behind TLS with ``context``)."""
    with http_server(context) as server:
        server.routes = dict(ROUTES)
        server.reply = Reply(404)
        yield server


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    with recording() as record:
        yield record


def http_notifier(url: str, **table: object) -> HttpNotifier:
    config = HttpNotifierConfig.parse({"type": "http", "url": url, **table})
    return HttpNotifier(config)


def test_http_posts_event(server: HttpServer) -> None:
    http_notifier(server.url("/ok"), headers={"Authorization": "Bearer t0k"}).notify(EVENT)
    seen = server.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/ok")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer t0k"
    assert json.loads(seen.body) == {
        "fingerprint": EVENT.fingerprint,
        "active_kid": "2026-11-b",
        "outputs": ["jwks", "keyset"],
    }


def test_http_500_is_an_error_with_a_short_redacted_excerpt(server: HttpServer) -> None:
    with pytest.raises(NotifyError, match="HTTP 500") as info:
        http_notifier(server.url("/fail?token=abc"), name="gw").notify(EVENT)
    text = str(info.value)
    assert text.startswith(f"notifier gw: POST {server.url('/fail')}: HTTP 500")
    assert "token=abc" not in text
    assert len(text) < 400
    assert "c2VjcmV0" not in text


def test_http_redirect_is_not_followed(server: HttpServer) -> None:
    before = len(server.requests)
    with pytest.raises(NotifyError, match="HTTP 302"):
        http_notifier(server.url("/redirect")).notify(EVENT)
    assert [r.path for r in server.requests[before:]] == ["/redirect"]


def test_http_unreachable_port() -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(NotifyError, match="refused"):
            http_notifier(f"http://127.0.0.1:{port}/reload", timeout=2).notify(EVENT)


def test_http_slow_server_times_out(server: HttpServer) -> None:
    start = time.monotonic()
    with pytest.raises(NotifyError, match="timed out"):
        http_notifier(server.url("/slow"), timeout="300ms").notify(EVENT)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("part", ["head", "body"])
def test_http_a_dripped_answer_fails_at_the_timeout(server: HttpServer, part: str) -> None:
    """A 2xx sent a byte per 0.5 s is no delivery: the notify fails once ``timeout`` is spent."""
    notifier = http_notifier(server.url(f"/drip-{part}"), timeout="1s")
    start = time.monotonic()
    with pytest.raises(NotifyError, match=r"timed out after 1s"):
        notifier.notify(EVENT)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 1 + 2, elapsed  # the drip alone would take 30 s or more


def test_http_userinfo_is_not_shown(server: HttpServer) -> None:
    with pytest.raises(NotifyError) as info:
        http_notifier(server.url("/fail").replace("//", "//user:pw@")).notify(EVENT)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    "table",
    [
        {"url": "ftp://127.0.0.1/x"},
        {"url": "127.0.0.1:8080/reload"},
        {"url": "http://127.0.0.1:99999/"},
        {"url": "http://127.0.0.1/", "ca_file": "/etc/ca.pem"},
        {"url": "http://127.0.0.1/", "headers": {"X-Evil": "a\r\nInjected: 1"}},
        {"url": "http://127.0.0.1/", "headers": {"Authorization": "Bearer t\u2019k"}},
        {"url": "http://127.0.0.1/", "headers": {"Authorization": "Bearer t\x7fk"}},
        {"url": "http://" + "a" * 64 + ".example/"},
        {"url": "http://a..b.example/"},
        {"url": "http://127.0.0.1/", "headers": {"Content-Type": "text/plain"}},
        {"url": "http://127.0.0.1/", "timeout": 0},
    ],
)
def test_http_config_rejects(table: dict[str, object]) -> None:
    with pytest.raises(TableError):
        HttpNotifierConfig.parse({"type": "http", **table})


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpServer, Path]]:
    """The recording server behind TLS: a certificate for 127.0.0.1 from a test CA."""
    tls = loopback_tls(tmp_path_factory.mktemp("tls"))
    with recording(tls.context) as record:
        yield record, tls.ca_file


def test_https_verified_with_ca_file(tls_server: tuple[HttpServer, Path]) -> None:
    server, ca = tls_server
    http_notifier(server.url("/ok"), ca_file=str(ca)).notify(EVENT)
    assert server.requests[-1].path == "/ok"


def test_https_untrusted_certificate_is_refused(tls_server: tuple[HttpServer, Path]) -> None:
    server, _ = tls_server
    before = len(server.requests)
    with pytest.raises(NotifyError, match="TLS verification failed: unable to get local issuer"):
        http_notifier(server.url("/ok")).notify(EVENT)
    assert len(server.requests) == before


def test_https_with_missing_ca_file_is_a_notify_error(tmp_path: Path) -> None:
    notifier = http_notifier("https://127.0.0.1:1/", ca_file=str(tmp_path / "absent.pem"))
    with pytest.raises(NotifyError, match="cannot load ca_file"):
        notifier.notify(EVENT)
