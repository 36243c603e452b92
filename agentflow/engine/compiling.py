"""Validated plans, compiled once per plan and tools: starting a thousand runs of one plan
validates it once.

Compiling is pure (`plan/` does no I/O and reads no clock), so a compiled plan depends only
on the plan's content and on the tools it was checked against. The cache is keyed by the
plan's canonical JSON (a code plan: its source and name) and holds the exact tool objects
it was compiled with: a plan checked against other tool objects (even of the same names) is
compiled again. A plan that fails validation is never cached: each attempt raises anew.

Stored plan rows are also kept by their text (`compile_stored`): a worker that executes a
thousand runs of one plan parses, measures and encodes its row once, not once per run.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentflow.engine.loading import Compiled, check_plan_size, compile_any, plan_data
from agentflow.plan.code import CodePlan
from agentflow.store import StoredPlan
from agentflow.tools import Tool


def _key(plan: Any) -> str | None:
    """The plan's content as a cache key; None for what is not plain JSON data (or is
    nested too deeply to encode: validation then says so)."""
    if isinstance(plan, CodePlan):
        return json.dumps(["code", plan.source, plan.name])
    if not isinstance(plan, dict):
        return None
    try:
        return json.dumps(plan, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


class CompiledPlans:
    """The last `size` plans compiled, by content and tools (thread-safe)."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[dict[str, Tool], Compiled]] = OrderedDict()
        # (tenant, kind, body) of a stored plan row that added no tools -> its compile.
        self._rows: OrderedDict[tuple[str, str, str],
                                tuple[dict[str, Tool], Compiled]] = OrderedDict()
        self._lock = threading.Lock()

    def compile_stored(self, stored: StoredPlan, registry: dict[str, Tool],
                       extra: Callable[[Any], dict[str, Tool]]) -> tuple[Compiled, Any]:
        """(the stored plan compiled with `registry` and the tools `extra(data)` adds for
        it, its data or None): a row whose text was compiled before with these tools, and
        to which `extra` added none (it names no sub-plan: one it named would add a tool,
        or fail to compile), is not parsed again (its data is then None). `CorruptRow` if
        the row cannot be read."""
        key = (stored.tenant_id, stored.kind, stored.body)
        with self._lock:
            hit = self._rows.get(key)
            if hit is not None and _same_tools(hit[0], registry):
                self._rows.move_to_end(key)
                return hit[1], None
        data = plan_data(stored)
        added = extra(data)
        compiled = self.compile(data, {**registry, **added})
        if not added:
            with self._lock:
                self._rows[key] = (dict(registry), compiled)
                self._rows.move_to_end(key)
                while len(self._rows) > self.size:
                    self._rows.popitem(last=False)
        return compiled, data

    def compile(self, plan: Any, tools: dict[str, Tool], *, checked: bool = False) -> Compiled:
        """The compiled plan, from the cache when it holds it. `checked`: `load_plan` just
        gave `plan`, so it is within its size limits (not measured again)."""
        if not checked:
            check_plan_size(plan)  # before its key is written out as text
        key = _key(plan)
        if key is None:
            return compile_any(plan, tools, checked=True)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and _same_tools(hit[0], tools):
                self._entries.move_to_end(key)
                return hit[1]
        compiled = compile_any(plan, tools, checked=True)
        with self._lock:
            self._entries[key] = (dict(tools), compiled)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return compiled


def _same_tools(cached: dict[str, Tool], tools: dict[str, Tool]) -> bool:
    return cached.keys() == tools.keys() and all(cached[n] is tools[n] for n in tools)
