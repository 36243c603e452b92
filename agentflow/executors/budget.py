"""A run's budget: checked before each call, so a call that would pass a limit is not made.

Limits: model tokens (`llm_tokens`), money (`cost_usd`), distinct tool calls (`tool_calls`;
a retry is the same call) and distinct steps that call tools (`steps`; a foreach step is
one step, a code plan's calls are one step each). What was spent is not a counter of its
own: calls and steps are counted from the journal's intents, tokens from the journaled
results of token-spending tools, and what tools report with `ctx.charge(...)` from the
store's charge rows, written while the tool runs. So every count survives a SIGKILL
exactly as the journal does. Token and cost limits hold back only the tools that can spend:
model tools, and tools that take a `ToolContext` (and so may `charge`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agentflow.errors import BudgetExceeded
from agentflow.executors.journal import RunJournal
from agentflow.plan.models import ApprovalSpec
from agentflow.tools import Tool

LIMIT_SUFFIX = "@limit"
"""The journal key suffix of an approval to let a call go past a limit."""
LIMIT_GATE = ApprovalSpec(prompt="", on_reject="fail")
"""The approval a call past a limit waits for under `on_limit="approval"`."""
TOKENS = "llm_tokens"
COST = "cost_usd"
TOOL_CALLS = "tool_calls"
STEPS = "steps"
BUDGET_KEYS = (TOKENS, COST, TOOL_CALLS)
"""What the `budget=` option of a run may limit (a tenant's policy also limits steps)."""


def step_of(key: str) -> str:
    """The step a call position belongs to: `test[3]` -> `test`."""
    return key.split("[", 1)[0]


class Budget:
    """The limits a run executes under, and what its journal and charges say it spent."""

    def __init__(self, limits: Mapping[str, Any] | None, journal: RunJournal,
                 tools: Mapping[str, Tool]) -> None:
        self.limits: dict[str, float] = {k: v for k, v in (limits or {}).items()
                                         if v is not None}
        self.journal = journal
        self.run_id = journal.run_id
        self._lock = threading.Lock()
        self.spent = 0
        self.calls = {key for key, record in journal.records.items() if record.attempts > 0}
        self.steps = {step_of(key) for key in self.calls}
        for record in journal.records.values():
            tool = tools.get(record.tool or "")
            if tool is not None and tool.spends_tokens and record.status == "succeeded":
                self.spent += tool.tokens_spent(record.output)
        self.on_limit = "fail"  # or "approval": a call past a limit waits for a person
        self.allowed = {key.removesuffix(LIMIT_SUFFIX) for key, record in journal.records.items()
                        if key.endswith(LIMIT_SUFFIX)
                        and (record.decision or {}).get("approved") is True}
        self.cost = 0.0
        if COST in self.limits or TOKENS in self.limits:
            tokens, self.cost = journal.store.charged(journal.tenant_id, journal.run_id)
            self.spent += tokens

    @property
    def limit(self) -> float | None:
        """The token limit (None: unlimited)."""
        return self.limits.get(TOKENS)

    def check(self, tool: Tool, args: Mapping[str, Any], key: str) -> None:
        """`BudgetExceeded` if the call could take the run past a limit; otherwise the call
        is counted."""
        if not self.limits:
            return  # nothing to count against
        with self._lock:
            step = step_of(key)
            if key in self.allowed:  # a person let this call go past the limit
                self.calls.add(key)
                self.steps.add(step)
                return
            if key not in self.calls:
                self._refuse_count(key, TOOL_CALLS, len(self.calls))
                if step not in self.steps:
                    self._refuse_count(key, STEPS, len(self.steps))
            can_spend = tool.spends_tokens or tool.context_param is not None
            cost_limit = self.limits.get(COST)
            if cost_limit is not None and can_spend and self.cost >= cost_limit:
                raise BudgetExceeded(self.run_id, key, COST, cost_limit, self.cost, None)
            token_limit = self.limits.get(TOKENS)
            if token_limit is not None and can_spend:
                needed = tool.token_limit(args) if tool.spends_tokens else None
                if self.spent >= token_limit or (needed is not None
                                                 and self.spent + needed > token_limit):
                    raise BudgetExceeded(self.run_id, key, TOKENS, token_limit, self.spent,
                                         needed)
            self.calls.add(key)
            self.steps.add(step)

    def allow(self, key: str) -> None:
        """Let the call at `key` go past the limits (its approval was granted)."""
        with self._lock:
            self.allowed.add(key)
            self.calls.add(key)
            self.steps.add(step_of(key))

    def _refuse_count(self, key: str, resource: str, used: int) -> None:
        limit = self.limits.get(resource)
        if limit is not None and used + 1 > limit:
            raise BudgetExceeded(self.run_id, key, resource, limit, used, 1)

    def charge(self, tool: Tool, result: Any) -> None:
        if tool.spends_tokens:
            with self._lock:
                self.spent += tool.tokens_spent(result)

    def charger(self, key: str, attempt: int) -> Callable[[int, float], None]:
        """What `ctx.charge` of one call attempt calls: it adds to the run's spending and
        stores the attempt's running total at once (idempotent, so a crash loses nothing)."""
        totals = [0, 0.0]

        def charge(tokens: int, cost_usd: float) -> None:
            with self._lock:
                totals[0] += tokens
                totals[1] += cost_usd
                self.spent += tokens
                self.cost += cost_usd
                tokens_total, cost_total = int(totals[0]), float(totals[1])
            store = self.journal.store
            store.put_charge(self.journal.tenant_id, self.run_id, key, attempt, tokens_total,
                             cost_total)
        return charge


def check_budget_option(budget: Any) -> dict[str, float] | None:
    """The `budget=` argument of execute_plan (`llm_tokens`, `cost_usd`, `tool_calls`),
    checked before anything is written."""
    if budget is None:
        return None
    if not isinstance(budget, Mapping) or not budget or set(budget) - set(BUDGET_KEYS):
        raise ValueError(f"budget must be a mapping with some of the keys "
                         f"{', '.join(BUDGET_KEYS)}, not {budget!r}")
    checked: dict[str, float] = {}
    for key, limit in budget.items():
        whole = key != COST
        if isinstance(limit, bool) or not isinstance(limit, int if whole else int | float) \
                or not math.isfinite(limit) or limit < 0:
            kind = "a whole number" if whole else "a finite number"
            raise ValueError(f"budget[{key!r}] must be {kind} >= 0, not {limit!r}")
        checked[key] = limit
    return checked
