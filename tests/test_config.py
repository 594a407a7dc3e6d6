"""Config loading: TOML, environment overrides, plugin tables, every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from keysetd.config import environment_overrides, load_config
from keysetd.errors import ConfigError
from keysetd.strict import checked
from keysetd.units import format_duration, parse_duration, parse_mode


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


@pytest.mark.parametrize(
    "absurd", ["9999999999999999999d", "3651d", 1e300, float("inf"), 10**400, "9" * 5000]
)
def test_durations_end_at_ten_years(absurd: object) -> None:
    assert parse_duration("3650d") == 3650 * 86400
    with pytest.raises(ValueError, match="at most 3650d"):
        parse_duration(absurd)


def test_nan_is_not_a_duration() -> None:
    with pytest.raises(ValueError, match="NaN"):
        parse_duration(float("nan"))


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.1, "100ms"), (1, "1s"), (3600, "1h"), (86400, "1d")]
)
def test_bounds_are_named_as_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('\n[policy]\nretention = "3651d"\n', "policy.retention: a duration is finite and at most"),
        ("\n[policy]\nactivation_delay = inf\n", "policy.activation_delay: a duration is"),
        ("\n[policy]\nmax_staleness = 0\n", "policy.max_staleness: must be greater than 0"),
        ('\n[rotation]\nevery = "999ms"\n', "rotation.every: must be at least 1s"),
        ('\n[rotation]\nevery = "3651d"\n', "rotation.every: a duration is finite"),
    ],
)
def test_policy_and_rotation_bounds(tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(base(tmp_path, extra), environ={})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("REFRESH_INTERVAL", "0", "source.refresh_interval: must be at least 100ms"),
        ("REFRESH_INTERVAL", "99ms", "source.refresh_interval: must be at least 100ms"),
        ("REFRESH_INTERVAL", "25h", "source.refresh_interval: must be at most 1d"),
        ("TIMEOUT", "0", "source.timeout: must be greater than 0s"),
        ("TIMEOUT", "61m", "source.timeout: must be at most 1h"),
    ],
)
def test_source_bounds(tmp_path: Path, key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(base(tmp_path), environ={f"KEYSETD_SOURCE__{key}": value})
    assert info.value.problems == (f"{problem} (from $KEYSETD_SOURCE__{key})",)


def test_source_bounds_are_inclusive(tmp_path: Path) -> None:
    for interval, timeout in (("100ms", "1ms"), ("1d", "1h")):
        environ = {"KEYSETD_SOURCE__REFRESH_INTERVAL": interval, "KEYSETD_SOURCE__TIMEOUT": timeout}
        assert load_config(base(tmp_path), environ=environ).source.refresh_interval > 0


def test_a_notifier_timeout_is_bounded_whatever_its_type(tmp_path: Path) -> None:
    notify = '\n[[notify]]\ntype = "command"\nargv = ["/bin/true"]\ntimeout = "{}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(base(tmp_path, notify.format("0s")), environ={})
    assert info.value.problems == ("notify.0.timeout: must be greater than 0s",)
    assert load_config(base(tmp_path, notify.format("1h")), environ={}).notifiers


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
        "/bin/sh",
        "-c",
        "/usr/bin/kms-client get-jwt-keyset --format json",
    ]
    monkeypatch.setenv("RGS_JWT_KEYSET_FILE", "/x.json")
    with pytest.raises(ConfigError, match="not both"):
        load_config(base(tmp_path))


def test_rgs_strict_production_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_STRICT_PRODUCTION_MODE", "true")
    with pytest.raises(ConfigError, match="strict mode refuses"):
        checked(load_config(base(tmp_path)))  # BASE has no max_staleness


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


def test_refresh_interval_convention_alone_keeps_the_file_source(tmp_path: Path) -> None:
    """It once raised KeyError: the convention's table had no source type."""
    config = load_config(base(tmp_path), environ={"RGS_JWT_KEYSET_REFRESH_INTERVAL": "15s"})
    assert config.build_source().describe() == "file:/etc/keysetd/keyset.json"
    assert config.source.refresh_interval == 15


SERVICE_LINKS = [
    "KEYSETD_SERVICE_HOST",
    "KEYSETD_SERVICE_PORT",
    "KEYSETD_SERVICE_PORT_HTTP",
    "KEYSETD_SERVICE_PORT_KEYSETD_HTTP",
    "KEYSETD_PORT",
    "KEYSETD_PORT_9464_TCP",
    "KEYSETD_PORT_9464_TCP_PROTO",
    "KEYSETD_PORT_9464_TCP_PORT",
    "KEYSETD_PORT_9464_TCP_ADDR",
    "KEYSETD_PORT_53_UDP_ADDR",
    "KEYSETD_PORT_38412_SCTP",
]


def test_kubernetes_service_links_are_not_keys(tmp_path: Path) -> None:
    environ = dict.fromkeys(SERVICE_LINKS, "tcp://10.96.0.12:9464")
    assert environment_overrides(environ) == ({}, {})
    assert load_config(base(tmp_path), environ=environ).build_outputs()


@pytest.mark.parametrize(
    "near_miss",
    [
        "KEYSETD_SERVICE_HOSTS",
        "KEYSETD_PORTS",
        "KEYSETD_PORT_9464",
        "KEYSETD_PORT_9464_TCP_HOST",
        "KEYSETD_PORT_X_TCP",
        "KEYSETD_SERVICE__HOST",
    ],
)
def test_only_the_exact_service_link_shapes_are_skipped(tmp_path: Path, near_miss: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key \(from \${near_miss}\)"):
        load_config(base(tmp_path), environ={near_miss: "x"})


SECRET = "ghp_Zx9s3cretT0kenValue"


def test_a_secret_in_a_wrong_typed_key_is_never_echoed(tmp_path: Path) -> None:
    """pydantic's errors carry the input; keysetd's messages name the key and never the value."""
    path = base(
        tmp_path,
        f'[[notify]]\ntype = "http"\nurl = "https://h.example/"\nretries = "{SECRET}"\n'
        f'headers = "{SECRET}"\ntimeout = ["{SECRET}"]\n'
        f'[policy]\nhmac_alg = "{SECRET}"\nmax_staleness = {{ token = "{SECRET}" }}\n',
    )
    environ = {"KEYSETD_STRICT": SECRET, "KEYSETD_SERVER": SECRET, "KEYSETD_LOG_LEVEL": SECRET}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    text = "\n".join([str(caught.value), *caught.value.problems])
    assert SECRET not in text
    assert SECRET[4:12] not in text
    for where in (
        "notify.0.retries: expected an integer",
        "notify.0.headers: expected a table",
        "notify.0.timeout:",
        "policy.hmac_alg: expected one of 'HS256', 'HS384', 'HS512'",
        "policy.max_staleness:",
        "strict: expected true or false (from $KEYSETD_STRICT)",
        "server: expected a table (from $KEYSETD_SERVER)",
        "log_level: expected one of",
    ):
        assert any(line.startswith(where) for line in caught.value.problems), where
    assert str(path) in str(caught.value)


def test_json_in_nested_and_list_variables(tmp_path: Path) -> None:
    """``[``/``{`` values are JSON at any depth; JSON that does not parse stays a string and
    fails at its key, with every other problem still listed."""
    path = write(
        tmp_path,
        f'state_dir = "{tmp_path / "state"}"\n[source]\ntype = "command"\nargv = ["/bin/false"]\n'
        f'[[outputs]]\ntype = "jwks"\npath = "{tmp_path}/j.json"\n',
    )
    config = load_config(path, environ={"KEYSETD_SOURCE__ARGV": '["/usr/bin/kms", "get"]'})
    assert config.source.argv == ["/usr/bin/kms", "get"]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"KEYSETD_OUTPUTS": "[{oops", "KEYSETD_STRICT": "maybe"})
    assert caught.value.problems == (
        "strict: expected true or false (from $KEYSETD_STRICT)",
        "outputs: expected a list (from $KEYSETD_OUTPUTS)",
    )
