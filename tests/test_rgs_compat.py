"""open-rgs compatibility, through real ``keysetd`` processes given only ``RGS_*`` variables.

Every process here starts from an empty environment plus PATH and HOME (so the
no-config daemon's state lands under ``$HOME/.local/state/keysetd``): no config
file, no ``KEYSETD_*`` variable. Documents in ``tests/vectors/rgs`` are the
shapes open-rgs reads and writes. Secrets must never reach a log, status,
evidence or error: every test checks each output it got for every secret.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from keysetd.formats.rgs import decode_rgs, parse_keyset_spec
from keysetd.sources.command import shell_line_problems
from tests.conftest import KEYSETD, wait_for
from tests.keys import write_atomically

VECTORS = Path(__file__).parent / "vectors" / "rgs"
OPEN_RGS_KEYSET = json.loads((VECTORS / "jwt-keyset.json").read_text())
K1 = OPEN_RGS_KEYSET["keys"]["k1"]
K2 = OPEN_RGS_KEYSET["keys"]["k2"]
#: The state files that hold the keyset itself: the last-known-good and the signer keys.
KEYSET_STORES = frozenset({"last-known-good.json", "signer-keyset.json"})
K3 = "third-signing-secret-9e1c3a5f7b9d0e2a4c6f8b1d3e5a7c9f"


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, the value taken whole (as systemd's EnvironmentFile= does)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


ENV_VECTOR = env_file(VECTORS / "keyset.env")
ENV_SECRETS = (
    "env-secret-old-5d7f9b1c3e5a7c9e1b3d5f7a9c1e3b5d",
    "env-secret-new-8b0d2f4a6c8e0a2c4e6b8d0f2a4c6e8a:with-colon",
)
ALL_SECRETS = (K1, K2, K3, *ENV_SECRETS)


def secret_forms(secret: str) -> list[str]:
    """The secret as text, as a JWK's ``k`` (base64url) and as standard base64."""
    raw = secret.encode()
    return [
        secret,
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode(),
    ]


def assert_no_secret(text: str, secrets: Iterable[str] = ALL_SECRETS) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, f"a secret ({secret[:8]}...) leaked"


def keyset_doc(active: str, **keys: str) -> bytes:
    return json.dumps({"active_kid": active, "keys": keys}, indent=2).encode()


class Rgs:
    """One open-rgs style deployment: a HOME, a source file, an output, an evidence dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        # A directory name with a space and a quote: the shell line must quote it.
        self.source = root / "kms client's dir" / "jwt-keyset.json"
        self.source.parent.mkdir()
        self.out = root / "run" / "jwt-keyset.json"
        self.out.parent.mkdir()
        self.work = root / "evidence"
        self.log_path = root / "keysetd.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def keysetd_home(self) -> Path:
        return self.home / ".local" / "state" / "keysetd"

    @property
    def state(self) -> Path:
        return self.keysetd_home / "state"

    def write_source(self, data: bytes) -> None:
        write_atomically(self.source, data)

    def environ(self, **rgs: str) -> dict[str, str]:
        """PATH and HOME, then only the given ``RGS_*`` variables."""
        assert all(name.startswith("RGS_") for name in rgs)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), **rgs}

    def keysetd(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*KEYSETD, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=self.root,
        )
        assert_no_secret(done.stdout + done.stderr)
        return done

    def start(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*KEYSETD, "run"], stdout=log, stderr=log, env=env, cwd=self.root
            )
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.out.read_bytes())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def assert_state_holds_no_secret(self) -> None:
        """Everything under state_dir but the two keyset stores (0600: they are the keyset)."""
        for path in self.state.rglob("*"):
            if path.is_file() and path.name not in KEYSET_STORES:
                assert_no_secret(path.read_text(errors="replace"))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def rgs(tmp_path: Path) -> Any:
    deployment = Rgs(tmp_path)
    yield deployment
    deployment.stop_all()


def shell_line(rgs: Rgs, *, absolute: bool = False) -> str:
    """A real shell line: drops the source's first line (a comment that is no JSON) with sed,
    strips CRs with tr, and runs only when the child did not inherit keysetd's environment."""
    sed, tr = (shutil.which(name) or name for name in ("sed", "tr")) if absolute else ("sed", "tr")
    return f'[ -z "${{RGS_JWT_KEYSET_COMMAND:-}}" ] && {sed} 1d "{rgs.source}" | {tr} -d \'\\r\''


def commented(doc: bytes) -> bytes:
    """A source the shell line must clean: a first line that is no JSON, CRLF endings."""
    return b"# written by the kms client\r\n" + doc.replace(b"\n", b"\r\n")


# -- RGS_JWT_KEYSET: kid:secret,kid:secret ------------------------------------------------


def test_kid_secret_form_runs_without_a_config_file(rgs: Rgs) -> None:
    env = rgs.environ(**ENV_VECTOR, RGS_JWT_KEYSET_FILE=str(rgs.out))
    done = rgs.keysetd("once", env=env)
    assert done.returncode == 0, done.stderr
    # Trimmed as open-rgs trims; a secret keeps everything after its kid's first ":".
    assert rgs.output() == {
        "active_kid": "new",
        "keys": {"new": ENV_SECRETS[1], "old": ENV_SECRETS[0]},
    }
    assert rgs.out.stat().st_mode & 0o777 == 0o600
    status = rgs.keysetd("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["active_kid"] == "new" and sorted(doc["published_kids"]) == ["new", "old"]
    rgs.assert_state_holds_no_secret()


@pytest.mark.parametrize(
    ("value", "active", "outcome"),
    [
        # Without RGS_JWT_ACTIVE_KID, open-rgs signs with the kid "default".
        (f"other:{K1},default:{K2}", None, "default"),
        (f"a:{K1},b:{K2}", None, "RGS_JWT_ACTIVE_KID is not set and RGS_JWT_KEYSET has no kid"),
        (f"a:{K1}, a:{K2}", "a", "kid 'a' appears more than once"),
        (f"a:{K1},{K2}", "a", "entry 2 is not kid:secret (no ':')"),
        (f"a:{K1},b: ", "a", "entry 2 (kid 'b') has an empty secret"),
        (f"a:{K1},b:{K2}", "c", "active_kid"),
    ],
)
def test_kid_secret_form_active_kid_and_errors(
    rgs: Rgs, value: str, active: str | None, outcome: str
) -> None:
    extra = {"RGS_JWT_ACTIVE_KID": active} if active else {}
    env = rgs.environ(RGS_JWT_KEYSET=value, RGS_JWT_KEYSET_FILE=str(rgs.out), **extra)
    done = rgs.keysetd("once", env=env)  # its output is checked for secrets
    if outcome == "default":
        assert done.returncode == 0, done.stderr
        assert rgs.output() == {"active_kid": "default", "keys": {"default": K2, "other": K1}}
        return
    assert done.returncode == 1
    assert outcome in done.stderr
    assert not rgs.out.exists()
    rgs.assert_state_holds_no_secret()


# -- RGS_JWT_KEYSET_COMMAND: a shell line -------------------------------------------------


def test_command_is_a_shell_line_with_pipes_and_quotes(rgs: Rgs) -> None:
    rgs.write_source(commented(keyset_doc("k2", k1=K1, k2=K2)))
    env = rgs.environ(
        RGS_JWT_KEYSET_COMMAND=shell_line(rgs),
        RGS_JWT_KEYSET_FILE=str(rgs.out),
        RGS_JWT_KEYSET=f"inherited:{K3}",  # the command wins, as in open-rgs; never inherited
    )
    done = rgs.keysetd("once", env=env)
    assert done.returncode == 0, done.stderr
    assert rgs.output() == {"active_kid": "k2", "keys": {"k2": K2, "k1": K1}}
    rgs.assert_state_holds_no_secret()


def test_a_failing_command_shows_no_secret(rgs: Rgs) -> None:
    """The line prints the keyset on stderr and fails: the error is the redacted tail."""
    rgs.write_source(keyset_doc("k2", k1=K1, k2=K2))
    env = rgs.environ(
        RGS_JWT_KEYSET_COMMAND=f'cat "{rgs.source}" >&2; exit 3',
        RGS_JWT_KEYSET_FILE=str(rgs.out),
    )
    done = rgs.keysetd("once", env=env)
    assert done.returncode == 1
    assert "exit" in done.stderr and "3" in done.stderr
    assert not rgs.out.exists()
    rgs.assert_state_holds_no_secret()


def state_key(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def test_strict_mode_wants_every_program_of_the_line_absolute(rgs: Rgs) -> None:
    rgs.write_source(commented(keyset_doc("k2", k1=K1, k2=K2)))
    strict = {"RGS_STRICT_PRODUCTION_MODE": "true", "RGS_JWT_KEYSET_FILE": str(rgs.out)}
    # Strict mode wants the state that keeps the secrets encrypted (README: secrets at rest).
    sealed = {
        "KEYSETD_STATE__ENCRYPTION": "key_file",
        "KEYSETD_STATE__KEY_FILE": str(state_key(rgs.root / "state.key")),
    }

    relative = rgs.environ(RGS_JWT_KEYSET_COMMAND=shell_line(rgs), **strict)
    done = rgs.keysetd("check-config", env=relative)
    assert done.returncode == 2
    assert "'sed' in the shell line is not an absolute path" in done.stderr
    assert "'tr' in the shell line is not an absolute path" in done.stderr
    assert rgs.keysetd("once", env=relative).returncode == 2
    assert not rgs.out.exists()

    hidden = rgs.environ(RGS_JWT_KEYSET_COMMAND=f'/bin/cat "$(/bin/echo {rgs.source})"', **strict)
    done = rgs.keysetd("check-config", env=hidden)
    assert done.returncode == 2 and "command substitution" in done.stderr

    absolute = rgs.environ(RGS_JWT_KEYSET_COMMAND=shell_line(rgs, absolute=True), **strict)
    done = rgs.keysetd("check-config", env=absolute)
    assert done.returncode == 2 and "state.encryption: not set" in done.stderr
    absolute.update(sealed)
    done = rgs.keysetd("check-config", env=absolute)
    assert done.returncode == 0, done.stderr
    done = rgs.keysetd("once", env=absolute)
    assert done.returncode == 0, done.stderr
    assert rgs.output() == {"active_kid": "k2", "keys": {"k2": K2, "k1": K1}}

    # Strict mode refuses weak secrets too (long enough for HS256, but repetitive).
    weak = "a" * 40
    rgs.write_source(commented(keyset_doc("k2", k1=K1, k2=K2, weak=weak)))
    done = rgs.keysetd("once", env=absolute)
    assert done.returncode == 1 and "weak-secret" in done.stderr
    assert_no_secret(done.stderr, [weak])
    assert rgs.output() == {"active_kid": "k2", "keys": {"k2": K2, "k1": K1}}  # kept as it was


# -- RGS_STRICT_EXTERNAL_JWT_KEYSET -------------------------------------------------------


def test_strict_external_keyset_refuses_the_inline_keyset(rgs: Rgs) -> None:
    rgs.write_source(keyset_doc("k2", k1=K1, k2=K2))
    inline = {**ENV_VECTOR, "RGS_JWT_KEYSET_FILE": str(rgs.out)}

    done = rgs.keysetd("once", env=rgs.environ(**inline, RGS_STRICT_EXTERNAL_JWT_KEYSET="true"))
    assert done.returncode == 2
    assert "$RGS_STRICT_EXTERNAL_JWT_KEYSET=true requires an external keyset" in done.stderr
    # Its default is RGS_STRICT_PRODUCTION_MODE, as in open-rgs.
    done = rgs.keysetd("check-config", env=rgs.environ(**inline, RGS_STRICT_PRODUCTION_MODE="1"))
    assert done.returncode == 2
    assert "$RGS_STRICT_PRODUCTION_MODE=true requires an external keyset" in done.stderr
    done = rgs.keysetd("once", env=rgs.environ(**inline, RGS_STRICT_EXTERNAL_JWT_KEYSET="maybe"))
    assert (
        done.returncode == 2 and "$RGS_STRICT_EXTERNAL_JWT_KEYSET is not a boolean" in done.stderr
    )
    assert not rgs.out.exists()

    done = rgs.keysetd("once", env=rgs.environ(**inline, RGS_STRICT_EXTERNAL_JWT_KEYSET="false"))
    assert done.returncode == 0, done.stderr
    external = rgs.environ(
        RGS_JWT_KEYSET_COMMAND=f'cat "{rgs.source}"',
        RGS_JWT_KEYSET_FILE=str(rgs.out),
        RGS_STRICT_EXTERNAL_JWT_KEYSET="true",
    )
    done = rgs.keysetd("once", env=external)
    assert done.returncode == 0, done.stderr
    assert rgs.output() == {"active_kid": "k2", "keys": {"k2": K2, "k1": K1}}


# -- a daemon with RGS_* variables only ---------------------------------------------------


def test_no_config_daemon_publishes_rotates_and_stops_on_sigterm(rgs: Rgs) -> None:
    rgs.write_source(commented(keyset_doc("k2", k1=K1, k2=K2)))
    env = rgs.environ(
        RGS_JWT_KEYSET_COMMAND=shell_line(rgs),
        RGS_JWT_KEYSET_FILE=str(rgs.out),
        RGS_JWT_KEYSET_REFRESH_INTERVAL="200ms",
    )
    proc = rgs.start(env)
    wait_for(lambda: (rgs.output() or {}).get("active_kid") == "k2", 20, "the first publish")
    rgs.write_source(commented(keyset_doc("k3", k1=K1, k2=K2, k3=K3)))
    wait_for(lambda: (rgs.output() or {}).get("active_kid") == "k3", 20, "the rotation to k3")
    assert rgs.output() == {"active_kid": "k3", "keys": {"k3": K3, "k1": K1, "k2": K2}}

    status = rgs.keysetd("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["active_kid"] == "k3"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = rgs.log()
    assert '"event":"published"' in log.replace(" ", "")
    assert "Traceback" not in log
    assert_no_secret(log)
    assert (rgs.state / "status.json").exists()
    rgs.assert_state_holds_no_secret()


def test_no_config_file_source_writes_its_rgs_output_beside_the_state(rgs: Rgs) -> None:
    shutil.copy(VECTORS / "jwt-keyset.json", rgs.source)
    env = rgs.environ(RGS_JWT_KEYSET_FILE=str(rgs.source))
    done = rgs.keysetd("once", env=env)
    assert done.returncode == 0, done.stderr
    written = json.loads((rgs.keysetd_home / "jwt-keyset.json").read_bytes())
    assert written == OPEN_RGS_KEYSET
    assert rgs.state.is_dir()


def test_without_a_config_or_rgs_source_it_says_what_to_set(rgs: Rgs) -> None:
    done = rgs.keysetd("once", env=rgs.environ(RGS_JWT_KEYSET_REFRESH_INTERVAL="1m"))
    assert done.returncode == 2
    assert "no config given" in done.stderr and "RGS_JWT_KEYSET_COMMAND" in done.stderr


# -- keysetd evidence with RGS_KEYSET_* ---------------------------------------------------


def summary(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "summary.json").read_bytes())  # type: ignore[no-any-return]


def assert_evidence_holds_no_secret(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_text())


def test_evidence_honours_the_rgs_variables(rgs: Rgs) -> None:
    rgs.write_source(keyset_doc("k2", k1=K1, k2=K2))
    base = {
        "RGS_JWT_KEYSET_COMMAND": f'cat "{rgs.source}"',
        "RGS_KEYSET_WORKDIR": str(rgs.work),
    }
    before = time.time()
    done = rgs.keysetd("evidence", env=rgs.environ(**base, RGS_KEYSET_EVENT_ID="rotation-a"))
    assert done.returncode == 0, done.stderr
    first = rgs.work / "rotation-a"
    assert sorted(p.name for p in first.iterdir()) == [
        "fingerprint.sha256",
        "keyset.json",
        "summary.json",
    ]
    doc = summary(first)
    assert doc["event_id"] == "rotation-a"
    assert doc["active_kid"] == "k2" and doc["kids"] == ["k1", "k2"]
    assert doc["keys_count"] == doc["key_count"] == 2
    assert doc["source_mode"] == "command" and doc["fetched_live"] is True
    assert doc["rotation_state"] == "initial" and doc["previous_active_kid"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["captured_at_utc"])
    captured = calendar.timegm(time.strptime(doc["captured_at_utc"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 2 <= captured <= time.time() + 2
    keys = json.loads((first / "keyset.json").read_bytes())["keys"]
    assert {k["kid"]: k["k_sha256"] for k in keys} == {
        "k1": hashlib.sha256(K1.encode()).hexdigest(),
        "k2": hashlib.sha256(K2.encode()).hexdigest(),
    }
    check = subprocess.run(["sha256sum", "-c", "fingerprint.sha256"], cwd=first, check=False)
    assert check.returncode == 0

    # open-rgs's own summary (active k1) as the previous event: a rotation.
    previous = rgs.environ(
        **base,
        RGS_KEYSET_EVENT_ID="rotation-b",
        RGS_KEYSET_PREVIOUS_SUMMARY_FILE=str(VECTORS / "summary.json"),
    )
    assert rgs.keysetd("evidence", env=previous).returncode == 0
    doc = summary(rgs.work / "rotation-b")
    assert doc["rotation_state"] == "rotated" and doc["active_kid_changed"] is True
    assert doc["previous_active_kid"] == "k1"

    # keysetd's own summary of the first event: nothing changed.
    same = rgs.environ(
        **base,
        RGS_KEYSET_EVENT_ID="rotation-c",
        RGS_KEYSET_PREVIOUS_SUMMARY_FILE=str(first / "summary.json"),
    )
    assert rgs.keysetd("evidence", env=same).returncode == 0
    assert summary(rgs.work / "rotation-c")["rotation_state"] == "unchanged"

    # A variable naming no file is a first event, as in open-rgs's script; the flag is stricter.
    missing = str(rgs.root / "no-such-summary.json")
    env = rgs.environ(
        **base, RGS_KEYSET_EVENT_ID="rotation-d", RGS_KEYSET_PREVIOUS_SUMMARY_FILE=missing
    )
    done = rgs.keysetd("evidence", env=env)
    assert done.returncode == 0 and "does not exist" in done.stderr
    assert summary(rgs.work / "rotation-d")["rotation_state"] == "initial"
    done = rgs.keysetd("evidence", "--previous-summary", missing, env=env)
    assert done.returncode == 1 and "no such file" in done.stderr

    # Flags win over the variables; with no event id at all, open-rgs's keyset-<UTC time>.
    other = rgs.root / "other"
    done = rgs.keysetd(
        "evidence", "--event-id", "flag-wins", "--workdir", str(other), env=rgs.environ(**base)
    )
    assert done.returncode == 0, done.stderr
    assert (other / "flag-wins" / "summary.json").exists()
    assert rgs.keysetd("evidence", env=rgs.environ(**base)).returncode == 0
    [named] = [p.name for p in rgs.work.iterdir() if p.name.startswith("keyset-")]
    assert re.fullmatch(r"keyset-\d{8}T\d{6}Z", named)
    done = rgs.keysetd("evidence", env=rgs.environ(**base, RGS_KEYSET_EVENT_ID="../escape"))
    assert done.returncode == 2 and "event id" in done.stderr

    assert not rgs.state.exists()  # evidence only reads
    assert_evidence_holds_no_secret(rgs.work)
    assert_evidence_holds_no_secret(other)


def test_evidence_of_the_live_fetch_then_of_the_last_known_good(rgs: Rgs) -> None:
    rgs.write_source(keyset_doc("k2", k1=K1, k2=K2))
    env = rgs.environ(
        RGS_JWT_KEYSET_COMMAND=f'cat "{rgs.source}"',
        RGS_JWT_KEYSET_FILE=str(rgs.out),
        RGS_KEYSET_WORKDIR=str(rgs.work),
    )
    assert rgs.keysetd("once", env=env).returncode == 0  # publishes k2: the last-known-good

    # The source moved on: the evidence is of what it gives now, not of the last publish.
    rgs.write_source(keyset_doc("k3", k1=K1, k2=K2, k3=K3))
    done = rgs.keysetd("evidence", env={**env, "RGS_KEYSET_EVENT_ID": "live"})
    assert done.returncode == 0, done.stderr
    live = summary(rgs.work / "live")
    assert live["fetched_live"] is True and live["source_mode"] == "command"
    assert live["active_kid"] == "k3" and live["kids"] == ["k1", "k2", "k3"]

    # The source fails: evidence of the last-known-good, and the summary says so.
    rgs.source.unlink()
    done = rgs.keysetd("evidence", env={**env, "RGS_KEYSET_EVENT_ID": "fallback"})
    assert done.returncode == 0, done.stderr
    assert "evidence of the last-known-good instead" in done.stderr
    fallback = summary(rgs.work / "fallback")
    assert fallback["fetched_live"] is False and fallback["source_mode"] == "last-known-good"
    assert fallback["active_kid"] == "k2" and fallback["kids"] == ["k1", "k2"]
    assert fallback["fingerprint"] != live["fingerprint"]
    assert_evidence_holds_no_secret(rgs.work)
    rgs.assert_state_holds_no_secret()


# -- the rules, without a process -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("/usr/bin/kms-client get-jwt-keyset --format json", []),
        ("kms-client get-jwt-keyset", ["kms-client"]),
        ("A=1 /bin/x 'a|b' | /bin/y && z; (w) >/tmp/out 2>&1", ["z", "w"]),
        ('[ -n "$HOME" ] && /bin/cat "/a b/c" | /usr/bin/tr -d "\\r"', []),
        ("/bin/a\nb", ["b"]),
        ("exec kms", ["exec"]),  # exec runs a program: no builtin exemption
        ("/bin/cat <(kms)", ["kms"]),  # bash process substitution
    ],
)
def test_shell_line_programs_in_strict_mode(line: str, refused: list[str]) -> None:
    problems = shell_line_problems(["/bin/sh", "-c", line])
    assert [p.split("'")[1] for p in problems] == refused
    assert shell_line_problems(["/bin/bash", "-lc", line]) == problems


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("/bin/cat $(kms)", "command substitution"),
        ("/bin/cat `kms`", "command substitution"),
        ("/bin/cat 'unclosed", "unclosed quote"),
        ("   ", "runs no program"),
    ],
)
def test_shell_lines_strict_mode_cannot_check(line: str, problem: str) -> None:
    [found] = shell_line_problems(["/bin/sh", "-c", line])
    assert problem in found


def test_argv_that_is_no_shell_line_is_left_to_the_argv_rule() -> None:
    assert shell_line_problems(["/usr/bin/kms", "-c", "x y"]) == []
    assert shell_line_problems(["/bin/sh", "/opt/script.sh"]) == []


def test_kid_secret_spec_and_the_default_kid() -> None:
    assert parse_keyset_spec(" a : x:y , ,b:z,") == {"a": "x:y", "b": "z"}
    with pytest.raises(ValueError, match="no kid:secret entry"):
        parse_keyset_spec(" , ")
    with pytest.raises(ValueError) as caught:
        parse_keyset_spec(f"a:{K1},:{K2}")
    assert str(caught.value) == "entry 2 has an empty kid"
    # The rgs format, as open-rgs reads it: no active_kid means the kid "default".
    assert decode_rgs({"keys": {"default": K1, "b": K2}}).active_kid == "default"
    assert decode_rgs({"keys": {"a": K1, "b": K2}}).active_kid is None
    assert decode_rgs({"active_kid": "b", "keys": {"default": K1, "b": K2}}).active_kid == "b"
