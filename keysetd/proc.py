"""Run an external program safely: the one subprocess runner of keysetd.

Used by the command source (a KMS/HSM client printing a keyset) and the
command notifier. The child gets an argv list (no shell), an explicit minimal
environment, no stdin and its own session, so a timeout or an oversized
output kills its whole process group, grandchildren included. Its stderr is
kept bounded and passed through :func:`redact` before it reaches any error,
because a failing KMS client may print the very key material it fetched.

A ``cancellable`` run (the command source) registers its process group with
:mod:`keysetd.cancel`: SIGTERM to keysetd kills the group at once instead of
waiting out the timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from keysetd import cancel

__all__ = [
    "BASE_ENV_PATH",
    "STDERR_TAIL",
    "ProcCancelled",
    "ProcExit",
    "ProcFailure",
    "ProcOutputTooLarge",
    "ProcSpawnError",
    "ProcTimeout",
    "check_argv",
    "check_env",
    "check_program",
    "minimal_env",
    "redact",
    "run",
]

BASE_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Characters of stderr kept for error messages (the end, where the error usually is).
STDERR_TAIL = 2048
_CHUNK = 65536
_REAP_TIMEOUT = 5.0
_CANCELLED = "cancelled: keysetd is stopping (process group killed)"

_PEM = re.compile(r"-----BEGIN [^-\n]{0,64}-----.*?(?:-----END [^-\n]{0,64}-----|\Z)", re.DOTALL)
# base64, base64url and hex share this alphabet; 20+ of them in a row is treated as a secret.
_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
REDACTED = "[redacted]"
_ALWAYS = 40


def _redact_token(match: re.Match[str]) -> str:
    """A run of 40+ characters always; 20 to 39 only if it has a digit or a symbol.

    Error names such as ``AccessDeniedException`` stay readable, while encoded key
    material (digits and ``+/_-=`` in almost every 20-character window) does not.
    """
    token = match.group(0)
    if len(token) >= _ALWAYS or any(c.isdigit() or c in "+/_-=" for c in token):
        return REDACTED
    return token


def redact(text: str) -> str:
    """Replace PEM blocks and long base64/base64url/hex runs with ``[redacted]``.

    Deliberately blunt: a long path may be hidden too, but key material never
    survives into a log line or an error message.
    """
    return _TOKEN.sub(_redact_token, _PEM.sub(REDACTED, text))


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: a fixed PATH, a UTF-8 locale, HOME if set, then ``extra``.

    Nothing else of keysetd's environment (tokens, ``RGS_JWT_KEYSET``) is inherited.
    HOME is passed because most cloud CLIs look up their config under it.
    """
    env = {"PATH": BASE_ENV_PATH, "LANG": "C.UTF-8"}
    home = os.environ.get("HOME")
    if home:
        env["HOME"] = home
    env.update(extra or {})
    return env


class ProcFailure(Exception):
    """The program did not run to a clean exit; ``reason`` is safe to show (redacted)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ProcSpawnError(ProcFailure):
    """The program could not be started (missing, not executable)."""


class ProcTimeout(ProcFailure):
    """The program outlived its timeout; its process group was killed."""


class ProcCancelled(ProcFailure):
    """keysetd is stopping (SIGTERM); the process group was killed."""


class ProcOutputTooLarge(ProcFailure):
    """The program wrote more than the allowed stdout; its process group was killed."""


class ProcExit(ProcFailure):
    """The program exited non-zero or died of a signal."""

    def __init__(self, returncode: int, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        if returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        detail = f": {stderr_tail}" if stderr_tail else " (no stderr)"
        super().__init__(how + detail)


class _Tail:
    """Keeps the last bytes written, and whether anything before them was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > self.limit:
            del self.buf[: len(self.buf) - self.limit]
            self.truncated = True

    def text(self) -> str:
        """The kept stderr, decoded and redacted, at most about ``STDERR_TAIL`` characters."""
        text = self.buf.decode("utf-8", errors="replace")
        if self.truncated:
            # The first line may start inside a secret: drop it rather than show a fragment.
            cut = text.find("\n")
            text = "[...]" + (text[cut:] if cut >= 0 else "")
        text = redact(text).strip()
        if len(text) > STDERR_TAIL:
            text = "[...]" + text[-STDERR_TAIL:]
        return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group, then reap the child.

    Called only while the child is not yet reaped, so its pid (= the group id)
    cannot have been reused by an unrelated process.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=_REAP_TIMEOUT)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    max_stdout: int | None,
    cancellable: bool = False,
) -> bytes:
    """Run ``argv`` and return its stdout, or raise a :class:`ProcFailure`.

    ``max_stdout`` bounds the captured stdout (more is an error); ``None``
    discards stdout. The timeout covers the whole run, reading included: when
    it expires, or stdout overflows, the process group gets SIGKILL. A program
    that exits but leaves a background child holding its pipes open runs into
    the timeout too. With ``cancellable``, :func:`keysetd.cancel.cancel_all` kills
    the group too, and the run raises :class:`ProcCancelled`.
    """
    if not argv:
        raise ProcSpawnError("empty argv")
    if cancellable and cancel.stopping():
        raise ProcCancelled(_CANCELLED)
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if max_stdout is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise ProcSpawnError(f"cannot start: {exc.strerror or exc}") from exc
    killed: list[bool] = []

    def kill() -> None:
        """From the SIGTERM handler: one syscall, no lock (the group id stays the child's
        until its last member is gone: Linux reuses no pid that names a live group)."""
        killed.append(True)
        os.killpg(proc.pid, signal.SIGKILL)

    with contextlib.ExitStack() as stack:
        if cancellable:
            stack.enter_context(cancel.cancellable(kill))
        stdout, returncode, stderr = _collect(proc, deadline, timeout, max_stdout)
    if killed:
        raise ProcCancelled(_CANCELLED)
    if returncode != 0:
        raise ProcExit(returncode, stderr.text())
    return stdout


def _collect(
    proc: subprocess.Popen[bytes], deadline: float, timeout: float, max_stdout: int | None
) -> tuple[bytes, int, _Tail]:
    """Read the child's pipes until both close, then reap it: (stdout, status, stderr)."""
    stdout = bytearray()
    stderr = _Tail(STDERR_TAIL * 2)
    try:
        with selectors.DefaultSelector() as sel:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    os.set_blocking(pipe.fileno(), False)
                    sel.register(pipe.fileno(), selectors.EVENT_READ)
            out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_group(proc)
                    raise ProcTimeout(
                        f"timed out after {_fmt_seconds(timeout)} (process group killed)"
                    )
                for key, _ in sel.select(timeout=remaining):
                    fd = key.fd
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                    elif fd == out_fd:
                        stdout += chunk
                        if max_stdout is not None and len(stdout) > max_stdout:
                            _kill_group(proc)
                            raise ProcOutputTooLarge(
                                f"output exceeds {max_stdout} bytes (process group killed)"
                            )
                    else:
                        stderr.add(chunk)
        try:
            returncode = proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ProcTimeout(
                f"timed out after {_fmt_seconds(timeout)} (process group killed)"
            ) from None
    except BaseException:
        # Never leave a child behind, whatever went wrong (KeyboardInterrupt included).
        if proc.returncode is None:
            _kill_group(proc)
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return bytes(stdout), returncode, stderr


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_argv(argv: list[str]) -> list[str]:
    """Config validator: a non-empty argv whose program name is non-empty, no NUL anywhere."""
    if not argv or not argv[0]:
        raise ValueError("argv must name a program (a non-empty list, argv[0] not empty)")
    if any("\0" in arg for arg in argv):
        raise ValueError("argv must not contain NUL characters")
    return argv


def check_program(program: str) -> str:
    """Config validator: a program name or path, not empty, no NUL."""
    if not program or "\0" in program:
        raise ValueError("must name a program (not empty, no NUL characters)")
    return program


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Config validator: environment names are identifiers; values hold no NUL."""
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            # Not quoted: a name this malformed may be a pasted "NAME=value".
            raise ValueError(
                "environment variable names are letters, digits and _ (no digit first)"
            )
        if "\0" in value:
            raise ValueError(f"environment variable {name} must not contain NUL characters")
    return env
