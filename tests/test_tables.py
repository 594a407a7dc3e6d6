"""Config tables (keysetd.tables, pydantic models): conversion, every problem with its location,
no values shown."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

from keysetd.tables import (
    After,
    Before,
    Secret,
    Table,
    TableError,
    matches,
    non_empty,
    positive,
)
from keysetd.units import Duration


class Limits(Table):
    allow: list[Annotated[str, matches(r"[a-z.]+")]] | None = None
    max: Annotated[int, positive] = 1


class Example(Table):
    name: Annotated[str, non_empty]
    path: Path | None = None
    count: int = 3
    ratio: float = 0.5
    enabled: bool = False
    mode: Literal["fast", "safe"] = "safe"
    every: Duration = 60.0
    tags: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    limits: list[str] | Limits | None = None
    token: Secret | None = None
    shout: Annotated[str, Before(lambda v: v.upper() if isinstance(v, str) else v)] = "X"

    def __post_init__(self) -> None:
        if self.enabled and self.path is None:
            raise ValueError("enabled needs a path")


def problems(table: dict[str, object]) -> list[str]:
    with pytest.raises(TableError) as caught:
        Example.parse(table)
    return caught.value.lines("t")


def test_a_valid_table_converts_every_field() -> None:
    got = Example.parse(
        {
            "name": "n",
            "path": "/etc/x",
            "count": 7,
            "ratio": 2,
            "enabled": True,
            "mode": "fast",
            "every": "1h30m",
            "tags": ["a", "b"],
            "env": {"A": "1"},
            "limits": {"allow": ["a.b"], "max": 2},
            "token": "s3cret",
            "shout": "hey",
        }
    )
    assert got.path == Path("/etc/x")
    assert (got.count, got.ratio, got.every) == (7, 2.0, 5400.0)
    assert got.tags == ("a", "b")
    assert got.limits == Limits(allow=["a.b"], max=2)
    assert got.token is not None and got.token.reveal() == "s3cret"
    assert got.shout == "HEY"


def test_environment_strings_convert_to_scalars() -> None:
    got = Example.parse(
        {"name": "n", "count": "12", "ratio": "0.25", "enabled": "yes", "path": "/p"}
    )
    assert (got.count, got.ratio, got.enabled) == (12, 0.25, True)
    assert Example.parse({"name": "n", "enabled": "off"}).enabled is False


def test_every_problem_is_named_at_once_with_its_location() -> None:
    found = problems(
        {
            "count": "many",
            "mode": "turbo",
            "tags": ["a", 3],
            "limits": {"allow": ["UPPER"], "max": 0, "extra": 1},
            "colour": "red",
        }
    )
    assert found == [
        "t.name: required key is missing",
        "t.count: expected an integer",
        "t.mode: expected one of 'fast', 'safe'",
        "t.tags.1: expected a string",
        "t.limits.allow.0: must match [a-z.]+",
        "t.limits.max: must be greater than 0",
        "t.limits.extra: unknown key",
        "t.colour: unknown key",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected an integer"),
        (1.5, "expected an integer"),
        ("", None),
    ],
)
def test_booleans_and_fractions_are_not_integers(value: object, message: str | None) -> None:
    if message is None:
        with pytest.raises(TableError, match="must not be empty"):
            Example.parse({"name": value})
        return
    assert problems({"name": "n", "count": value}) == [f"t.count: {message}"]


def test_a_union_reports_what_it_expected_or_the_nested_problem() -> None:
    assert problems({"name": "n", "limits": 5}) == ["t.limits: expected a list or a table"]
    assert problems({"name": "n", "limits": {"max": "x"}}) == ["t.limits.max: expected an integer"]


def test_cross_field_rules_run_after_the_fields() -> None:
    assert problems({"name": "n", "enabled": True}) == ["t: enabled needs a path"]


def test_rejected_values_never_appear_in_errors() -> None:
    found = " ".join(problems({"name": "n", "count": "hunter2-s3cret", "token": 42}))
    assert "hunter2" not in found
    assert "42" not in found


def test_secrets_hide_in_repr_and_str() -> None:
    table = Example.parse({"name": "n", "token": "s3cret-value"})
    assert "s3cret" not in repr(table)
    assert "s3cret" not in str(table.token)
    assert table.as_dict()["token"] == Secret("s3cret-value")


def test_tables_are_frozen_and_checked_when_built_directly() -> None:
    table = Example(name="n", every="5m")
    assert table.every == 300.0
    with pytest.raises(ValidationError, match="frozen"):
        table.name = "m"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="must not be empty"):
        Example(name="")
    with pytest.raises(ValidationError, match="enabled needs a path"):
        Example(name="n", enabled=True)


def test_as_dict_gives_plain_values_and_can_drop_nones() -> None:
    table = Example.parse({"name": "n", "limits": {"allow": ["a"]}})
    assert table.as_dict(exclude_none=True)["limits"] == {"allow": ["a"], "max": 1}
    assert "path" not in table.as_dict(exclude_none=True)
    assert table.as_dict()["path"] is None


def test_keys_must_be_strings() -> None:
    with pytest.raises(TableError, match="keys must be strings"):
        Example.parse({1: "x"})  # type: ignore[dict-item]


class Optional(Table):
    when: Annotated[str, matches(r"[0-9]+")] | None = None


def test_an_optional_field_reports_its_own_rule() -> None:
    with pytest.raises(TableError, match=r"when: must match \[0-9\]\+"):
        Optional.parse({"when": "soon"})
    assert Optional.parse({}).when is None


def test_the_readme_plugin_example_works() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Writing a plugin", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "readme_plugin"}
    exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)
    config_class = namespace["HsmSourceConfig"]
    assert isinstance(config_class, type) and issubclass(config_class, Table)
    config = config_class.parse({"type": "hsm", "slot": "2", "pin": "1234", "retry_after": "1s"})
    assert "1234" not in repr(config)
    with pytest.raises(TableError) as caught:
        config_class.parse({"type": "hsm", "slot": 0, "pin": "1234", "pin_file": "/p"})
    assert caught.value.lines() == ["slot: must be greater than 0"]
    with pytest.raises(TableError, match="exactly one of pin and pin_file"):
        config_class.parse({"type": "hsm", "slot": 1})


@pytest.mark.parametrize("value", ["nan", float("inf"), "-inf", "x", True])
def test_numbers_are_finite(value: object) -> None:
    assert problems({"name": "n", "ratio": value}) == ["t.ratio: expected a finite number"]


@pytest.mark.parametrize(
    ("config_class", "table"),
    [
        ("keysetd.notifiers.command:CommandNotifierConfig", {"env": {"TOKEN=hunter2": "x"}}),
        ("keysetd.notifiers.http:HttpNotifierConfig", {"headers": {"Bearer hunter2": "x"}}),
        ("keysetd.notifiers.command:CommandNotifierConfig", {"timeout": "hunter2s"}),
        ("keysetd.outputs.builtin:EnvOutputConfig", {"mode": "hunter2"}),
    ],
)
def test_the_rules_of_real_tables_do_not_quote_the_value(
    config_class: str, table: dict[str, object]
) -> None:
    module, _, name = config_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    base = {"type": "x", "argv": ["/bin/true"], "url": "https://h/", "path": "/p"}
    given = {key: value for key, value in base.items() if key in cls.model_fields}
    with pytest.raises(TableError) as caught:
        cls.parse({**given, **table})
    assert "hunter2" not in str(caught.value)


def _echo(value: str) -> str:
    raise ValueError(f"{value} is wrong")


class Echo(Table):
    word: Annotated[str, After(_echo)]


def test_a_message_that_quotes_the_value_is_replaced() -> None:
    """A rule (or a pydantic message) that quotes the input never reaches the user."""
    with pytest.raises(TableError) as caught:
        Echo.parse({"word": "hunter2"})
    assert caught.value.lines() == ["word: is not valid (value_error)"]


def test_pydantic_plugins_are_off() -> None:
    """A pydantic plugin would be handed every config value (tokens included)."""
    import os

    assert os.environ["PYDANTIC_DISABLE_PLUGINS"] == "__all__"


@pytest.mark.parametrize("value", ["", "a\0b"])
def test_a_path_is_not_empty_and_holds_no_nul(value: str) -> None:
    assert problems({"name": "n", "path": value}) == ["t.path: must be a non-empty path"]


def test_a_duration_decides_for_itself_what_a_boolean_is() -> None:
    assert problems({"name": "n", "every": True}) == [
        "t.every: a duration is a number of seconds or a string like '30s'"
    ]
