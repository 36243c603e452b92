"""The limits that keep one plan from exhausting the engine or the store.

A plan is data someone else wrote: three steps that each repeat the previous output a
thousand times turn a small plan into a gigabyte, and a foreach over a tool's result can
ask for a million calls. Each limit is checked before the work it bounds (a call, a journal
write), and a value is measured without building its JSON text, stopping as soon as it is
too large, so checking costs no more than the limit itself.

One `Limits` object holds every default; an `Engine(limits=...)` and each
`engine.tenant(id, limits=...)` may replace it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from agentflow.errors import LimitExceeded

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what a run may build and store. `None` turns a quota off."""

    max_value_bytes: int = 4 * MiB
    """Largest arguments of one call, or result of one call, as compact JSON (UTF-8)."""
    max_value_depth: int = 64
    """Deepest nesting of lists and objects in arguments and results."""
    max_foreach_items: int = 10_000
    """Most items a foreach step may call its tool for."""
    max_run_journal_bytes: int | None = 256 * MiB
    """Most journal data one run may store (arguments, results, errors, decisions)."""
    max_tenant_journal_bytes: int | None = None
    """Most journal data all runs of one tenant may store together."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            quota = item.name.endswith("journal_bytes")
            if (value is None and quota) or (
                    isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                continue
            raise ValueError(f"Limits.{item.name} must be a whole number >= 1"
                             f"{' or None' if quota else ''}, not {value!r}")


def value_size(value: Any, limits: Limits, where: str, what: str, *,
               floor: bool = False) -> int:
    """The size of `value` as compact JSON text in UTF-8 bytes (escapes aside), or
    `LimitExceeded` naming `what` and `where` as soon as it passes `max_value_bytes` or
    `max_value_depth`. Shared parts count each time they appear, as in the JSON text.

    `floor=True` measures what a value not yet converted to JSON data (a tool's result)
    will at least take once converted: tuples and sets as lists, other objects (models,
    subclasses) as nothing. So a result past the limits is refused before the work of
    converting it, which grows with its size, not with the limit.

    Scalars are measured where their container is read (most values of a step are a
    scalar or a flat object: no stack for them); containers wait on a stack.

    An int past Python's limit for int to text (`sys.get_int_max_str_digits()`, 4,300
    digits by default) cannot be written as JSON: `LimitExceeded` too, not the ValueError
    that measuring it raises."""
    try:
        return _measured(value, limits, where, what, floor)
    except ValueError as error:
        raise LimitExceeded("max_value_bytes", limits.max_value_bytes, where,
                            f"{what}: an integer too long to write as JSON ({error})") from None


def _measured(value: Any, limits: Limits, where: str, what: str, floor: bool) -> int:
    budget = limits.max_value_bytes
    total = _flat_size(value, budget) if type(value) is dict else _scalar_size(value, budget)
    if total is not None:
        if total > budget:
            raise _too_large(budget, where, what)
        return total
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    containers = _CONTAINERS if floor else (dict, list)
    max_depth = limits.max_value_depth
    while stack:
        current, depth = stack.pop()
        if not isinstance(current, containers):
            total += 0 if floor else _other_size(current, budget)
        else:
            if depth >= max_depth:
                raise LimitExceeded("max_value_depth", max_depth, where,
                                    f"{what}: nested more than {max_depth} levels")
            count = len(current)
            total += count + 1 if count else 2  # brackets and commas
            items: Iterable[Any] = current
            if isinstance(current, dict):
                total += count  # colons
                items = itertools.chain(current, current.values())
            for item in items:  # the scalars here (as `_scalar_size`), the rest stacked
                if total > budget:
                    break
                kind = type(item)
                if kind is str:
                    total += len(item) + 2 if item.isascii() else _text_size(item, budget)
                elif kind is int:
                    total += len(int.__repr__(item))
                elif item is None or item is True:
                    total += 4
                elif item is False:
                    total += 5
                elif kind is float:
                    total += len(float.__repr__(item))
                elif not floor or isinstance(item, _CONTAINERS):
                    stack.append((item, depth + 1))
        if total > budget:
            raise _too_large(budget, where, what)
    return total


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _flat_size(value: dict[Any, Any], budget: int) -> int | None:
    """`_scalar_size` of an object of str keys and scalar values (most arguments), without
    the stack; None for any other object. Stops once past `budget`."""
    total = 2 * len(value) + 1 if value else 2  # braces, colons and commas
    for key, item in value.items():
        if type(key) is not str:
            return None
        kind = type(item)
        if kind is int:
            size = len(int.__repr__(item))
        elif kind is str:
            size = len(item) + 2 if item.isascii() else _text_size(item, budget)
        elif item is None or item is True:
            size = 4
        elif item is False:
            size = 5
        elif kind is float:
            size = len(float.__repr__(item))
        else:
            return None
        total += size + (len(key) + 2 if key.isascii() else _text_size(key, budget))
        if total > budget:
            break
    return total


def _scalar_size(value: Any, budget: int) -> int | None:
    """The JSON size of a str, int, float, bool or None (exactly those types), else None."""
    kind = type(value)
    if kind is str:
        return _text_size(value, budget)
    if kind is int or kind is float:
        return len(repr(value))
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    return None


def _text_size(value: str, budget: int) -> int:
    """The JSON size of a string, escapes aside (an ASCII one has as many bytes as
    characters; characters never outnumber bytes: a long string is refused unencoded)."""
    if value.isascii() or len(value) > budget:
        return len(value) + 2
    return len(value.encode("utf-8", "surrogatepass")) + 2


def _other_size(value: Any, budget: int) -> int:
    """The size of what is not a container nor a scalar of an exact type (a subclass)."""
    if isinstance(value, str):
        return _text_size(value, budget)
    return len(repr(value))


def _too_large(budget: int, where: str, what: str) -> LimitExceeded:
    return LimitExceeded("max_value_bytes", budget, where,
                         f"{what}: more than {budget} bytes of JSON")
