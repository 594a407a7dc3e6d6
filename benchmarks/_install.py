"""keysetd as a user installs it, for the benchmarks that start the daemon.

The development ``.venv`` holds keysetd and its plugins as editable installs: each
start of its interpreter runs four editable finders from ``.pth`` files (~14 ms
before keysetd's first line), and an editable keysetd has no bytecode under
``PYTHONDONTWRITEBYTECODE=1`` (~100 ms of compiling per start). Neither is what a
user runs. So the benchmarks build wheels of keysetd and its plugins and install
them with pip (which writes their bytecode) into a venv of their own, made once per
benchmark process in a temp dir. The daemon's dependencies are the ``.venv``'s,
reached through one ``.pth`` line (a path, no finder), so both run the same versions.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["keysetd_command"]

REPO = Path(__file__).resolve().parent.parent
PROJECTS = (
    REPO,
    REPO / "plugins" / "keysetd-vault",
    REPO / "plugins" / "keysetd-aws-kms",
    REPO / "plugins" / "keysetd-nats-callout",
)


@cache
def keysetd_command() -> tuple[str, ...]:
    """The argv prefix that starts the installed keysetd: its console script, as users run it.

    Not ``python -m keysetd``: that puts the working directory first on ``sys.path``,
    and from the repository root it would import the source tree instead.
    """
    root = Path(tempfile.mkdtemp(prefix="keysetd-bench-install-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    venv, wheels = root / "venv", root / "wheels"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "-w", str(wheels), *map(str, PROJECTS))
    _run(*pip, "--python", str(python), "install", "--no-deps", "--no-index", *_wheels(wheels))
    site = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(site, "keysetd-bench-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return (str(venv / "bin" / "keysetd"),)


def _wheels(directory: Path) -> list[str]:
    found = sorted(str(p) for p in directory.glob("*.whl"))
    if len(found) != len(PROJECTS):
        raise RuntimeError(f"expected {len(PROJECTS)} wheels in {directory}, found {found}")
    return found


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed:\n{done.stdout}{done.stderr}")
