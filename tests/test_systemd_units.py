"""The systemd units: hardened to "OK" or better, Type=notify, and an ExecStart the CLI accepts."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KEYSETD

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SERVICE = SYSTEMD / "keysetd.service"
TEMPLATE = SYSTEMD / "keysetd@.service"
#: The template, instantiated: systemd-analyze loads keysetd@.service from the same directory.
INSTANCE = SYSTEMD / "keysetd@issuer.service"
MAX_EXPOSURE = 2.0

Unit = dict[str, dict[str, list[str]]]

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing (Debian package systemd; `make test` installs it)",
)


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value in order (systemd keys repeat; an empty value resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: keep directives on one line: {line}"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a directive: {line}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def one(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}= must be set exactly once, found {values}"
    return values[0]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        env=env,
        check=False,
    )


@needs_analyze
@pytest.mark.parametrize("unit", [SERVICE, INSTANCE], ids=lambda p: p.name)
def test_exposure_is_ok(unit: Path) -> None:
    done = analyze("security", "--offline=true", "--no-pager", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", done.stdout)
    assert found, f"no overall exposure in:\n{done.stdout}{done.stderr}"
    exposure, verdict = float(found.group(1)), found.group(2)
    assert exposure <= MAX_EXPOSURE, f"{unit.name}: exposure {exposure} {verdict}\n{done.stdout}"


@needs_analyze
@pytest.mark.parametrize("unit", [SERVICE, INSTANCE], ids=lambda p: p.name)
def test_verify_is_clean(unit: Path) -> None:
    """Every directive parses; only keysetd itself may be missing (it is not installed here)."""
    done = analyze("verify", "--man=no", str(unit))
    missing = re.compile(r"Command /usr/local/bin/keysetd is not executable")
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not missing.search(line)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "instance"), [(SERVICE, "keysetd"), (TEMPLATE, "%i")], ids=["service", "template"]
)
def test_notify_reload_and_directories(path: Path, instance: str) -> None:
    unit = parse_unit(path)
    assert one(unit, "Type") == "notify"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "WatchdogSec") == "60"
    assert one(unit, "Restart") == "on-failure"
    directory = "keysetd" if instance == "keysetd" else f"keysetd/{instance}"
    assert one(unit, "StateDirectory") == directory
    assert one(unit, "RuntimeDirectory") == directory
    assert one(unit, "RuntimeDirectoryPreserve") == "yes"
    assert one(unit, "User") == "keysetd"
    assert unit["Service"].get("CapabilityBoundingSet") == []
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "UMask") == "0077"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


@pytest.mark.parametrize(
    ("path", "config"),
    [(SERVICE, "/etc/keysetd/keysetd.toml"), (TEMPLATE, "/etc/keysetd/%i.toml")],
    ids=["service", "template"],
)
def test_exec_start_is_keysetd_run(path: Path, config: str) -> None:
    argv = shlex.split(one(parse_unit(path), "ExecStart"))
    assert argv == ["/usr/local/bin/keysetd", "run", "--config", config]


@pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_cli_accepts_exec_start(path: Path, tmp_path: Path) -> None:
    """The real CLI parses the arguments: it gets as far as reading the (missing) config."""
    argv = shlex.split(one(parse_unit(path), "ExecStart"))
    config = tmp_path / "absent.toml"
    args = [config.as_posix() if arg.startswith("/etc/keysetd/") else arg for arg in argv[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSETD_")}
    done = subprocess.run(
        [*KEYSETD, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "usage:" not in done.stderr
    assert str(config) in done.stderr


def test_template_matches_service() -> None:
    """The template is the service with the instance name in its paths: hardening cannot drift."""
    service = parse_unit(SERVICE)
    template = parse_unit(TEMPLATE)
    for section in ("Service", "Install"):
        instantiated = {
            key: [
                v.replace("/etc/keysetd/%i.toml", "/etc/keysetd/keysetd.toml").replace(
                    "keysetd/%i", "keysetd"
                )
                for v in values
            ]
            for key, values in template[section].items()
        }
        assert instantiated == service[section]
    assert "%i" in one(template, "Description", "Unit")
