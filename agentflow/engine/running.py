"""Starting, streaming and resuming runs: the part of `Engine` that executes a run under
its lease until it ends or must wait (see `engine.engine` for the crash semantics)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from agentflow.engine.base import EngineBase
from agentflow.engine.failures import release_after_error
from agentflow.engine.leases import claim, new_worker_id
from agentflow.engine.loading import Compiled, load_plan, plan_name_of, stored_plan
from agentflow.engine.options import (
    DEFAULT_TENANT,
    ToolsArg,
    _check_inputs,
    _check_same_inputs,
    _Execution,
    _options,
    _run_id,
    run_sync,
)
from agentflow.engine.results import RunResult, remember_origin
from agentflow.engine.streaming import STREAMING_HASH, PlanEvents, PlanStream, streaming_plan
from agentflow.engine.subplans import notify_parent, plan_tools, starter
from agentflow.engine.telemetry import traced_execution
from agentflow.errors import (
    AgentflowError,
    CorruptRow,
    LeaseLost,
    PlanMismatch,
    PlanValidationError,
    RunNotFound,
    ValidationIssue,
)
from agentflow.executors.budget import Budget, check_budget_option
from agentflow.executors.code import CodeExecutor
from agentflow.executors.graph import GraphExecutor
from agentflow.executors.journal import RunJournal
from agentflow.executors.progress import Observer
from agentflow.executors.waits import WaitBook
from agentflow.plan import CompiledPlan, validate_inputs
from agentflow.sandbox import CompiledCodePlan, SandboxLimits
from agentflow.store import FINISHED_STATUSES, NewRun, RunEnd, RunRecord
from agentflow.store.base import iter_journal

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine


Feed = Callable[[GraphExecutor, WaitBook], Awaitable[None]]


class Running(EngineBase):
    """`Engine.execute`, `execute_stream` and `resume`, and the execution under a lease they
    share."""

    def execute(self, plan: Any, *, tools: ToolsArg = None,
                inputs: dict[str, Any] | None = None, run_id: str | None = None,
                tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                observer: Observer | None = None, limits: SandboxLimits | None = None,
                budget: Mapping[str, float] | None = None,
                plan_name: str | None = None) -> RunResult:
        """Validate `plan` and run it to the end (or until it must wait). With the `run_id`
        of an existing run, continue that run instead: never a second run. `limits` bound
        each execution of a code plan and are kept with the run; so is `budget`
        (`{"llm_tokens": N}`): a call that could take the run past it is not made.
        `plan_name` is recorded with a new run (`tenant.execute(NAME)` passes it)."""
        return remember_origin(run_sync(lambda: self.aexecute(
            plan, tools=tools, inputs=inputs, run_id=run_id, tenant=tenant,
            max_concurrency=max_concurrency, observer=observer, limits=limits,
            budget=budget, plan_name=plan_name)), self, tools)

    async def aexecute(self, plan: Any, *, tools: ToolsArg = None,
                       inputs: dict[str, Any] | None = None, run_id: str | None = None,
                       tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                       observer: Observer | None = None,
                       limits: SandboxLimits | None = None,
                       budget: Mapping[str, float] | None = None,
                       plan_name: str | None = None) -> RunResult:
        given, run_id = run_id, _run_id(run_id)
        # a fresh id names no run yet: only the policy is read
        existing, execution = self._run_and_execution(tools, max_concurrency, observer, tenant,
                                                      None if given is None else run_id)
        checked_budget = check_budget_option(budget)
        data = load_plan(plan)
        compiled = self._plans.compile(
            data, {**execution.tools, **plan_tools(cast("Engine", self), tenant, data)},
            checked=True)
        execution.policy.check_plan(compiled)
        if existing is None:
            checked_inputs = _check_inputs(compiled, {} if inputs is None else inputs)
            owner = new_worker_id()
            now = time.time()
            options = _options(limits, checked_budget)
            record = RunRecord(tenant_id=tenant, run_id=run_id, plan_hash=compiled.plan_hash,
                               status="running", inputs=checked_inputs, created_at=now,
                               updated_at=now, options=options,
                               plan_name=plan_name or plan_name_of(compiled))
            stored = stored_plan(tenant, compiled, now)
            if stored.plan_hash not in self._step_id_lists:  # for the result: not read back
                self._keep_step_ids(stored, None)
            leased_at = time.monotonic()
            cap = execution.policy.max_concurrent_runs
            if cap is not None:
                # Past the tenant's max_concurrent_runs: TooManyRuns, counted in the store
                # with the insert, so racing processes never pass the cap.
                run, created = self.store.create_run(record, stored, owner,
                                                     self.lease_seconds, cap=cap)
            else:
                with self.commits.running():  # runs started together share this commit
                    run, created = await self.commits.commit(
                        NewRun(record, stored, owner, self.lease_seconds))
            if created:
                return await self._drive(run, compiled, execution, owner, leased_at, new=True)
            existing = run
        if existing.plan_hash != compiled.plan_hash:
            raise PlanMismatch(
                f"run {run_id!r} was started with plan {existing.plan_hash[:12]}, not "
                f"{compiled.plan_hash[:12]}; a run always resumes its pinned plan")
        _check_same_inputs(existing, compiled, inputs)
        return await self._continue(existing, compiled, execution)

    def execute_stream(self, events: PlanEvents, *, tools: ToolsArg = None,
                       inputs: dict[str, Any] | None = None,
                       inputs_schema: dict[str, Any] | None = None, run_id: str | None = None,
                       tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                       observer: Observer | None = None,
                       budget: Mapping[str, float] | None = None) -> RunResult:
        """Run a graph plan while it streams in: `events` are `StepReady`... then
        `PlanReady` (as `agentflow.llm.stream_plan` yields them, sync or async), and each
        step starts as soon as it and its dependencies have arrived and validated (steps
        are validated with `inputs_schema`, the plan's inputs schema). Once the whole plan
        arrives the run is pinned to it, and is then what a run of the whole plan would be:
        same plan hash, journal and outputs.

        Nothing is written before the first step arrives. A step or whole plan that does
        not validate, or an `AgentflowError` from the source (`PlanningFailed`), stops the
        stream: nothing more starts, running calls finish (journaled) and the run fails
        with that error. Any other error of the source (a broken connection) is raised once
        running calls have finished, and the run can be streamed again with the same
        `run_id`. The `run_id` of a run whose plan arrived whole, or of a finished run,
        continues it like `execute` does, without reading `events`."""
        return run_sync(lambda: self.aexecute_stream(
            events, tools=tools, inputs=inputs, inputs_schema=inputs_schema, run_id=run_id,
            tenant=tenant, max_concurrency=max_concurrency, observer=observer, budget=budget))

    async def aexecute_stream(self, events: PlanEvents, *, tools: ToolsArg = None,
                              inputs: dict[str, Any] | None = None,
                              inputs_schema: dict[str, Any] | None = None,
                              run_id: str | None = None, tenant: str = DEFAULT_TENANT,
                              max_concurrency: int | None = None,
                              observer: Observer | None = None,
                              budget: Mapping[str, float] | None = None) -> RunResult:
        given, run_id = run_id, _run_id(run_id)
        existing, execution = self._run_and_execution(tools, max_concurrency, observer, tenant,
                                                      None if given is None else run_id)
        checked_budget = check_budget_option(budget)
        if existing is not None and existing.status in FINISHED_STATUSES:
            return self.get_run(run_id, tenant=tenant)
        if existing is not None and existing.plan_hash != STREAMING_HASH:
            compiled = self._pinned_plan(existing, execution.tools)
            _check_same_inputs(existing, compiled, inputs)
            return await self._continue(existing, compiled, execution)
        stream = PlanStream(events, execution.tools, inputs_schema)
        try:
            first, whole = await stream.next_plan()
            owner = new_worker_id()
            leased_at = time.monotonic()
            if existing is None:
                now = time.time()
                record = RunRecord(tenant_id=tenant, run_id=run_id, plan_hash=STREAMING_HASH,
                                   status="running", inputs=validate_inputs(first, inputs),
                                   created_at=now, updated_at=now,
                                   options=_options(None, checked_budget))
                run, created = self.store.create_run(record, streaming_plan(tenant), owner,
                                                     self.lease_seconds)
                if not created:  # started meanwhile by another caller: one of us runs it
                    claim(self.store, run, owner, self.lease_seconds)
            else:
                _check_same_inputs(existing, first, inputs)
                claim(self.store, existing, owner, self.lease_seconds)
                run = existing

            async def feed(executor: GraphExecutor, waits: WaitBook) -> None:
                await self._feed_stream(stream, first, whole, run, owner, executor, waits)

            return await self._drive(run, first, execution, owner, leased_at, feed)
        finally:
            stream.close()

    async def _feed_stream(self, stream: PlanStream, compiled: CompiledPlan, whole: bool,
                           run: RunRecord, owner: str, executor: GraphExecutor,
                           waits: WaitBook) -> None:
        """Grow the executor's plan as the stream arrives, then pin the run to the whole
        plan. A plan that is invalid ends the stream and fails the run; a source that
        breaks ends it too, and its error is raised here."""
        try:
            while not whole:
                compiled, whole = await stream.next_plan()
                if not whole:
                    executor.add_steps(compiled)
            if validate_inputs(compiled, run.inputs) != run.inputs:
                raise PlanValidationError([ValidationIssue(
                    "$.inputs", "the whole plan's inputs schema does not give the inputs "
                    "its streamed steps were validated with", code="stream_changed")])
            executor.close_stream(compiled)
        except AgentflowError as error:
            executor.fail_stream(error)
            return
        except Exception as error:
            executor.fail_stream(error)
            raise
        try:
            self.store.repin_plan(run.tenant_id, run.run_id, owner,
                                  stored_plan(run.tenant_id, compiled, time.time()))
        except Exception as error:
            executor.fail_stream(error)
            raise
        waits.plan_hash = compiled.plan_hash

    def resume(self, run_id: str, *, tools: ToolsArg = None, tenant: str = DEFAULT_TENANT,
               max_concurrency: int | None = None,
               observer: Observer | None = None) -> RunResult:
        """Continue a run with its pinned plan; a finished run just returns its result."""
        return remember_origin(run_sync(lambda: self.aresume(
            run_id, tools=tools, tenant=tenant, max_concurrency=max_concurrency,
            observer=observer)), self, tools)

    async def aresume(self, run_id: str, *, tools: ToolsArg = None,
                      tenant: str = DEFAULT_TENANT, max_concurrency: int | None = None,
                      observer: Observer | None = None) -> RunResult:
        run, execution = self._run_and_execution(tools, max_concurrency, observer, tenant,
                                                 run_id)
        if run is None:
            raise RunNotFound(run_id, tenant)
        if run.status in FINISHED_STATUSES:
            return self.get_run(run_id, tenant=tenant)
        if run.corrupt is not None:
            return self._fail_corrupt(run)
        compiled = self._pinned_plan(run, execution.tools)
        return await self._continue(run, compiled, execution)

    async def _continue(self, run: RunRecord, compiled: Compiled,
                        execution: _Execution) -> RunResult:
        if run.status in FINISHED_STATUSES:
            return self.get_run(run.run_id, tenant=run.tenant_id)
        if run.corrupt is not None:
            return self._fail_corrupt(run)
        owner = new_worker_id()
        leased_at = time.monotonic()
        claim(self.store, run, owner, self.lease_seconds)
        return await self._drive(run, compiled, execution, owner, leased_at)

    def _fail_corrupt(self, run: RunRecord) -> RunResult:
        """A run whose row cannot be read in full fails, alone, naming the row."""
        owner = new_worker_id()
        claim(self.store, run, owner, self.lease_seconds)
        release_after_error(self.store, run, owner, CorruptRow(run.corrupt or "corrupt row"),
                            self.failure_policy)
        return self.get_run(run.run_id, tenant=run.tenant_id)

    async def _drive(self, run: RunRecord, compiled: Compiled, execution: _Execution,
                     owner: str, leased_at: float, feed: Feed | None = None, *,
                     new: bool = False) -> RunResult:
        """Execute a leased run until it ends or waits, then record that and drop the lease.
        `feed`, for a graph plan still streaming, runs beside the executor and grows its
        plan; an error it raises leaves the run unfinished. A `new` run (just created by
        this call) has an empty journal: it is not read."""
        tenant, run_id = run.tenant_id, run.run_id
        # Not a `with` block: leaving one waits for every thread, and a timed-out sync tool
        # may never end. Its thread is abandoned; its late result is never journaled.
        threads = ThreadPoolExecutor(execution.max_concurrency,
                                     thread_name_prefix=f"af-{run_id[:16]}")
        journal: RunJournal | None = None
        with self.commits.running(), self.leases.hold(tenant, run_id, owner,
                                                      self.lease_seconds,
                                                      leased_at=leased_at) as keeper:
            try:
                journal = RunJournal(self.store, tenant, run_id, owner,
                                     [] if new else iter_journal(self.store, tenant, run_id),
                                     check_lease=keeper.check, committer=self.commits,
                                     limits=self.limits_for(tenant))
                waits = WaitBook(self.store, journal, run.plan_hash, new=new)
                budget = Budget(execution.policy.limits(run.options.get("budget")), journal,
                                execution.tools)
                budget.on_limit = execution.policy.on_limit
                executor: GraphExecutor | CodeExecutor
                feeding: asyncio.Future[None] | None = None
                if isinstance(compiled, CompiledCodePlan):
                    executor = CodeExecutor(
                        compiled, execution.tools, journal, waits, run.inputs,
                        tenant_id=tenant, max_concurrency=execution.max_concurrency,
                        threads=threads, observer=execution.observer,
                        max_inline_wait=self.max_inline_wait,
                        limits=SandboxLimits(**run.options.get("limits", {})), budget=budget,
                        isolation=self.isolation, isolates=self.isolates,
                        subplans=starter(cast("Engine", self), run, execution.tools))
                else:
                    executor = GraphExecutor(
                        compiled, execution.tools, journal, waits, run.inputs,
                        tenant_id=tenant, max_concurrency=execution.max_concurrency,
                        threads=threads, observer=execution.observer,
                        max_inline_wait=self.max_inline_wait, budget=budget,
                        stream_open=feed is not None,
                        subplans=starter(cast("Engine", self), run, execution.tools))
                    if feed is not None:
                        feeding = asyncio.ensure_future(feed(executor, waits))
                if feed is None:  # let runs started together enter, to share commits
                    await asyncio.sleep(0)
                try:
                    outcome = await traced_execution(self.store, run, executor.run())
                finally:
                    if feeding is not None and not feeding.done():
                        feeding.cancel()
                if feeding is not None:
                    await feeding
                if keeper.lost:
                    raise LeaseLost(run_id, owner)
                if run.options.get("parent") is not None:
                    journal.flush()  # the child's journal is whole before its parent hears
                notify_parent(self.store, run, outcome.status, outcome.outputs, outcome.error)
                last = journal.buffered()  # committed with the end: one transaction
                await self.commits.commit(RunEnd(
                    tenant, run_id, owner, outcome.status,  # type: ignore[arg-type]
                    outcome.outputs, outcome.error, outcome.wake_at, last))
                journal.committed(last)
            except LeaseLost:
                # Lapsed here but maybe taken by nobody: give it back (fenced, so a no-op
                # when another worker or a cancel has it).
                with contextlib.suppress(AgentflowError):
                    self.store.finish_run(tenant, run_id, owner, "running")
                if self._run(tenant, run_id).status != "cancelled":
                    raise
                return self.get_run(run_id, tenant=tenant)  # cancelled while it executed
            except BaseException as error:
                if journal is not None:  # results left for the end are kept all the same
                    with contextlib.suppress(Exception):
                        journal.flush()
                release_after_error(self.store, run, owner, error, self.failure_policy)
                raise
            finally:
                threads.shutdown(wait=False, cancel_futures=True)
        return self._result(self._run(tenant, run_id), journal.records)
