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


def value_size(value: Any, limits: Limits, where: str, what: str) -> int:
    """The size of `value` as compact JSON text in UTF-8 bytes (escapes aside), or
    `LimitExceeded` naming `what` and `where` as soon as it passes `max_value_bytes` or
    `max_value_depth`. Shared parts count each time they appear, as in the JSON text."""
    budget = limits.max_value_bytes
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, str):
            # characters never outnumber bytes: a long string is refused before encoding
            total += len(current) + 2 if len(current) > budget else \
                len(current.encode("utf-8", "surrogatepass")) + 2
        elif isinstance(current, dict | list):
            if depth >= limits.max_value_depth:
                raise LimitExceeded("max_value_depth", limits.max_value_depth, where,
                                    f"{what}: nested more than {limits.max_value_depth} "
                                    "levels")
            commas = max(len(current) - 1, 0)
            total += 2 + commas + (len(current) if isinstance(current, dict) else 0)
            if total <= budget:
                if isinstance(current, dict):
                    stack.extend((key, depth + 1) for key in current)
                    stack.extend((item, depth + 1) for item in current.values())
                else:
                    stack.extend((item, depth + 1) for item in current)
        elif current is None or current is True:
            total += 4
        elif current is False:
            total += 5
        else:
            total += len(repr(current))
        if total > budget:
            raise LimitExceeded("max_value_bytes", budget, where,
                                f"{what}: more than {budget} bytes of JSON")
    return total
