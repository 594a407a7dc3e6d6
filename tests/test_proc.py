"""keysetd.proc: real child processes, killed process groups, redacted stderr."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from keysetd import cancel, proc
from tests.conftest import is_dead, wait_for

PY = sys.executable
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\n"
    "OF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\n"
    "-----END PRIVATE KEY-----"
)
SECRET_B64 = "c2VjcmV0LWhtYWMta2V5LW1hdGVyaWFsLTEyMzQ1Njc4OTA="
SECRET_HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SECRET_B64URL = "dGhpcy1pcy1hLXNlY3JldA_-AbCdEfGhIjKl"


def run(argv: list[str], timeout: float = 5.0, max_stdout: int | None = 1 << 20) -> bytes:
    return proc.run(argv, env=proc.minimal_env(), timeout=timeout, max_stdout=max_stdout)


# --- redact -----------------------------------------------------------------


@pytest.mark.parametrize("secret", [PEM, SECRET_B64, SECRET_HEX, SECRET_B64URL])
def test_redact_hides_key_material(secret: str) -> None:
    text = f"error: bad key {secret} at line 3"
    assert proc.redact(text) == "error: bad key [redacted] at line 3"


def test_redact_hides_unterminated_pem() -> None:
    out = proc.redact("oops " + PEM[:120])
    assert out == "oops [redacted]"


def test_redact_keeps_ordinary_text() -> None:
    text = "kms: access denied for key alias/jwt-a (status 403)"
    assert proc.redact(text) == text


# --- run --------------------------------------------------------------------


def test_run_returns_stdout() -> None:
    assert run([PY, "-c", "print('hello')"]) == b"hello\n"


def test_minimal_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", "must-not-leak")
    out = proc.run(
        [PY, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env=proc.minimal_env({"EXTRA": "1"}),
        timeout=5,
        max_stdout=1 << 16,
    )
    env = json.loads(out)
    env.pop("LC_CTYPE", None)  # Python may add it for the C locale coercion
    assert env == proc.minimal_env({"EXTRA": "1"})
    assert env["PATH"] == proc.BASE_ENV_PATH


def test_nonzero_exit_has_code_and_redacted_stderr() -> None:
    script = f"import sys; sys.stderr.write({PEM!r} + ' token {SECRET_B64}\\n'); sys.exit(3)"
    with pytest.raises(proc.ProcExit) as info:
        run([PY, "-c", script])
    assert info.value.returncode == 3
    assert "exited with status 3" in info.value.reason
    assert "[redacted]" in info.value.reason
    assert SECRET_B64 not in info.value.reason
    assert "MIGHAgEA" not in info.value.reason


def test_killed_by_signal_is_named() -> None:
    with pytest.raises(proc.ProcExit, match="killed by SIGTERM"):
        run([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])


def test_stderr_tail_is_bounded_and_never_shows_a_cut_secret() -> None:
    # 200 KiB of stderr, each line a secret: only a redacted tail of ~2 KiB survives.
    script = (
        "import sys\n"
        f"for i in range(4000): sys.stderr.write('line %d {SECRET_HEX}\\n' % i)\n"
        "sys.stderr.write('final: permission denied\\n'); sys.exit(1)"
    )
    with pytest.raises(proc.ProcExit) as info:
        run([PY, "-c", script])
    tail = info.value.stderr_tail
    assert tail.startswith("[...]")
    assert tail.endswith("final: permission denied")
    assert len(tail) <= proc.STDERR_TAIL + 5
    assert SECRET_HEX[:12] not in tail and SECRET_HEX[-12:] not in tail


def test_missing_program_is_a_spawn_error() -> None:
    with pytest.raises(proc.ProcSpawnError, match="No such file"):
        run(["/nonexistent/kms-client"])


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    gc_file = tmp_path / "grandchild.pid"
    script = f"sleep 100 & echo $! > {gc_file}; sleep 100"
    start = time.monotonic()
    with pytest.raises(proc.ProcTimeout, match=r"timed out after 0\.5s \(process group killed\)"):
        run(["/bin/sh", "-c", script], timeout=0.5)
    assert time.monotonic() - start < 3
    wait_for(lambda: gc_file.exists() and gc_file.read_text().strip() != "")
    grandchild = int(gc_file.read_text())
    wait_for(lambda: is_dead(grandchild))


def test_exited_leader_with_background_child_holding_stdout_times_out(tmp_path: Path) -> None:
    gc_file = tmp_path / "grandchild.pid"
    with pytest.raises(proc.ProcTimeout):
        run(["/bin/sh", "-c", f"sleep 100 & echo $! > {gc_file}; exit 0"], timeout=0.5)
    grandchild = int(gc_file.read_text())
    wait_for(lambda: is_dead(grandchild))


def test_stdout_over_limit_is_cut_quickly() -> None:
    start = time.monotonic()
    script = "import sys\nwhile True: sys.stdout.buffer.write(b'a' * 65536)"
    with pytest.raises(proc.ProcOutputTooLarge, match="exceeds 1000 bytes"):
        run([PY, "-c", script], timeout=10, max_stdout=1000)
    assert time.monotonic() - start < 3


def test_stdout_exactly_at_limit_is_fine() -> None:
    out = run([PY, "-c", "import sys; sys.stdout.write('x' * 1000)"], max_stdout=1000)
    assert out == b"x" * 1000


def test_discarded_stdout() -> None:
    assert run([PY, "-c", "print('x' * 100000)"], max_stdout=None) == b""


@pytest.mark.parametrize("bad", [[], [""], ["a\0b"]])
def test_check_argv_rejects(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        proc.check_argv(bad)


@pytest.mark.parametrize("bad", [{"A=B": "1"}, {"": "1"}, {"1A": "x"}, {"A": "x\0"}])
def test_check_env_rejects(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        proc.check_env(bad)


# --- cancel (SIGTERM to keysetd) -----------------------------------------------


def test_cancel_kills_a_cancellable_run_and_its_group_at_once(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {child_file}; wait"
    timer = threading.Timer(0.5, cancel.cancel_all)
    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(proc.ProcCancelled, match="keysetd is stopping"):
            proc.run(
                ["/bin/sh", "-c", script],
                env=proc.minimal_env(),
                timeout=60,
                max_stdout=1024,
                cancellable=True,
            )
        assert time.monotonic() - started < 0.5 + 2
        child = int(child_file.read_text())
        wait_for(lambda: is_dead(child), timeout=2, what="the grandchild gone")
        # Once stopping, a cancellable run does not start; a notifier's run still does.
        with pytest.raises(proc.ProcCancelled):
            proc.run([PY, "-c", "pass"], env={}, timeout=5, max_stdout=10, cancellable=True)
        assert run([PY, "-c", "print('told')"]) == b"told\n"
    finally:
        timer.cancel()
        cancel.reset()
