"""A tenant's policy: which tools its plans may call, which need a human's approval, and
the limits every run of the tenant executes under. Kept in the store (one JSON document per
tenant), so it holds in every process and across restarts, and read at each execution, so
a changed policy applies to waiting runs when they resume.

A policy only ever makes things stricter: it removes tools, adds approval gates (a tool's
own `requires_approval` still applies), and lowers limits (the smaller of a run's own
`budget=` and the policy's wins).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from agentflow.engine.loading import Compiled
from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.executors.budget import COST, STEPS, TOKENS, TOOL_CALLS
from agentflow.plan import CompiledPlan
from agentflow.plan.code import CodePlan
from agentflow.sandbox.outline import certain_tool_calls
from agentflow.tools import Tool

POLICY_BUDGET_KEYS = (TOKENS, COST)
OnLimit = Literal["fail", "approval"]
"""What a call that would pass a limit does: fail its step, or wait for a person's approval
to go past the limit (a step graph's step, or a code plan's call, waits)."""


@dataclass(frozen=True)
class Policy:
    """`tenant.policy(...)`: see the module docstring. None means no limit."""

    allowed_tools: frozenset[str] | None = None
    requires_approval: frozenset[str] = frozenset()
    max_steps: int | None = None
    max_tool_calls: int | None = None
    max_concurrent_runs: int | None = None
    budget: Mapping[str, float] = field(default_factory=dict)
    on_limit: OnLimit = "fail"

    @classmethod
    def build(cls, *, allowed_tools: Iterable[str] | None = None,
              requires_approval: Iterable[str] = (), max_steps: int | None = None,
              max_tool_calls: int | None = None, max_concurrent_runs: int | None = None,
              budget: Mapping[str, float] | None = None, on_limit: OnLimit = "fail") -> Policy:
        """A policy from the user's arguments, each checked (`ValueError` naming it)."""
        for name, value in (("max_steps", max_steps), ("max_tool_calls", max_tool_calls),
                            ("max_concurrent_runs", max_concurrent_runs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 or None, not {value!r}")
        if on_limit not in get_args(OnLimit):
            raise ValueError(f"on_limit must be 'fail' or 'approval', not {on_limit!r}")
        checked_budget: dict[str, float] = {}
        for key, limit in (budget or {}).items():
            if key not in POLICY_BUDGET_KEYS:
                raise ValueError(f"budget keys are {', '.join(POLICY_BUDGET_KEYS)}, not "
                                 f"{key!r}")
            if isinstance(limit, bool) or not isinstance(limit, int | float) \
                    or not math.isfinite(limit) or limit < 0 \
                    or (key == TOKENS and not isinstance(limit, int)):
                raise ValueError(f"budget[{key!r}] must be a number >= 0, not {limit!r}")
            checked_budget[key] = limit
        return cls(allowed_tools=None if allowed_tools is None else _names(
                       "allowed_tools", allowed_tools),
                   requires_approval=_names("requires_approval", requires_approval),
                   max_steps=max_steps, max_tool_calls=max_tool_calls,
                   max_concurrent_runs=max_concurrent_runs, budget=checked_budget,
                   on_limit=on_limit)

    def to_json(self) -> dict[str, Any]:
        return {"allowed_tools": None if self.allowed_tools is None
                else sorted(self.allowed_tools),
                "requires_approval": sorted(self.requires_approval),
                "max_steps": self.max_steps, "max_tool_calls": self.max_tool_calls,
                "max_concurrent_runs": self.max_concurrent_runs, "budget": dict(self.budget),
                "on_limit": self.on_limit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Policy:
        return cls() if not data else cls.build(**data)

    def tools(self, registry: Mapping[str, Tool]) -> dict[str, Tool]:
        """The tools a plan of the tenant may call, with the policy's approval gates."""
        return {name: dataclasses.replace(tool, requires_approval=True)
                if name in self.requires_approval and tool.requires_approval is not True
                else tool
                for name, tool in registry.items()
                if self.allowed_tools is None or name in self.allowed_tools}

    def limits(self, run_budget: Mapping[str, float] | None) -> dict[str, float]:
        """What a run may spend: the smaller of its own budget and the policy's."""
        limits = dict(run_budget or {})
        for key, limit in ((TOKENS, self.budget.get(TOKENS)), (COST, self.budget.get(COST)),
                           (TOOL_CALLS, self.max_tool_calls), (STEPS, self.max_steps)):
            if limit is not None:
                limits[key] = min(limit, limits.get(key, limit))
        return limits

    def check_plan(self, compiled: Compiled) -> None:
        """`PlanValidationError` for a plan that can only exceed `max_steps`: a step graph
        whose unconditional tool steps (no `when` of their own or above them), or a code
        plan whose certain tool calls (`certain_tool_calls`), are more than the policy
        allows, so no successful run could stay within it."""
        if self.max_steps is None:
            return
        if isinstance(compiled, CompiledPlan):
            certain: dict[str, bool] = {}
            for sid, step in compiled.steps.items():  # dependencies come first
                certain[sid] = step.step.when is None and all(
                    certain.get(dep, False) for dep in step.dependencies)
            calling = sum(step.step.tool is not None and certain[sid]
                          for sid, step in compiled.steps.items())
            where, what = "$.steps", "steps that call tools"
        else:
            calling = certain_tool_calls(CodePlan(compiled.source, compiled.name))
            where, what = "$.source", "tool calls (each a step)"
        if calling > self.max_steps:
            raise PlanValidationError([ValidationIssue(
                where, f"the plan always makes {calling} {what}, more than the tenant's "
                f"policy allows (max_steps={self.max_steps})", code="max_steps")])


def _names(what: str, names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a collection of tool names, not {names!r}")
    return frozenset(names)
