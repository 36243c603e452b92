"""The facade: validate, start, resume and inspect runs on one store.

`Engine` owns a store. Each execution takes the run's lease under a fresh worker id, so two
executions of one run never overlap (two threads, two processes or two machines), and a
run whose previous worker died is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agentflow.engine.leases import LeaseKeeper, claim, new_worker_id
from agentflow.engine.loading import load_plan
from agentflow.engine.results import RunResult, build_result
from agentflow.errors import LeaseLost, PlanMismatch, RunNotFound
from agentflow.executors.graph import GraphExecutor
from agentflow.executors.journal import RunJournal
from agentflow.plan import CompiledPlan, compile_plan, validate_inputs
from agentflow.store import FINISHED_STATUSES, RunRecord, Store, StoredPlan, open_store
from agentflow.tools import Tool, tool_registry

T = TypeVar("T")
ToolsArg = Iterable[Tool | Callable[..., Any]] | None
DEFAULT_TENANT = "default"


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also inside a running event loop
    (Jupyter), where it runs on a helper thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1, thread_name_prefix="agentflow") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


class Engine:
    """Runs plans durably on one store (`sqlite:///path.db`, a path, or a `Store`)."""

    def __init__(self, store: str | Store | None = None, *, tools: ToolsArg = None,
                 max_concurrency: int = 16, lease_seconds: float = 30.0) -> None:
        self.store = open_store(store)
        self.tools = tool_registry(tools)
        self.max_concurrency = max_concurrency
        self.lease_seconds = lease_seconds

    def __repr__(self) -> str:
        return f"Engine({self.store.url!r})"

    # -- starting and resuming ---------------------------------------------------------

    def execute(self, plan: Any, *, tools: ToolsArg = None,
                inputs: dict[str, Any] | None = None, run_id: str | None = None,
                tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None) -> RunResult:
        """Validate `plan` and run it to the end (or until it must wait). With the `run_id`
        of an existing run, continue that run instead: never a second run."""
        return run_sync(lambda: self.aexecute(plan, tools=tools, inputs=inputs, run_id=run_id,
                                              tenant=tenant, max_concurrency=max_concurrency))

    async def aexecute(self, plan: Any, *, tools: ToolsArg = None,
                       inputs: dict[str, Any] | None = None, run_id: str | None = None,
                       tenant: str = DEFAULT_TENANT,
                       max_concurrency: int | None = None) -> RunResult:
        registry = self._tools(tools)
        compiled = compile_plan(load_plan(plan), registry)
        run_id = run_id or uuid.uuid4().hex
        existing = self.store.get_run(tenant, run_id)
        if existing is None:
            checked_inputs = validate_inputs(compiled, inputs or {})
            owner = new_worker_id()
            now = time.time()
            record = RunRecord(tenant_id=tenant, run_id=run_id, plan_hash=compiled.plan_hash,
                               status="running", inputs=checked_inputs, created_at=now,
                               updated_at=now)
            stored = StoredPlan(tenant, compiled.plan_hash, "graph", compiled.canonical_json, now)
            run, created = self.store.create_run(record, stored, owner, self.lease_seconds)
            if created:
                return await self._drive(run, compiled, registry, owner, max_concurrency)
            existing = run
        if existing.plan_hash != compiled.plan_hash:
            raise PlanMismatch(
                f"run {run_id!r} was started with plan {existing.plan_hash[:12]}, not "
                f"{compiled.plan_hash[:12]}; a run always resumes its pinned plan")
        if inputs is not None and validate_inputs(compiled, inputs) != existing.inputs:
            raise PlanMismatch(f"run {run_id!r} was started with other inputs: "
                               f"{json.dumps(existing.inputs)[:200]}")
        return await self._continue(existing, compiled, registry, max_concurrency)

    def resume(self, run_id: str, *, tools: ToolsArg = None, tenant: str = DEFAULT_TENANT,
               max_concurrency: int | None = None) -> RunResult:
        """Continue a run with its pinned plan; a finished run just returns its result."""
        return run_sync(lambda: self.aresume(run_id, tools=tools, tenant=tenant,
                                             max_concurrency=max_concurrency))

    async def aresume(self, run_id: str, *, tools: ToolsArg = None,
                      tenant: str = DEFAULT_TENANT,
                      max_concurrency: int | None = None) -> RunResult:
        run = self._run(tenant, run_id)
        if run.status in FINISHED_STATUSES:
            return self.get_run(run_id, tenant=tenant)
        registry = self._tools(tools)
        compiled = self._pinned_plan(run, registry)
        return await self._continue(run, compiled, registry, max_concurrency)

    async def _continue(self, run: RunRecord, compiled: CompiledPlan, registry: dict[str, Tool],
                        max_concurrency: int | None) -> RunResult:
        if run.status in FINISHED_STATUSES:
            return self.get_run(run.run_id, tenant=run.tenant_id)
        owner = new_worker_id()
        claim(self.store, run, owner, self.lease_seconds)
        return await self._drive(run, compiled, registry, owner, max_concurrency)

    async def _drive(self, run: RunRecord, compiled: CompiledPlan, registry: dict[str, Tool],
                     owner: str, max_concurrency: int | None) -> RunResult:
        """Execute a leased run until it ends, then record the outcome and drop the lease."""
        tenant, run_id = run.tenant_id, run.run_id
        limit = max_concurrency or self.max_concurrency
        journal = RunJournal(self.store, tenant, run_id, owner,
                             self.store.read_journal(tenant, run_id))
        finished = False
        with LeaseKeeper(self.store, tenant, run_id, owner, self.lease_seconds) as keeper, \
                ThreadPoolExecutor(limit, thread_name_prefix=f"af-{run_id[:16]}") as threads:
            try:
                executor = GraphExecutor(compiled, registry, journal, run.inputs,
                                         tenant_id=tenant, max_concurrency=limit,
                                         threads=threads)
                outcome = await executor.run()
                if keeper.lost:
                    raise LeaseLost(run_id, owner)
                self.store.finish_run(tenant, run_id, owner, outcome.status,  # type: ignore[arg-type]
                                      outputs=outcome.outputs, error=outcome.error)
                finished = True
            finally:
                if not finished and not keeper.lost:
                    self._release(run, owner)
                threads.shutdown(wait=False, cancel_futures=True)
        return self.get_run(run_id, tenant=tenant)

    def _release(self, run: RunRecord, owner: str) -> None:
        """Give the lease back after an unexpected error, leaving the run resumable."""
        with contextlib.suppress(LeaseLost):
            self.store.finish_run(run.tenant_id, run.run_id, owner, "running")

    # -- reading ----------------------------------------------------------------------

    def get_run(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunResult:
        """The run's current state, from the store alone."""
        run = self._run(tenant, run_id)
        return build_result(run, self._step_ids(run), self.store.read_journal(tenant, run_id))

    def list_runs(self, *, tenant: str = DEFAULT_TENANT, status: str | None = None,
                  limit: int = 100) -> list[RunRecord]:
        return self.store.list_runs(tenant, status=status, limit=limit)

    def _run(self, tenant: str, run_id: str) -> RunRecord:
        run = self.store.get_run(tenant, run_id)
        if run is None:
            raise RunNotFound(run_id, tenant)
        return run

    def _step_ids(self, run: RunRecord) -> list[tuple[str, bool]]:
        stored = self.store.get_plan(run.tenant_id, run.plan_hash)
        if stored is None:
            return []
        body = json.loads(stored.body)
        return [(step["id"], "foreach" in step) for step in body.get("steps", [])]

    def _pinned_plan(self, run: RunRecord, registry: dict[str, Tool]) -> CompiledPlan:
        stored = self.store.get_plan(run.tenant_id, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run.run_id!r}: its pinned plan {run.plan_hash[:12]} is "
                               "missing from the store")
        compiled = compile_plan(json.loads(stored.body), registry)
        if compiled.plan_hash != run.plan_hash:
            raise PlanMismatch(f"run {run.run_id!r}: pinned plan hash changed on reload")
        return compiled

    def _tools(self, tools: ToolsArg) -> dict[str, Tool]:
        return {**self.tools, **tool_registry(tools)}

    def close(self) -> None:
        self.store.close()
