"""Config tables: frozen dataclasses checked against their type hints, every problem named.

A table is a class with annotated fields that derives from ``Table``. Its
constructor, and ``parse`` for a mapping, converts the values (TOML, or strings
from ``KEYSETD_*`` variables), rejects unknown keys and collects every problem
with its location before it fails: no table exists unchecked.
Field rules ride on the type: ``Annotated[float, Before(parse_duration), positive]``;
rules that span fields go in ``__post_init__`` and raise ValueError.

This replaces pydantic, which cost about 10 MB of the daemon's 40 MB RSS
budget for what keysetd needs: scalars, lists, tables, choices and optionals.
Messages never quote the rejected value, since config tables may hold tokens.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    Self,
    TypeVar,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
    get_type_hints,
)

__all__ = [
    "Before",
    "Location",
    "Secret",
    "Table",
    "TableError",
    "declared_fields",
    "matches",
    "non_empty",
    "positive",
]

Location = tuple[str | int, ...]
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_Sized = TypeVar("_Sized", bound=Sized)


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

    def under(self, *loc: str | int) -> TableError:
        return TableError([((*loc, *inner), message) for inner, message in self.problems])


def _fail(message: str) -> TableError:
    return TableError([((), message)])


@dataclass(frozen=True, slots=True)
class Before:
    """In ``Annotated``: a parser of the raw value that runs before type conversion."""

    parse: Callable[[Any], Any]


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


def positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def non_empty(value: _Sized) -> _Sized:
    if not value:
        raise ValueError("must not be empty")
    return value


def matches(pattern: str) -> Callable[[str | None], str | None]:
    """A rule: the whole string matches ``pattern`` (which the message shows, not the value)."""
    compiled = re.compile(pattern)

    def check(value: str | None) -> str | None:
        if value is not None and not compiled.fullmatch(value):
            raise ValueError(f"must match {pattern}")
        return value

    return check


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _describe(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, Table)):
        return "a table"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return names.get(tp, "a path" if tp is Path else "a string" if tp is Secret else str(tp))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _scalar(tp: Any, value: Any) -> Any:
    """A TOML scalar as ``tp``; strings (from the environment) convert to bool, int and float."""
    if tp in (Path, Secret) and isinstance(value, tp):
        return value  # already converted: dataclasses.replace builds the table again
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            try:
                return int(value)
            except ValueError:  # more digits than sys.get_int_max_str_digits()
                pass
    elif tp is float:
        number = _number(value)
        if number is not None and math.isfinite(number):
            return number
    elif tp is str and isinstance(value, str):
        return value
    elif tp is Secret and isinstance(value, str):
        return Secret(value)
    elif tp is Path and isinstance(value, str):
        if not value or "\0" in value:
            raise _fail("must be a non-empty path")
        return Path(value)
    raise _fail(f"expected {_describe(tp)}")


def _items(item_type: Any, values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    problems: list[tuple[Location, str]] = []
    for index, value in enumerate(values):
        try:
            out.append(_convert(item_type, value))
        except TableError as exc:
            problems.extend(exc.under(index).problems)
    if problems:
        raise TableError(problems)
    return out


def _mapping(value_type: Any, table: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    problems: list[tuple[Location, str]] = []
    for key, value in table.items():
        if not isinstance(key, str):
            problems.append(((str(key),), "keys must be strings"))
            continue
        try:
            out[key] = _convert(value_type, value)
        except TableError as exc:
            problems.extend(exc.under(key).problems)
    if problems:
        raise TableError(problems)
    return out


def _union(members: tuple[Any, ...], value: Any) -> Any:
    """The first member that takes the value; a nested table's own problems if none does."""
    if value is None and types.NoneType in members:
        return None
    options = [member for member in members if member is not types.NoneType]
    if len(options) == 1:
        return _convert(options[0], value)
    failures = []
    for member in options:
        try:
            return _convert(member, value)
        except TableError as exc:
            failures.append(exc)
    nested = [exc for exc in failures if any(loc for loc, _ in exc.problems)]
    if nested:
        raise nested[0]
    raise _fail("expected " + " or ".join(_describe(member) for member in options))


def _apply(rule: Callable[[Any], Any], value: Any) -> Any:
    try:
        return rule(value)
    except TableError:
        raise
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _convert(tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *rules = get_args(tp)
        for rule in rules:
            if isinstance(rule, Before):
                value = _apply(rule.parse, value)
        value = _convert(base, value)
        for rule in rules:
            if not isinstance(rule, Before):
                value = _apply(rule, value)
        return value
    if origin in (Union, types.UnionType):
        return _union(get_args(tp), value)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in get_args(tp)):
            return value
        raise _fail(f"expected {_describe(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _fail("expected a list")
        items = _items(get_args(tp)[0], value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail("expected a table")
        return _mapping(get_args(tp)[1], value)
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Table):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _fail("expected a table")
        return tp.parse(value)
    return _scalar(tp, value)


_FIELD_TYPES: dict[type, dict[str, tuple[Any, bool]]] = {}
_SCALARS = (bool, int, float, str, Path, Secret)


def _unsupported(tp: Any) -> Any | None:
    """The first part of ``tp`` that tables cannot convert, or None when all of it can."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _unsupported(args[0])
    if origin in (Union, types.UnionType):
        members = (member for member in args if member is not types.NoneType)
        return next((bad for member in members if (bad := _unsupported(member))), None)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return _unsupported(args[0])
    if origin is dict:
        return tp if args[0] is not str else _unsupported(args[1])
    if origin is Literal or tp is Any or tp in _SCALARS:
        return None
    if isinstance(tp, type) and issubclass(tp, Table):
        declared_fields(tp)
        return None
    return tp


def declared_fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """Each init field of ``cls``: its resolved type and whether it must be given (cached).

    TypeError, naming the field, when a type does not resolve (a name imported only
    under TYPE_CHECKING) or is one tables cannot convert: a plugin's mistake shows
    when it loads, not as a user's config error.
    """
    if cls not in _FIELD_TYPES:
        try:
            hints = get_type_hints(cls, include_extras=True)
        except Exception as exc:  # NameError, or anything a broken annotation raises
            raise TypeError(f"{cls.__qualname__}: cannot resolve its field types: {exc}") from None
        declared = {
            f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(cls)
            if f.init
        }
        for name, (tp, _) in declared.items():
            if (bad := _unsupported(tp)) is not None:
                raise TypeError(f"{cls.__qualname__}.{name}: tables cannot convert {bad!r}")
        _FIELD_TYPES[cls] = declared
    return _FIELD_TYPES[cls]


def _converted(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every given value converted to its field's type; TableError naming all problems."""
    declared = declared_fields(cls)
    values: dict[str, Any] = {}
    problems: list[tuple[Location, str]] = []
    for name, (tp, required) in declared.items():
        if name in given:
            try:
                values[name] = _convert(tp, given[name])
            except TableError as exc:
                problems.extend(exc.under(name).problems)
        elif required:
            problems.append(((name,), "required key is missing"))
    problems.extend(((key,), "unknown key") for key in given if key not in declared)
    if problems:
        raise TableError(problems)
    return values


def _checked(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    """The dataclass ``__init__`` behind conversion: a table is never built unchecked."""

    def __init__(self: Any, **given: Any) -> None:
        _apply(lambda values: init(self, **values), _converted(cls, given))

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = init.__doc__
    return __init__


def _plain(value: Any, exclude_none: bool) -> Any:
    if isinstance(value, Table):
        return value.as_dict(exclude_none=exclude_none)
    if isinstance(value, list | tuple):
        return [_plain(item, exclude_none) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item, exclude_none) for key, item in value.items()}
    return value


@dataclass_transform(kw_only_default=True, frozen_default=True)
class Table:
    """Base of every config table: a frozen, keyword-only dataclass built by ``parse``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True, kw_only=True)(cls)
        cls.__init__ = _checked(cls, cls.__init__)  # type: ignore[method-assign]

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> Self:
        """Convert and check ``table``; TableError naming every problem otherwise."""
        if bad := [key for key in table if not isinstance(key, str)]:
            raise TableError([((str(key),), "keys must be strings") for key in bad])
        return cls(**table)

    def as_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """The fields as plain values (nested tables as dicts), optionally without Nones."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not (exclude_none and value is None):
                out[f.name] = _plain(value, exclude_none)
        return out
