"""Config loading: TOML, environment overrides, plugin tables, every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from keysetd.config import load_config
from keysetd.errors import ConfigError
from keysetd.units import parse_duration, parse_mode


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keysetd.toml"
    path.write_text(text)
    return path


BASE = """
state_dir = "{state}"
[source]
type = "file"
path = "/etc/keysetd/keyset.json"
[[outputs]]
type = "jwks"
path = "/run/keysetd/jwks.json"
"""


def base(tmp_path: Path, extra: str = "") -> Path:
    return write(tmp_path, BASE.format(state=tmp_path / "state") + extra)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("750ms", 0.75),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("12", 12),
        (2.5, 2.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-1s", "1h 30m", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_modes() -> None:
    assert parse_mode("0640") == 0o640
    with pytest.raises(ValueError):
        parse_mode("0999")


def test_minimal_config_loads(tmp_path: Path) -> None:
    config = load_config(base(tmp_path))
    assert config.source.refresh_interval == 60
    (output,) = config.build_outputs()
    assert output.name == "jwks" and output.mode == 0o644


def test_unknown_keys_are_named_everywhere(tmp_path: Path) -> None:
    text = "bogus = 1\n" + BASE.format(state=tmp_path)
    text = text.replace('type = "file"', 'type = "file"\npathh = "x"')
    text = text.replace('type = "jwks"', 'type = "jwks"\nmdoe = "0644"')
    path = write(tmp_path, text + "\n[policy]\nretension = '1h'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    for key in ("bogus", "source.pathh", "outputs.0.mdoe", "policy.retension"):
        assert key in text, text


def test_wrong_types_are_named(tmp_path: Path) -> None:
    path = base(tmp_path, '\n[policy]\nretention = "soon"\n')
    with pytest.raises(ConfigError, match=r"policy.retention"):
        load_config(path)
    path = write(
        tmp_path,
        BASE.format(state=tmp_path).replace(
            'path = "/etc/keysetd/keyset.json"', "path = 42\nrefresh_interval = []"
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "source.path" in str(info.value) and "source.refresh_interval" in str(info.value)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSETD_SOURCE__PATH", "/srv/keys.json")
    monkeypatch.setenv("KEYSETD_SOURCE__REFRESH_INTERVAL", "5s")
    monkeypatch.setenv("KEYSETD_STRICT", "true")
    monkeypatch.setenv("KEYSETD_POLICY__RETENTION", "2h")
    monkeypatch.setenv("KEYSETD_POLICY__MAX_STALENESS", "1h")
    config = load_config(base(tmp_path))
    assert str(config.source.path) == "/srv/keys.json"  # type: ignore[attr-defined]
    assert config.source.refresh_interval == 5
    assert config.settings.strict is True
    assert config.policy.retention == 7200


def test_environment_alone_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "")
    monkeypatch.setenv("KEYSETD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KEYSETD_SOURCE__TYPE", "file")
    monkeypatch.setenv("KEYSETD_SOURCE__PATH", "/x.json")
    monkeypatch.setenv("KEYSETD_OUTPUTS", '[{"type": "jwks", "path": "/tmp/j.json"}]')
    assert load_config(path).build_source().describe() == "file:/x.json"


def test_unknown_plugin_lists_known(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.format(state=tmp_path).replace('type = "file"', 'type = "ftp"'))
    with pytest.raises(ConfigError, match=r"source.type: plugin 'ftp'.*known: .*file"):
        load_config(path)


def test_duplicate_output_names_and_dangling_notifier(tmp_path: Path) -> None:
    path = base(
        tmp_path,
        """
[[outputs]]
type = "jwks"
path = "/run/keysetd/other.json"
[[notify]]
type = "command"
argv = ["/bin/true"]
outputs = ["nope"]
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "outputs.1.name" in str(info.value)


def test_notifier_naming_unknown_output(tmp_path: Path) -> None:
    path = base(
        tmp_path,
        """
[[notify]]
type = "command"
argv = ["/bin/true"]
outputs = ["nope"]
""",
    )
    with pytest.raises(ConfigError, match=r"notify.0.outputs: no output is named 'nope'"):
        load_config(path)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[source\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_no_outputs(tmp_path: Path) -> None:
    path = write(tmp_path, f'state_dir = "{tmp_path}"\n[source]\ntype = "file"\npath = "/x"\n')
    with pytest.raises(ConfigError, match="at least one"):
        load_config(path)


def test_signer_outputs_default_to_0600(tmp_path: Path) -> None:
    path = base(tmp_path, '\n[[outputs]]\ntype = "keyset"\npath = "/run/keysetd/keyset.json"\n')
    modes = {o.name: (o.role.value, o.mode) for o in load_config(path).build_outputs()}
    assert modes == {"jwks": ("verifier", 0o644), "keyset": ("signer", 0o600)}


def test_unknown_environment_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSETD_SOURCE__PAHT", "/x")
    with pytest.raises(
        ConfigError, match=r"source.paht: unknown key \(from \$KEYSETD_SOURCE__PAHT\)"
    ):
        load_config(base(tmp_path))


def test_config_variable_is_not_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSETD_CONFIG", str(tmp_path / "keysetd.toml"))
    assert load_config(base(tmp_path)).build_outputs()


def test_rgs_jwt_keyset_file_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET_FILE", "/etc/app/keyset.json")
    monkeypatch.setenv("RGS_JWT_KEYSET_REFRESH_INTERVAL", "15s")
    monkeypatch.setenv("RGS_STRICT_PRODUCTION_MODE", "false")
    config = load_config(base(tmp_path))
    assert config.build_source().describe() == "file:/etc/app/keyset.json"
    assert config.source.refresh_interval == 15
    monkeypatch.setenv("KEYSETD_SOURCE__PATH", "/wins.json")
    assert load_config(base(tmp_path)).build_source().describe() == "file:/wins.json"


def test_rgs_jwt_keyset_command_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET_COMMAND", "/usr/bin/kms-client get-jwt-keyset --format json")
    config = load_config(base(tmp_path))
    assert config.source.type == "command"
    assert config.source.argv == [  # type: ignore[attr-defined]
        "/usr/bin/kms-client",
        "get-jwt-keyset",
        "--format",
        "json",
    ]
    monkeypatch.setenv("RGS_JWT_KEYSET_FILE", "/x.json")
    with pytest.raises(ConfigError, match="not both"):
        load_config(base(tmp_path))


def test_rgs_strict_production_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_STRICT_PRODUCTION_MODE", "true")
    with pytest.raises(ConfigError, match="strict mode refuses"):
        load_config(base(tmp_path))  # BASE has no max_staleness


def test_problems_name_each_output_by_its_place_in_the_file(tmp_path: Path) -> None:
    """An output that fails, or an entry that is not a table, does not renumber the rest."""
    path = write(
        tmp_path,
        f'state_dir = "{tmp_path / "state"}"\n'
        '[source]\ntype = "jwks_url"\nurl = "https://sso.example.com/certs"\n'
        '[[outputs]]\ntype = "jwks"\npath = "/run/j.json"\nmdoe = 1\n'
        '[[outputs]]\ntype = "keyset"\npath = "/run/k.json"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "outputs.0.mdoe: unknown key" in caught.value.problems
    assert any(
        p.startswith("outputs.1: a keyset output needs private keys") for p in caught.value.problems
    )
    mixed = 'outputs = [1, {type = "jwks", path = "/run/j.json", mdoe = 1}]\n'
    mixed += '[source]\ntype = "file"\npath = "/k"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, mixed))
    assert "outputs.1.mdoe: unknown key" in caught.value.problems


def test_a_huge_number_is_a_config_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSETD_NOTIFY", '[{"type": "signal", "pid": "' + "9" * 5000 + '"}]')
    with pytest.raises(ConfigError) as caught:
        load_config(base(tmp_path))
    [problem] = caught.value.problems
    assert problem.startswith("notify.0.pid: expected an integer")
