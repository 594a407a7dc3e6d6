"""Entry-point plugins: found without importing, validated when loaded, no name twice."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysetd import registry as plugin
from keysetd.errors import PluginError
from keysetd.sources.file import FileSource


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests write dist-info folders."""
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin.load.cache_clear()
    yield tmp_path
    plugin.load.cache_clear()


def register(site: Path, dist: str, body: str) -> None:
    info = site / f"{dist}.dist-info"
    info.mkdir()
    name, version = dist.split("-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(body)


def test_third_party_source_loads_and_is_listed(site: Path) -> None:
    register(
        site, "keysetd_echo-1.2", "[keysetd.sources]\necho = tests.plugin_fixture:EchoSource\n"
    )
    cls = plugin.load("keysetd.sources", "echo")
    assert cls.__name__ == "EchoSource"
    listed = {(i.name, i.distribution) for i in plugin.available()}
    assert ("echo", "keysetd_echo 1.2") in listed
    assert ("file", "keysetd 0.1.0") in listed


def test_a_name_registered_twice_is_an_error(site: Path) -> None:
    register(site, "echo_a-1", "[keysetd.sources]\necho = tests.plugin_fixture:EchoSource\n")
    register(site, "echo_b-2", "[keysetd.sources]\necho = tests.plugin_fixture:NotAPlugin\n")
    with pytest.raises(PluginError, match=r"registered more than once.*echo_[ab] "):
        plugin.load("keysetd.sources", "echo")


def test_a_built_in_cannot_be_replaced_and_the_listing_says_so(site: Path) -> None:
    register(site, "rogue-0.1", "[keysetd.sources]\nfile = tests.plugin_fixture:EchoSource\n")
    assert plugin.load("keysetd.sources", "file") is FileSource
    listed = {(i.name, i.target): i.distribution for i in plugin.available()}
    assert listed[("file", "tests.plugin_fixture:EchoSource")] == (
        "rogue 0.1; ignored: the built-in 'file' wins"
    )
    assert listed[("file", "keysetd.sources.file:FileSource")].startswith("keysetd ")


def test_the_built_in_table_is_what_pyproject_registers() -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["entry-points"] == plugin.BUILTINS


def test_a_config_of_built_ins_does_not_scan_the_installed_distributions(tmp_path: Path) -> None:
    """Neither keysetd's registry nor pydantic's plugin loader (disabled: it would see every
    config value) lists the installed distributions' entry points."""
    code = (
        "import importlib.metadata as md\n"
        "scans = []\n"
        "for name in ('entry_points', 'distributions'):\n"
        "    real = getattr(md, name)\n"
        "    def spy(*a, _real=real, _name=name, **k):\n"
        "        scans.append(_name)\n"
        "        return _real(*a, **k)\n"
        "    setattr(md, name, spy)\n"
        "from keysetd.config import load_config\n"
        f"load_config(__import__('pathlib').Path({str(tmp_path / 'c.toml')!r}))\n"
        "print(bool(scans))"
    )
    (tmp_path / "c.toml").write_text(
        f'state_dir = "{tmp_path}/state"\n[source]\ntype = "file"\npath = "/x"\n'
        f'[[outputs]]\ntype = "pem"\npath = "{tmp_path}/pem"\n'
        '[[notify]]\ntype = "command"\nargv = ["/bin/true"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_a_plugin_of_the_wrong_shape_is_named(site: Path) -> None:
    register(
        site,
        "broken-1",
        "[keysetd.sources]\nodd = tests.plugin_fixture:NotAPlugin\ngone = tests.no_such_module:X\n",
    )
    with pytest.raises(PluginError, match=r"'odd'.*not a Source subclass"):
        plugin.load("keysetd.sources", "odd")
    with pytest.raises(PluginError, match=r"'gone'.*cannot import tests.no_such_module"):
        plugin.load("keysetd.sources", "gone")


def test_a_config_table_that_cannot_work_is_named_when_the_plugin_loads(site: Path) -> None:
    register(
        site,
        "odd_tables-1",
        "[keysetd.sources]\n"
        "when = tests.plugin_fixture:WhenSource\n"
        "price = tests.plugin_fixture:PriceSource\n",
    )
    with pytest.raises(PluginError, match=r"'when'.*its Config is broken.*Clock"):
        plugin.load("keysetd.sources", "when")
    with pytest.raises(PluginError, match=r"'price'.*its Config is broken.*Decimal"):
        plugin.load("keysetd.sources", "price")


def test_only_the_plugins_a_config_names_are_imported(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[source]\ntype = "file"\npath = "/x"\n'
        f'[[outputs]]\ntype = "jwks"\npath = "{tmp_path}/j.json"\n'
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom keysetd.config import load_config\n"
        f"load_config(Path({str(config)!r}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('keysetd.') or m in "
        "('hvac', 'boto3', 'botocore', 'pydantic_settings')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    loaded = done.stdout
    assert "keysetd.sources.file" in loaded and "keysetd.outputs.builtin" in loaded
    assert "pydantic_settings" in loaded  # what reads the config
    for absent in (
        "keysetd.notifiers",
        "keysetd.sources.command",
        "keysetd.outputs.pem",
        "hvac",
        "boto3",
    ):
        assert absent not in loaded, absent
