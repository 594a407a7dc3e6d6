"""Config tables: pydantic models that refuse unknown keys and name every problem, never a value.

A table derives from ``Table``: a frozen pydantic model (``extra="forbid"``, built
on first use so a start pays only for the tables its config names). Field rules
ride on the type: ``Annotated[float, Before(parse_duration), positive]``; rules
that span fields go in ``__post_init__`` and raise ValueError. ``Table.parse``
raises ``TableError``: every problem of the table as (location, message), the
messages rewritten from pydantic's so that none carries the refused input
(config tables may hold tokens). Only config loading imports this module (and so
pydantic): ``keysetd verify`` and ``keysetd.verifier`` never do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from types import UnionType
from typing import Any, Self, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic import model_validator as _model_validator
from pydantic_core import core_schema

__all__ = [
    "After",
    "Before",
    "Location",
    "Secret",
    "Table",
    "TableError",
    "matches",
    "non_empty",
    "positive",
    "problems_of",
    "refuse_lax_values",
]

#: pydantic's plugins (entry-point group "pydantic") are handed every value a model
#: validates, and config tables hold tokens: none is loaded, so none sees them (and the
#: installed distributions are not scanned for them at start, ~25 ms).
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"

Location = tuple[str | int, ...]
_Sized = TypeVar("_Sized", bound=Sized)

#: In ``Annotated``: a parser of the raw value that runs before type conversion.
Before = BeforeValidator
#: In ``Annotated``: a rule on the converted value (raise ValueError to refuse it).
After = AfterValidator


class TableError(ValueError):
    """Every problem of one table, each a (location, message) pair; str() lists them all."""

    def __init__(self, problems: Sequence[tuple[Location, str]]) -> None:
        self.problems: tuple[tuple[Location, str], ...] = tuple(problems)
        super().__init__("; ".join(self.lines()))

    def located(self, prefix: str = "") -> list[tuple[str, str]]:
        """(where, message) per problem, ``where`` dotted and under ``prefix``."""
        out = []
        for loc, message in self.problems:
            where = ".".join(str(part) for part in (*([prefix] if prefix else []), *loc))
            out.append((where or "(top level)", message))
        return out

    def lines(self, prefix: str = "") -> list[str]:
        """``where: message`` per problem."""
        return [f"{where}: {message}" for where, message in self.located(prefix)]


class Secret:
    """A string that never shows itself in a repr, a str or an error; ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _secret, serialization=core_schema.plain_serializer_function_ser_schema(repr)
        )


def _secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise ValueError("expected a string")


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_empty(value: _Sized) -> _Sized:
    if not value:
        raise ValueError("must not be empty")
    return value


positive = AfterValidator(_positive)
non_empty = AfterValidator(_non_empty)


def matches(pattern: str) -> AfterValidator:
    """A rule: the whole string matches ``pattern`` (which the message shows, not the value)."""
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not compiled.fullmatch(value):
            raise ValueError(f"must match {pattern}")
        return value

    return AfterValidator(check)


#: pydantic error types and what keysetd says instead; none of these quotes the input.
_MESSAGES = {
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "int_parsing_size": "expected an integer",
    "float_type": "expected a finite number",
    "float_parsing": "expected a finite number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "string_unicode": "expected a string",
    "string_sub_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "iterable_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dataclass_type": "expected a table",
    "path_type": "expected a path",
    "none_required": "expected nothing",
}
#: A union member's tag in a location: these, anything with "[" ("list[str]",
#: "function-after[...]"), or the name of a table class.
_TAGS = frozenset({"str", "int", "float", "bool", "none", "bytes"})
_TABLE_NAMES: set[str] = set()


def _message(error: Any) -> str:
    if isinstance(error.get("input"), _Refused):
        return str(error["input"].message)
    kind = error["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        return f"expected one of {expected.replace(' or ', ', ')}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", "is not valid"))
    # pydantic's own sentence; checked below so it never carries the input
    return str(error["msg"])


def _shown(message: str, value: object) -> bool:
    """Does ``message`` quote ``value`` (a string or number the user gave)?"""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list | tuple):
        return False
    text = value.reveal() if isinstance(value, Secret) else str(value)
    # Under 4 characters a value is no secret, and may be a bound the rule names ("0s").
    return len(text) >= 4 and text in message


def problems_of(exc: ValidationError) -> list[tuple[Location, str]]:
    """pydantic's errors as (location, message), union member tags dropped, inputs never shown."""
    grouped: dict[Location, list[str]] = {}
    from_union: set[Location] = set()
    for error in exc.errors(include_url=False, include_input=True):
        loc: list[str | int] = []
        for part in error["loc"]:
            if isinstance(part, str) and ("[" in part or part in _TAGS or part in _TABLE_NAMES):
                from_union.add(tuple(loc))
                continue
            loc.append(part)
        message = _message(error)
        if _shown(message, error.get("input")):
            message = f"is not valid ({error['type']})"
        found = grouped.setdefault(tuple(loc), [])
        if message not in found:
            found.append(message)
    # A union none of whose members took the value: a nested table's own problems win,
    # else one line naming what each member expected.
    out: list[tuple[Location, str]] = []
    for where, messages in grouped.items():
        deeper = any(len(other) > len(where) and other[: len(where)] == where for other in grouped)
        if where in from_union and deeper:
            continue
        out.append((where, _either(messages) if where in from_union else "; ".join(messages)))
    return out


def _either(messages: list[str]) -> str:
    """``expected a list or a table`` from each member's ``expected ...``."""
    if all(message.startswith("expected ") for message in messages):
        return "expected " + " or ".join(message.removeprefix("expected ") for message in messages)
    return " or ".join(messages)


class _Refused:
    """Stands in for a value pydantic would take and keysetd does not, so pydantic refuses it
    at its key (with this message): true for a number, an empty path."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _refusal(annotation: Any, value: object) -> _Refused | None:
    """Why keysetd refuses ``value`` for a key of this type where pydantic would not."""
    members = _members(annotation)
    if isinstance(value, bool) and bool not in members:
        if int in members:
            return _Refused("expected an integer")
        if float in members:
            return _Refused("expected a finite number")
    if isinstance(value, str) and Path in members and (not value or "\0" in value):
        return _Refused("must be a non-empty path")
    return None


def refuse_lax_values(model: type[BaseModel], data: Any) -> Any:
    """``data`` with each value pydantic's lax mode would wrongly take replaced by a refusal."""
    if not isinstance(data, dict):
        return data
    refused = {
        name: refusal
        for name, info in model.model_fields.items()
        if name in data
        and not any(isinstance(rule, BeforeValidator) for rule in info.metadata)  # it decides
        and (refusal := _refusal(info.annotation, data[name])) is not None
    }
    return {**data, **refused} if refused else data


class Table(BaseModel):
    """Base of every config table: frozen, unknown keys refused, built when first used."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        defer_build=True,
        allow_inf_nan=False,
        arbitrary_types_allowed=False,
        hide_input_in_errors=True,
        validate_default=False,
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _TABLE_NAMES.add(cls.__name__)

    @_model_validator(mode="before")
    @classmethod
    def _strict_scalars(cls, data: Any) -> Any:
        """pydantic reads true as 1 and "" as the path "."; keysetd refuses both (typos)."""
        return refuse_lax_values(cls, data)

    @_model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        post_init: Callable[[], None] | None = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()
        return self

    @classmethod
    def parse(cls, table: Any) -> Self:
        """Convert and check ``table``; TableError naming every problem otherwise."""
        if isinstance(table, dict) and (bad := [k for k in table if not isinstance(k, str)]):
            raise TableError([((str(key),), "keys must be strings") for key in bad])
        try:
            return cls.model_validate(table)
        except ValidationError as exc:
            raise TableError(problems_of(exc)) from None

    def as_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The fields as plain values (nested tables as dicts), optionally without Nones."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if not (exclude_none and value is None):
                out[name] = _plain(value, exclude_none)
        return out


def _plain(value: Any, exclude_none: bool) -> Any:
    if isinstance(value, Table):
        return value.as_dict(exclude_none=exclude_none)
    if isinstance(value, list | tuple):
        return [_plain(item, exclude_none) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item, exclude_none) for key, item in value.items()}
    return value


def field_names(table: type[Table]) -> Iterable[str]:
    """The keys a table takes."""
    return table.model_fields.keys()
