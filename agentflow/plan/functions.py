"""The functions of the expression language, and the limits that keep them cheap.

Expressions come from untrusted plans, and `format`, `join` and `toJSON` build text whose
size is not bounded by the expression's: every string a function builds is refused past
`MAX_TEXT` characters, before it is built where that can be known in advance. `fromJSON`
reads at most `MAX_TEXT` characters. Every function is linear in the size of its arguments.

Text forms (`format`, `join`, `startsWith`, ...): a string as it is, null as '', true and
false, numbers as JSON writes them, lists and objects as compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

MAX_TEXT = 100_000
"""Longest string a function may build (or `fromJSON` may read), in characters."""


class FunctionFailure(ValueError):
    """A function cannot take its arguments; the evaluator adds the expression and where."""


class Function(NamedTuple):
    """A function's arity (most: None = any number), its body and its result's JSON types
    (None: any)."""

    least: int
    most: int | None
    call: Callable[[list[Any]], Any]
    types: frozenset[str] | None


def text_of(value: Any) -> str:
    """The text form of a value (see the module docstring)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _bounded(size: int, what: str) -> None:
    if size > MAX_TEXT:
        raise FunctionFailure(f"{what} would be {size:,} characters, more than the limit of "
                              f"{MAX_TEXT:,}")


def _starts_with(args: list[Any]) -> bool:
    return text_of(args[0]).casefold().startswith(text_of(args[1]).casefold())


def _ends_with(args: list[Any]) -> bool:
    return text_of(args[0]).casefold().endswith(text_of(args[1]).casefold())


def _contains(args: list[Any]) -> bool:
    """A list holds an equal item (strings compared without case), or a text holds a
    substring (without case)."""
    container, item = args
    if isinstance(container, list):
        if isinstance(item, str):
            folded = item.casefold()
            return any(isinstance(x, str) and x.casefold() == folded for x in container)
        return any(x == item and type(x) is type(item) for x in container)
    return text_of(item).casefold() in text_of(container).casefold()


def _format(args: list[Any]) -> str:
    """`format('{0} of {1}', a, b)`; `{{` and `}}` are literal braces."""
    template = args[0]
    if not isinstance(template, str):
        raise FunctionFailure("format() takes a string first")
    values = [text_of(value) for value in args[1:]]
    parts: list[str] = []
    size = 0
    index = 0
    while index < len(template):
        char = template[index]
        if char in "{}" and template[index + 1: index + 2] == char:
            piece, index = char, index + 2
        elif char == "{":
            close = template.find("}", index)
            number = template[index + 1: close] if close > 0 else ""
            if not number.isdigit() or len(number) > 6 or int(number) >= len(values):
                raise FunctionFailure(f"format(): {template[index: index + 12]!r} names no "
                                      f"argument (there are {len(values)})")
            piece, index = values[int(number)], close + 1
        elif char == "}":
            raise FunctionFailure("format(): a lone '}' (write '}}' for a brace)")
        else:
            end = min((i for i in (template.find("{", index), template.find("}", index))
                       if i >= 0), default=len(template))
            piece, index = template[index:end], end
        size += len(piece)
        _bounded(size, "format()'s result")
        parts.append(piece)
    return "".join(parts)


def _join(args: list[Any]) -> str:
    items, separator = args[0], text_of(args[1]) if len(args) > 1 else ","
    if not isinstance(items, list):
        return text_of(items)
    texts = [text_of(item) for item in items]
    _bounded(sum(map(len, texts)) + len(separator) * max(0, len(texts) - 1), "join()'s result")
    return separator.join(texts)


def _length(args: list[Any]) -> int:
    value = args[0]
    if value is None:
        return 0
    if isinstance(value, str | list | Mapping):
        return len(value)
    raise FunctionFailure(f"length() takes a string, a list or an object, not "
                          f"{type(value).__name__}")


def _to_json(args: list[Any]) -> str:
    try:
        text = json.dumps(args[0], ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        raise FunctionFailure(f"toJSON(): {error}") from None
    _bounded(len(text), "toJSON()'s result")
    return text


def _from_json(args: list[Any]) -> Any:
    text = args[0]
    if not isinstance(text, str):
        raise FunctionFailure("fromJSON() takes a string")
    _bounded(len(text), "fromJSON()'s text")
    try:
        return json.loads(text)
    except RecursionError:
        raise FunctionFailure("fromJSON(): the text is nested too deeply") from None
    except ValueError as error:
        raise FunctionFailure(f"fromJSON(): not JSON: {error}") from None


def _coalesce(args: list[Any]) -> Any:
    return next((value for value in args if value is not None), None)


_BOOLEAN = frozenset({"boolean"})
_STRING = frozenset({"string"})

FUNCTIONS: dict[str, Function] = {
    "startsWith": Function(2, 2, _starts_with, _BOOLEAN),
    "endsWith": Function(2, 2, _ends_with, _BOOLEAN),
    "contains": Function(2, 2, _contains, _BOOLEAN),
    "format": Function(1, None, _format, _STRING),
    "join": Function(1, 2, _join, _STRING),
    "length": Function(1, 1, _length, frozenset({"integer"})),
    "toJSON": Function(1, 1, _to_json, _STRING),
    "fromJSON": Function(1, 1, _from_json, None),
    "coalesce": Function(1, None, _coalesce, None),  # the union of its arguments' types
}
"""The value functions, by the name an expression calls them with."""
