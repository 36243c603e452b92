"""What plan code sees of built-in values: the attributes it may use, per type, with the
guard each goes through (`ValueGuards.method` in `agentflow.sandbox.guards`), and
`PlanFunction`, the face of a guarded built-in function or method."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from types import GeneratorType, MappingProxyType
from typing import Any

from agentflow.sandbox.shown import argument_error

# Objects (other than built-in values) whose public attributes plan code may read.
_OPEN_TYPES = (BaseException, datetime.date, datetime.time, datetime.timedelta,
               datetime.tzinfo)


def _kinds(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


# Attributes plan code may use, per built-in type, with the guard each goes through (see
# `_Execution.method`): "plain" methods only have their result checked for size.
_TEXT_METHODS = ("count endswith find index isalnum isalpha isascii isdigit islower isspace "
                 "istitle isupper lower lstrip partition removeprefix removesuffix rfind rindex "
                 "rpartition rsplit rstrip split splitlines startswith strip swapcase title upper")
_TEXT_GUARDS = {**_kinds("pad", "center ljust rjust zfill"), "expandtabs": "expandtabs",
                "replace": "replace", "join": "join"}
_SET_OPERATIONS = ("difference intersection isdisjoint issubset issuperset symmetric_difference "
                   "union")
_ATTRIBUTES: dict[type, dict[str, str]] = {
    str: {**_kinds("plain", _TEXT_METHODS + " capitalize casefold encode isdecimal "
                   "isidentifier isnumeric isprintable"),
          **_TEXT_GUARDS, "format": "format", "format_map": "format_map"},
    bytes: {**_kinds("plain", _TEXT_METHODS + " decode hex"), **_TEXT_GUARDS},
    list: {**_kinds("plain", "append clear copy count index insert pop remove reverse sort"),
           "extend": "extend"},
    tuple: _kinds("plain", "count index"),
    dict: {**_kinds("plain", "clear copy items keys popitem values"),
           **_kinds("key", "get pop setdefault"), "update": "consume",
           "fromkeys": "consume_first"},
    set: {**_kinds("plain", "clear copy pop"), **_kinds("key", "add discard remove"),
          **_kinds("consume", _SET_OPERATIONS + " update difference_update "
                   "intersection_update symmetric_difference_update")},
    frozenset: {"copy": "plain", **_kinds("consume", _SET_OPERATIONS)},
    int: _kinds("plain", "as_integer_ratio bit_count bit_length conjugate denominator imag "
                "numerator real"),
    float: _kinds("plain", "as_integer_ratio conjugate hex imag is_integer real"),
    complex: _kinds("plain", "conjugate imag real"),
    range: _kinds("plain", "count index start step stop"),
    MappingProxyType: {**_kinds("plain", "copy items keys values"), "get": "key"},
    GeneratorType: _kinds("plain", "close"),
}


def _attributes_of(cls: type) -> dict[str, str] | None:
    """The allow-list of the nearest built-in base class of `cls`, if it has one."""
    for base in cls.__mro__:
        if base in _ATTRIBUTES:
            return _ATTRIBUTES[base]
    return None


class PlanFunction:
    """A function handed to plan code: it calls through, and its repr names nothing inside."""

    __slots__ = ("_call", "_name", "_text")

    def __init__(self, call: Callable[..., Any], text: str, name: str | None = None) -> None:
        self._call = call
        self._text = text
        self._name = name  # a host function's name for plan code (None: the plan's own)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._call(*args, **kwargs)
        except TypeError as error:
            if self._name is None:
                raise
            raise argument_error(error, self._name, self._call, args, kwargs) from None

    def __repr__(self) -> str:
        return self._text


def plan_builtin(name: str, function: Callable[..., Any]) -> PlanFunction:
    return PlanFunction(function, f"<built-in function {name}>", name)
