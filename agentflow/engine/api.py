"""Module-level functions: the shortest way in. Each call uses a shared `Engine` for its
store (the `store=` argument, else `AGENTFLOW_STORE`, else ./agentflow.db) and its
`isolation` (where code-plan code runs: "process", the default, or "none" for trusted
code; see `Engine`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from agentflow.engine.engine import DEFAULT_TENANT, Engine, ToolsArg
from agentflow.engine.results import Pending, RunResult
from agentflow.executors.progress import Observer
from agentflow.sandbox import Isolation, SandboxLimits
from agentflow.store import Store

_engines: dict[tuple[str, str, Isolation], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(store: str | Store | None, isolation: Isolation = "process") -> Engine:
    """The shared engine of a store and an isolation; a `Store` object gets an engine of
    its own."""
    if store is not None and not isinstance(store, str):
        return Engine(store, isolation=isolation)
    key = (store or os.environ.get("AGENTFLOW_STORE") or "", os.getcwd(), isolation)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = Engine(store, isolation=isolation)
        return engine


def close_engines() -> None:
    """Close the shared engines (on PostgreSQL each holds a pool of connections); the next
    call opens its store again. For a process that is done with a store, and for tests."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.close()


def execute_plan(plan: Any, tools: ToolsArg = None, inputs: dict[str, Any] | None = None,
                 run_id: str | None = None, store: str | Store | None = None,
                 tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                 limits: SandboxLimits | None = None,
                 observer: Observer | None = None,
                 budget: Mapping[str, float] | None = None,
                 isolation: Isolation = "process") -> RunResult:
    """Validate and run `plan` durably; with an existing `run_id`, continue that run.

    `plan`: a dict, a JSON string, a path to a .json or .py file, a `Plan`, or
    `code_plan(source)`. `limits` bound each execution of a code plan; `budget`
    (`{"llm_tokens": N}`) bounds what the run's model calls may spend, across restarts.
    `isolation="none"` runs code-plan code in this process: for trusted code only."""
    return engine_for(store, isolation).execute(
        plan, tools=tools, inputs=inputs, run_id=run_id, tenant=tenant,
        max_concurrency=max_concurrency, limits=limits, observer=observer, budget=budget)


async def aexecute_plan(plan: Any, tools: ToolsArg = None,
                        inputs: dict[str, Any] | None = None, run_id: str | None = None,
                        store: str | Store | None = None, tenant: str = DEFAULT_TENANT,
                        max_concurrency: int | None = None,
                        limits: SandboxLimits | None = None,
                        isolation: Isolation = "process") -> RunResult:
    """`execute_plan` for async callers (tools may be async either way)."""
    engine = engine_for(store, isolation)
    return await engine.aexecute(plan, tools=tools, inputs=inputs, run_id=run_id, tenant=tenant,
                                 max_concurrency=max_concurrency, limits=limits)


def resume(run_id: str, tools: ToolsArg = None, store: str | Store | None = None,
           tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
           isolation: Isolation = "process") -> RunResult:
    """Continue a run with its pinned plan; completed calls are replayed, not re-run."""
    return engine_for(store, isolation).resume(run_id, tools=tools, tenant=tenant,
                                               max_concurrency=max_concurrency)


async def aresume(run_id: str, tools: ToolsArg = None, store: str | Store | None = None,
                  tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                  isolation: Isolation = "process") -> RunResult:
    return await engine_for(store, isolation).aresume(run_id, tools=tools, tenant=tenant,
                                                      max_concurrency=max_concurrency)


def get_run(run_id: str, store: str | Store | None = None,
            tenant: str = DEFAULT_TENANT) -> RunResult:
    """A run's state from the store, without executing anything."""
    return engine_for(store).get_run(run_id, tenant=tenant)


def approve(run_id: str, pending_id: str, by: str, comment: str | None = None,
            args: dict[str, Any] | None = None, store: str | Store | None = None,
            tenant: str = DEFAULT_TENANT) -> Pending:
    """Approve a pending approval (with `args`, approve edited arguments)."""
    return engine_for(store).approve(run_id, pending_id, by=by, comment=comment, args=args,
                                     tenant=tenant)


def reject(run_id: str, pending_id: str, by: str, reason: str | None = None,
           store: str | Store | None = None, tenant: str = DEFAULT_TENANT) -> Pending:
    """Reject a pending approval; later steps can read the reason."""
    return engine_for(store).reject(run_id, pending_id, by=by, reason=reason, tenant=tenant)


def send_event(run_id: str, name: str, payload: Any = None,
               store: str | Store | None = None, tenant: str = DEFAULT_TENANT) -> int:
    """Deliver an event to a run; one sent before the run waits for it is kept."""
    return engine_for(store).send_event(run_id, name, payload, tenant=tenant)


def cancel(run_id: str, reason: str = "cancelled", store: str | Store | None = None,
           tenant: str = DEFAULT_TENANT) -> RunResult:
    """Stop a run for good."""
    return engine_for(store).cancel(run_id, reason=reason, tenant=tenant)
