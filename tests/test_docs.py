"""The README's config and the examples load, and the quickstart publishes: docs never rot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keysetd.config import load_config
from tests.conftest import KEYSETD

ROOT = Path(__file__).resolve().parent.parent


def toml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(toml_blocks(ROOT / "README.md"))))
def test_readme_config_loads(index: int, tmp_path: Path) -> None:
    path = tmp_path / "keysetd.toml"
    path.write_text(toml_blocks(ROOT / "README.md")[index])
    config = load_config(path)
    assert config.build_outputs()


@pytest.mark.parametrize("example", sorted(ROOT.glob("examples/**/*.toml")), ids=str)
def test_example_configs_load(example: Path) -> None:
    assert load_config(example).build_outputs()


def test_readme_commands_exist() -> None:
    text = (ROOT / "README.md").read_text()
    done = subprocess.run(
        [*KEYSETD, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    block = text.split("## Commands", 1)[1].split("```")[1]
    for command in re.findall(r"^keysetd ([a-z-]+)", block, flags=re.M):
        assert command in done.stdout, command
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in text and "make test" in text
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_quickstart_publishes(tmp_path: Path) -> None:
    """What ``make run`` does, as one cycle, from a copy of the repository layout."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "demo" / "source").mkdir(parents=True)
    (tmp_path / "demo" / "signer").mkdir()
    shutil.copy(ROOT / "examples/quickstart/keyset.json", tmp_path / "demo/source/keyset.json")
    done = subprocess.run(
        [*KEYSETD, "once", "-c", "examples/quickstart/keysetd.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    jwks = json.loads((tmp_path / "demo/jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == ["demo-2026-11-a", "demo-ed25519-a"]
    assert (tmp_path / "demo/pem/demo-2026-11-a.pem").exists()
    assert json.loads((tmp_path / "demo/signer/keyset.json").read_text())["active_kid"]


def test_readme_tables_list_every_plugin() -> None:
    """Each source, output and notifier ``keysetd plugins`` lists has a row in its README table."""
    text = (ROOT / "README.md").read_text()
    done = subprocess.run(
        [*KEYSETD, "plugins"], capture_output=True, text=True, timeout=30, check=True
    )
    tables = {
        "sources": "### Sources",
        "outputs": "### Outputs",
        "notifiers": "### Notifiers",
        "key_providers": "### Key providers",
    }
    listed = [line.split()[:2] for line in done.stdout.splitlines() if line.strip()]
    assert {"nats", "systemd"} <= {name for kind, name in listed if kind == "notifiers"}
    for kind, name in listed:
        section = text.split(tables[kind], 1)[1].split("\n#", 1)[0]
        rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
        assert name in rows, f"README {tables[kind]} has no row for {name}"
