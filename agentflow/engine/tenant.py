"""One tenant's view of an engine.

Every call is scoped by the tenant id, down to the store's queries (every row carries it),
so a tenant sees, resumes and decides only its own runs, and its plans can call only the
engine's shared tools and the tools registered for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from agentflow.engine import forks, replay, subplans
from agentflow.engine.loading import Compiled, compile_any, load_plan
from agentflow.engine.policy import OnLimit, Policy
from agentflow.engine.registry import PlanRegistry, parse_reference
from agentflow.engine.replay import DryRun
from agentflow.engine.results import Pending, RunResult
from agentflow.errors import PlanMismatch, RunLeased
from agentflow.store import FINISHED_STATUSES, JournalEntry, RunRecord
from agentflow.tools import Tool, tool_registry

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine, ToolsArg


class Tenant:
    """`engine.tenant("acme")`: the engine's API bound to one tenant and its tools."""

    def __init__(self, engine: Engine, tenant_id: str, tools: ToolsArg = None) -> None:
        if not isinstance(tenant_id, str) or not tenant_id.strip():
            raise ValueError(f"a tenant id must be a non-empty string, not {tenant_id!r}")
        self.engine = engine
        self.id = tenant_id
        self.tools = tool_registry(tools)
        self.plans = PlanRegistry(self)
        self.runs = TenantRuns(self)

    def __repr__(self) -> str:
        return f"Tenant({self.id!r}, tools={sorted(self.tools)})"

    def register(self, *tools: Tool | Callable[..., Any]) -> None:
        """Make tools callable by this tenant's plans (and by no other tenant's)."""
        self.tools.update(tool_registry(tools))

    def _tools(self, tools: ToolsArg) -> list[Tool]:
        return list({**self.tools, **tool_registry(tools)}.values())

    def registry(self) -> dict[str, Tool]:
        """The tools this tenant's plans may call: the engine's shared ones and its own, as
        its policy allows them (and with the approval gates it adds)."""
        return self.current_policy().tools({**self.engine.tools, **self.tools})

    def policy(self, *, allowed_tools: Iterable[str] | None = None,
               requires_approval: Iterable[str] = (), max_steps: int | None = None,
               max_tool_calls: int | None = None, max_concurrent_runs: int | None = None,
               budget: Mapping[str, float] | None = None,
               on_limit: OnLimit = "fail") -> Policy:
        """Set the tenant's policy, kept in the store (it replaces the previous one):
        `allowed_tools` (None: all of its tools), the tools that need a human's approval
        before each call, the most steps that call tools and distinct tool calls a run may
        make, the most runs executing at once, and a run's `budget` (`llm_tokens`,
        `cost_usd`, counted from results and `ctx.charge`). A call that would pass a limit
        is never made: its step fails with `BudgetExceeded`, or with `on_limit="approval"`
        waits for a person's approval to go past the limit. Returns it."""
        chosen = Policy.build(allowed_tools=allowed_tools, requires_approval=requires_approval,
                              max_steps=max_steps, max_tool_calls=max_tool_calls,
                              max_concurrent_runs=max_concurrent_runs, budget=budget,
                              on_limit=on_limit)
        self.engine.store.put_policy(self.id, chosen.to_json())
        return chosen

    def current_policy(self) -> Policy:
        """The tenant's policy as the store has it (no limits if it never set one)."""
        return Policy.from_json(self.engine.store.get_policy(self.id))

    def validate(self, plan: Any, *, name: str | None = None) -> Compiled:
        """Validate a plan as executing it would: against the tenant's tools, registered
        plans (a plan step's inputs against the child's schema; no cycle of sub-plans back
        to `name`) and policy (`PlanValidationError` listing every issue). Writes nothing."""
        data = load_plan(plan)
        compiled = self.compile(data)
        subplans.check_cycles(self.engine, self.id, name, data)
        self.current_policy().check_plan(compiled)
        return compiled

    def compile(self, data: Any) -> Compiled:
        """Plan data compiled against the tenant's tools and the plans it may run as
        sub-plans (`PlanValidationError`)."""
        return compile_any(data, {**self.registry(),
                                  **subplans.plan_tools(self.engine, self.id, data)})

    def resolve(self, plan: Any) -> Any:
        """Plan data from what a user passes: a registered name ("release",
        "release@<version>"), or anything `load_plan` reads."""
        reference = parse_reference(plan) if isinstance(plan, str) else None
        return load_plan(plan) if reference is None else self.plans.get(*reference)

    def dry_run(self, plan: Any, *, against: str) -> DryRun:
        """Replay `plan` against run `against`'s journal without calling any tool: which
        recorded calls it replays, which calls would run, the waits it would stop at, and
        the first recorded call it no longer makes the same way (see `DryRun`)."""
        return replay.dry_run(self, plan, against)

    def migrate(self, run_id: str, *, to: str) -> DryRun:
        """Move an unfinished run of a registered plan to version `to` (a version or a
        prefix) of that plan, once a dry run shows the new plan replays the run's journal;
        refused with `PlanMismatch` naming the first mismatch otherwise (nothing changed)."""
        return replay.migrate(self, run_id, to)

    def fork(self, run_id: str, *, at_step: str, results: Mapping[str, Any] | None = None,
             new_run_id: str | None = None, **options: Any) -> RunResult:
        """A new run of a run's plan and inputs that reuses the journal of what depends
        neither on `at_step` nor on an edited result, takes `results` (step, or a code
        plan's call position -> output) as those outputs, and executes the rest now
        (options as `resume`). See `agentflow.engine.forks` for what "depends" means for a
        step graph and for a code plan."""
        fork_id = forks.fork(self, run_id, at_step=at_step, results=results or {},
                             new_run_id=new_run_id)
        return self.resume(fork_id, **options)

    def execute(self, plan: Any, *, tools: ToolsArg = None,
                inputs: dict[str, Any] | None = None, run_id: str | None = None,
                **options: Any) -> RunResult:
        """`Engine.execute` for this tenant (options: max_concurrency, observer, limits,
        budget). `plan` may also be the name of a registered plan ("release", or
        "release@<version>"): the run is pinned to the version current now, and records
        the name. The `run_id` of an existing run continues it with its own version."""
        reference = parse_reference(plan) if isinstance(plan, str) else None
        if reference is not None:
            name, version = reference
            existing = None if run_id is None else self.engine.store.get_run(self.id, run_id)
            if existing is not None:
                if existing.plan_name != name:
                    raise PlanMismatch(f"run {run_id!r} was not started from plan {name!r}")
                plan = self.engine.plan_data_of(run_id or "", tenant=self.id)
            else:
                plan = self.plans.get(name, version)
                options["plan_name"] = name
        result = self.engine.execute(plan, tools=self._tools(tools), inputs=inputs,
                                     run_id=run_id, tenant=self.id, **options)
        return self._run_children(result, tools, options)

    def resume(self, run_id: str, *, tools: ToolsArg = None, **options: Any) -> RunResult:
        """`Engine.resume` for this tenant; the sub-plans the run waits for that can go on
        (due, or orphaned) are resumed first, and the run again once one of them ended."""
        result = self.engine.resume(run_id, tools=self._tools(tools), tenant=self.id,
                                    **options)
        return self._run_children(result, tools, options)

    def _run_children(self, result: RunResult, tools: ToolsArg,
                      options: dict[str, Any]) -> RunResult:
        """Drive a waiting run's child runs here, so that `execute` and `resume` take a
        run with sub-plans as far as it can go, as they do a run without."""
        options = {k: v for k, v in options.items() if k in ("max_concurrency", "observer")}
        while result.status == "waiting":
            ended = moved = False
            for child in subplans.children(self.engine.store, self.id, result.run_id):
                due = child.wake_at is not None and child.wake_at <= time.time()
                if child.status == "running" or (child.status == "waiting" and due):
                    with suppress(RunLeased):
                        moved = True
                        ended |= self.resume(child.run_id, tools=tools,
                                             **options).status in FINISHED_STATUSES
            if not ended:  # what the children now wait for shows on the run
                return self.get_run(result.run_id) if moved else result
            result = self.engine.resume(result.run_id, tools=self._tools(tools),
                                        tenant=self.id, **options)
        return result

    def approve(self, run_id: str, pending_id: str, *, by: str, comment: str | None = None,
                args: dict[str, Any] | None = None) -> Pending:
        return self.engine.approve(run_id, pending_id, by=by, comment=comment, args=args,
                                   tenant=self.id)

    def reject(self, run_id: str, pending_id: str, *, by: str,
               reason: str | None = None) -> Pending:
        return self.engine.reject(run_id, pending_id, by=by, reason=reason, tenant=self.id)

    def send_event(self, run_id: str, name: str, payload: Any = None) -> int:
        return self.engine.send_event(run_id, name, payload, tenant=self.id)

    def cancel(self, run_id: str, *, reason: str = "cancelled") -> RunResult:
        return self.engine.cancel(run_id, reason=reason, tenant=self.id)

    def run_due(self, *, limit: int = 100) -> list[RunResult]:
        """Resume this tenant's due runs with its tools."""
        return self.engine.run_due(tools=self._tools(None), limit=limit, tenant=self.id)

    def get_run(self, run_id: str) -> RunResult:
        return self.engine.get_run(run_id, tenant=self.id)

    def list_runs(self, *, status: str | None = None, limit: int = 100,
                  plan: str | None = None) -> list[RunRecord]:
        """The tenant's runs, newest first; `plan`: only those started by that name."""
        return self.engine.list_runs(tenant=self.id, status=status, limit=limit,
                                     plan_name=plan)

    def prune(self, *, older_than: timedelta | float,
              status: str | Iterable[str] = ("cancelled", "completed", "failed"),
              dry_run: bool = False) -> list[tuple[str, str]]:
        """`Engine.prune` for this tenant's runs only."""
        return self.engine.prune(older_than=older_than, status=status, tenant=self.id,
                                 dry_run=dry_run)

    def journal(self, run_id: str) -> list[JournalEntry]:
        return self.engine.journal(run_id, tenant=self.id)


class TenantRuns:
    """`tenant.runs`: reading the tenant's runs."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant

    def get(self, run_id: str) -> RunResult:
        return self.tenant.get_run(run_id)

    def list(self, *, status: str | None = None, plan: str | None = None,
             limit: int = 100) -> list[RunRecord]:
        return self.tenant.list_runs(status=status, plan=plan, limit=limit)
