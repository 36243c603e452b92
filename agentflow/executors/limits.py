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
    scalar or a flat object: no stack for them); containers wait on a stack."""
    budget = limits.max_value_bytes
    total = _scalar_size(value, budget)
    if total is not None:
        if total > budget:
            raise _too_large(budget, where, what)
        return total
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if not isinstance(current, _CONTAINERS if floor else (dict, list)):
            total += 0 if floor else _other_size(current, budget)
        else:
            if depth >= limits.max_value_depth:
                raise LimitExceeded("max_value_depth", limits.max_value_depth, where,
                                    f"{what}: nested more than {limits.max_value_depth} "
                                    "levels")
            commas = max(len(current) - 1, 0)
            total += 2 + commas
            items: Iterable[Any] = current
            if isinstance(current, dict):
                total += len(current)
                items = itertools.chain(current, current.values())
            for item in items:
                if total > budget:
                    break
                size = _scalar_size(item, budget)
                if size is not None:
                    total += size
                elif not floor or isinstance(item, _CONTAINERS):
                    stack.append((item, depth + 1))
        if total > budget:
            raise _too_large(budget, where, what)
    return total


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _scalar_size(value: Any, budget: int) -> int | None:
    """The JSON size of a str, int, float, bool or None (exactly those types), else None."""
    kind = type(value)
    if kind is str:
        # characters never outnumber bytes: a long string is refused before encoding
        return len(value) + 2 if len(value) > budget else \
            len(value.encode("utf-8", "surrogatepass")) + 2
    if kind is int or kind is float:
        return len(repr(value))
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    return None


def _other_size(value: Any, budget: int) -> int:
    """The size of what is not a container nor a scalar of an exact type (a subclass)."""
    if isinstance(value, str):
        return len(value) + 2 if len(value) > budget else \
            len(value.encode("utf-8", "surrogatepass")) + 2
    return len(repr(value))


def _too_large(budget: int, where: str, what: str) -> LimitExceeded:
    return LimitExceeded("max_value_bytes", budget, where,
                         f"{what}: more than {budget} bytes of JSON")
