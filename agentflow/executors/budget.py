"""A run's token budget: checked before each call of a tool that spends tokens.

What was spent is not a counter of its own: it is summed from the journaled results of the
run's token-spending calls, so it survives a SIGKILL exactly as the results do.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from agentflow.errors import BudgetExceeded
from agentflow.executors.journal import RunJournal
from agentflow.tools import Tool

TOKENS = "llm_tokens"


class Budget:
    """The limits a run was started with, and what its journal says it spent."""

    def __init__(self, limits: Mapping[str, Any] | None, journal: RunJournal,
                 tools: Mapping[str, Tool]) -> None:
        self.limit: int | None = None if not limits else limits.get(TOKENS)
        self.run_id = journal.run_id
        self._lock = threading.Lock()
        self.spent = 0
        for record in journal.records.values():
            tool = tools.get(record.tool or "")
            if tool is not None and tool.spends_tokens and record.status == "succeeded":
                self.spent += tool.tokens_spent(record.output)

    def check(self, tool: Tool, args: Mapping[str, Any], key: str) -> None:
        """`BudgetExceeded` if the call could take the run past its limit."""
        if self.limit is None or not tool.spends_tokens:
            return
        needed = tool.token_limit(args)
        with self._lock:
            if self.spent >= self.limit or (needed is not None
                                            and self.spent + needed > self.limit):
                raise BudgetExceeded(self.run_id, key, TOKENS, self.limit, self.spent, needed)

    def charge(self, tool: Tool, result: Any) -> None:
        if tool.spends_tokens:
            with self._lock:
                self.spent += tool.tokens_spent(result)


def check_budget_option(budget: Any) -> dict[str, int] | None:
    """The `budget=` argument of execute_plan, checked before anything is written."""
    if budget is None:
        return None
    if not isinstance(budget, Mapping) or set(budget) - {TOKENS}:
        raise ValueError(f"budget must be a mapping with the key {TOKENS!r}, not {budget!r}")
    limit = budget.get(TOKENS)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"budget[{TOKENS!r}] must be a whole number >= 0, not {limit!r}")
    return {TOKENS: limit}
