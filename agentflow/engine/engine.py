"""The facade: validate, start, resume, decide and inspect runs on one store.

`Engine` owns a store. Each execution takes the run's lease under a fresh worker id, so two
executions of one run never overlap (two threads, two processes or two machines), and a
run whose previous worker died is taken over.

`execute_stream` starts a plan while a model still writes it (see `engine.streaming`).
Crash semantics: a streamed run killed after its whole plan arrived is pinned to that plan
and resumes like any run. One killed while its plan was streaming is pinned to the
streaming marker only: `resume` refuses it, and `execute_stream` with the same `run_id`
streams a plan again, replaying the journal for the steps it already ran (journal keys are
step ids; an id whose call now differs raises `NonDeterminismError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, TypeVar

import jsonschema

from agentflow.engine.compiling import CompiledPlans
from agentflow.engine.failures import FailurePolicy, release_after_error
from agentflow.engine.leases import LeaseKeeper, claim, new_worker_id
from agentflow.engine.links import make_link
from agentflow.engine.loading import (
    Compiled,
    compile_any,
    load_plan,
    plan_data,
    plan_name_of,
    stored_plan,
)
from agentflow.engine.policy import Policy
from agentflow.engine.results import (
    Pending,
    RunResult,
    build_result,
    pending_from_wait,
    remember_origin,
)
from agentflow.engine.streaming import (
    STREAMING_HASH,
    STREAMING_KIND,
    PlanEvents,
    PlanStream,
    streaming_plan,
)
from agentflow.engine.subplans import (
    children,
    notify_parent,
    owner_of_wait,
    pending_below,
    plan_tools,
    starter,
)
from agentflow.engine.telemetry import traced_decision, traced_execution
from agentflow.engine.tenant import Tenant
from agentflow.errors import (
    AgentflowError,
    CorruptRow,
    LeaseLost,
    NotAnApprover,
    NotJsonData,
    PendingNotFound,
    PlanMismatch,
    PlanValidationError,
    RunFinished,
    RunLeased,
    RunNotFound,
    RunWaitTimeout,
    ToolArgumentsError,
    TooManyRuns,
    ValidationIssue,
)
from agentflow.executors.budget import Budget, check_budget_option
from agentflow.executors.code import CodeExecutor
from agentflow.executors.commits import GroupCommitter
from agentflow.executors.graph import GraphExecutor
from agentflow.executors.journal import CallRecord, RunJournal
from agentflow.executors.limits import Limits
from agentflow.executors.progress import Observer
from agentflow.executors.waits import WaitBook
from agentflow.plan import CompiledPlan, validate_inputs
from agentflow.plan.models import EVENT_NAME_PATTERN
from agentflow.sandbox import CompiledCodePlan, IsolatePool, Isolation, SandboxLimits
from agentflow.store import (
    FINISHED_STATUSES,
    JournalEntry,
    RunRecord,
    Store,
    open_store,
)
from agentflow.store.base import iter_journal
from agentflow.tools import Tool, to_json_value, tool_registry

T = TypeVar("T")
PRUNE_BATCH = 500
"""Runs one `prune` transaction deletes at most."""
PRUNE_DRY_RUN_LIMIT = 1_000_000
"""Runs a dry run of `prune` lists at most."""
# What `Engine.wait` waits for: a run no worker is executing that ended or must wait.
SETTLED_STATUSES = frozenset({"completed", "failed", "cancelled", "waiting"})
Feed = Callable[[GraphExecutor, WaitBook], Awaitable[None]]
log = logging.getLogger("agentflow")
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


@dataclass(frozen=True)
class _Execution:
    """What one execute/resume call needs beyond the run itself."""

    tools: dict[str, Tool]
    max_concurrency: int
    observer: Observer | None
    policy: Policy


class Engine:
    """Runs plans durably on one store (`sqlite:///path.db`, a path, or a `Store`).

    `max_inline_wait` is the longest wait (a timer, a soon-to-expire approval) an execution
    sits out in-process; longer waits end the execution with the run "waiting", holding
    nothing but rows, and a worker (`run_due`) or `resume` continues it later.
    `failure_policy` caps runs whose executions keep failing (see `engine.failures`).
    Runs executing at once in one engine (`aexecute` under `asyncio.gather`, a worker's
    concurrency) share their journal commits: a write waits at most `group_commit_window`
    seconds for other runs' writes to join its transaction (see `GroupCommitter`).

    `isolation="process"` (the default) runs code-plan code in isolate processes from
    `isolates` (the process's shared pool by default); `"none"` runs it in this process,
    for trusted code and tests only.
    """

    def __init__(self, store: str | Store | None = None, *, tools: ToolsArg = None,
                 max_concurrency: int = 16, lease_seconds: float = 30.0,
                 max_inline_wait: float = 1.0,
                 failure_policy: FailurePolicy | None = None, isolation: Isolation = "process",
                 isolates: IsolatePool | None = None,
                 group_commit_window: float = 0.002, limits: Limits | None = None) -> None:
        if isolation not in ("process", "none"):
            raise ValueError(f"isolation must be 'process' or 'none', not {isolation!r}")
        self.isolation: Isolation = isolation
        self.isolates = isolates
        self.store = open_store(store)
        self.tools = tool_registry(tools)
        self.max_concurrency = max_concurrency
        self.lease_seconds = lease_seconds
        self.max_inline_wait = max_inline_wait
        self.failure_policy = failure_policy or FailurePolicy()
        self.commits = GroupCommitter(self.store, window=group_commit_window)
        self.leases = LeaseKeeper(self.store)
        self._plans = CompiledPlans()
        self.limits = limits or Limits()
        self._tenants: dict[str, Tenant] = {}
        self._tenant_limits: dict[str, Limits] = {}

    def __repr__(self) -> str:
        return f"Engine({self.store.url!r})"

    def tenant(self, tenant_id: str, *, tools: ToolsArg = None,
               limits: Limits | None = None) -> Tenant:
        """This engine bound to one tenant: its runs only, its tools plus the shared ones.
        The same id gives the same view, so tools registered on it stay registered.
        `limits` replace the engine's `Limits` for this tenant's runs."""
        view = self._tenants.get(tenant_id)
        if view is None:
            view = self._tenants[tenant_id] = Tenant(self, tenant_id)
        if tools is not None:
            view.register(*tools)
        if limits is not None:
            self._tenant_limits[tenant_id] = limits
        return view

    def limits_for(self, tenant_id: str) -> Limits:
        """The `Limits` a tenant's runs execute under."""
        return self._tenant_limits.get(tenant_id, self.limits)

    def _execution(self, tools: ToolsArg, max_concurrency: int | None,
                   observer: Observer | None, tenant: str) -> _Execution:
        """Check the per-call options before anything is written; the tenant's policy
        narrows the tools and sets the limits."""
        if max_concurrency is not None and (
                not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                or max_concurrency < 1):
            raise ValueError(f"max_concurrency must be a whole number >= 1, "
                             f"not {max_concurrency!r}")
        policy = Policy.from_json(self.store.get_policy(tenant))
        return _Execution(policy.tools({**self.tools, **tool_registry(tools)}),
                          max_concurrency or self.max_concurrency, observer, policy)

    # -- starting and resuming ---------------------------------------------------------

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
        execution = self._execution(tools, max_concurrency, observer, tenant)
        checked_budget = check_budget_option(budget)
        data = load_plan(plan)
        compiled = self._plans.compile(
            data, {**execution.tools, **plan_tools(self, tenant, data)})
        execution.policy.check_plan(compiled)
        run_id = _run_id(run_id)
        existing = self.store.get_run(tenant, run_id)
        if existing is None:
            checked_inputs = _check_inputs(compiled, {} if inputs is None else inputs)
            self._check_room(tenant, execution.policy)
            owner = new_worker_id()
            now = time.time()
            options = _options(limits, checked_budget)
            record = RunRecord(tenant_id=tenant, run_id=run_id, plan_hash=compiled.plan_hash,
                               status="running", inputs=checked_inputs, created_at=now,
                               updated_at=now, options=options,
                               plan_name=plan_name or plan_name_of(compiled))
            stored = stored_plan(tenant, compiled, now)
            leased_at = time.monotonic()
            run, created = self.store.create_run(record, stored, owner, self.lease_seconds)
            if created:
                return await self._drive(run, compiled, execution, owner, leased_at)
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
        execution = self._execution(tools, max_concurrency, observer, tenant)
        checked_budget = check_budget_option(budget)
        run_id = _run_id(run_id)
        existing = self.store.get_run(tenant, run_id)
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
        run = self._run(tenant, run_id)
        if run.status in FINISHED_STATUSES:
            return self.get_run(run_id, tenant=tenant)
        if run.corrupt is not None:
            return self._fail_corrupt(run)
        execution = self._execution(tools, max_concurrency, observer, tenant)
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
                     owner: str, leased_at: float, feed: Feed | None = None) -> RunResult:
        """Execute a leased run until it ends or waits, then record that and drop the lease.
        `feed`, for a graph plan still streaming, runs beside the executor and grows its
        plan; an error it raises leaves the run unfinished."""
        tenant, run_id = run.tenant_id, run.run_id
        # Not a `with` block: leaving one waits for every thread, and a timed-out sync tool
        # may never end. Its thread is abandoned; its late result is never journaled.
        threads = ThreadPoolExecutor(execution.max_concurrency,
                                     thread_name_prefix=f"af-{run_id[:16]}")
        with self.commits.running(), self.leases.hold(tenant, run_id, owner,
                                                      self.lease_seconds,
                                                      leased_at=leased_at) as keeper:
            try:
                journal = RunJournal(self.store, tenant, run_id, owner,
                                     iter_journal(self.store, tenant, run_id),
                                     check_lease=keeper.check, committer=self.commits,
                                     limits=self.limits_for(tenant))
                waits = WaitBook(self.store, journal, run.plan_hash)
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
                        subplans=starter(self, run, execution.tools))
                else:
                    executor = GraphExecutor(
                        compiled, execution.tools, journal, waits, run.inputs,
                        tenant_id=tenant, max_concurrency=execution.max_concurrency,
                        threads=threads, observer=execution.observer,
                        max_inline_wait=self.max_inline_wait, budget=budget,
                        stream_open=feed is not None,
                        subplans=starter(self, run, execution.tools))
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
                notify_parent(self.store, run, outcome.status, outcome.outputs, outcome.error)
                self.store.finish_run(tenant, run_id, owner, outcome.status,  # type: ignore[arg-type]
                                      outputs=outcome.outputs, error=outcome.error,
                                      wake_at=outcome.wake_at)
            except LeaseLost:
                # Lapsed here but maybe taken by nobody: give it back (fenced, so a no-op
                # when another worker or a cancel has it).
                with contextlib.suppress(AgentflowError):
                    self.store.finish_run(tenant, run_id, owner, "running")
                if self._run(tenant, run_id).status != "cancelled":
                    raise
                return self.get_run(run_id, tenant=tenant)  # cancelled while it executed
            except BaseException as error:
                release_after_error(self.store, run, owner, error, self.failure_policy)
                raise
            finally:
                threads.shutdown(wait=False, cancel_futures=True)
        return self._result(self._run(tenant, run_id), journal.records)

    # -- the queue: submitted now, run by a worker -------------------------------------

    def submit(self, plan: Any, *, tools: ToolsArg = None,
               inputs: dict[str, Any] | None = None, run_id: str | None = None,
               tenant: str = DEFAULT_TENANT, limits: SandboxLimits | None = None,
               budget: Mapping[str, float] | None = None) -> str:
        """Validate `plan` and store the run as "queued", without running it: a worker
        (`agentflow worker`) claims and runs it. Returns the run id. Submitting the same
        `run_id` again changes nothing (with another plan or inputs: `PlanMismatch`)."""
        execution = self._execution(tools, None, None, tenant)
        checked_budget = check_budget_option(budget)
        data = load_plan(plan)
        compiled = compile_any(data, {**execution.tools, **plan_tools(self, tenant, data)})
        execution.policy.check_plan(compiled)
        run_id = _run_id(run_id)
        now = time.time()
        record = RunRecord(tenant_id=tenant, run_id=run_id, plan_hash=compiled.plan_hash,
                           status="queued",
                           inputs=_check_inputs(compiled, {} if inputs is None else inputs),
                           created_at=now, updated_at=now,
                           options=_options(limits, checked_budget))
        run, created = self.store.submit_run(record, stored_plan(tenant, compiled, now))
        if not created:
            if run.plan_hash != compiled.plan_hash:
                raise PlanMismatch(f"run {run_id!r} was started with plan "
                                   f"{run.plan_hash[:12]}, not {compiled.plan_hash[:12]}")
            _check_same_inputs(run, compiled, inputs)
        return run_id

    def wait(self, run_id: str, *, timeout: float, tenant: str = DEFAULT_TENANT) -> RunResult:
        """Block until the run is completed, failed, cancelled or waiting (and no worker
        holds it), and return its result; `RunWaitTimeout` after `timeout` seconds. On
        PostgreSQL this listens for a notification; on SQLite it looks again with a
        growing pause (10 ms up to 0.5 s)."""
        run = self.store.wait_for_run(tenant, run_id, SETTLED_STATUSES, timeout)
        if run is None:
            raise RunWaitTimeout(run_id, self._run(tenant, run_id).status, timeout)
        return self._result(run, self.store.read_journal(tenant, run_id))

    def run_claimed(self, run: RunRecord, owner: str, *, leased_at: float,
                    tools: ToolsArg = None) -> RunResult:
        """Execute a run that `store.claim_run` leased to `owner` (a worker's claim; the
        `time.monotonic()` taken just before it is `leased_at`), until it ends or waits."""
        execution = self._execution(tools, None, None, run.tenant_id)
        try:
            if run.corrupt is not None:
                raise CorruptRow(run.corrupt)
            compiled = self._pinned_plan(run, execution.tools)
        except PlanValidationError:
            raise  # this worker lacks a tool another may have: left to the lease's expiry
        except AgentflowError as error:  # counts as a failed execution (engine.failures)
            release_after_error(self.store, run, owner, error, self.failure_policy)
            raise
        return run_sync(lambda: self._drive(run, compiled, execution, owner, leased_at))

    def _check_room(self, tenant: str, policy: Policy) -> None:
        """`TooManyRuns` when the tenant already executes `max_concurrent_runs` runs (runs
        under a live lease, counted in the store across every process)."""
        cap = policy.max_concurrent_runs
        if cap is not None:
            running = self.store.count_leased(tenant)
            if running >= cap:
                raise TooManyRuns(tenant, cap, running)

    # -- deciding and waking ----------------------------------------------------------

    def approve(self, run_id: str, pending_id: str, *, by: str, comment: str | None = None,
                args: dict[str, Any] | None = None, tenant: str = DEFAULT_TENANT) -> Pending:
        """Approve a pending approval, optionally with edited arguments (checked against the
        tool's input schema first). Refused with a clear error, changing nothing, when the
        run or approval is unknown, already decided, stale or expired."""
        run_id = self._wait_owner(tenant, run_id, pending_id)
        wait = self._pending_wait(tenant, run_id, pending_id, by=by)
        if args is not None:
            to_json_value(args, f"the edited arguments of {pending_id!r}")  # NotJsonData
        if args is not None and wait is not None:
            self._check_edited_args(run_id, pending_id, wait.tool, wait.args_schema, args)
        decided = self.store.decide_wait(tenant, run_id, pending_id, "approved",
                                         {"by": by, "comment": comment, "args": args},
                                         time.time())
        traced_decision(self.store, decided)
        return pending_from_wait(decided)

    def reject(self, run_id: str, pending_id: str, *, by: str, reason: str | None = None,
               tenant: str = DEFAULT_TENANT) -> Pending:
        """Reject a pending approval; `reason` is data that later steps can read."""
        run_id = self._wait_owner(tenant, run_id, pending_id)
        self._pending_wait(tenant, run_id, pending_id, by=by)
        decided = self.store.decide_wait(tenant, run_id, pending_id, "rejected",
                                         {"by": by, "reason": reason}, time.time())
        traced_decision(self.store, decided)
        return pending_from_wait(decided)

    def _wait_owner(self, tenant: str, run_id: str, pending_id: str) -> str:
        """The run that has the wait: this one, or a sub-plan's child run it waits for (a
        decision made through the parent's handle goes to the child)."""
        self._run(tenant, run_id)
        return owner_of_wait(self.store, tenant, run_id, pending_id) or run_id

    def approval_link(self, run_id: str, pending_id: str, *, approver: str,
                      expires_in: float = 86400, tenant: str = DEFAULT_TENANT,
                      base_url: str | None = None) -> str:
        """A URL that lets `approver` approve or reject this pending approval from a browser
        (`agentflow serve`), signed over the tenant, run, approval, plan and arguments hashes,
        approver and expiry (see `agentflow.engine.links`)."""
        return make_link(self, run_id, pending_id, approver=approver, expires_in=expires_in,
                         tenant=tenant, base_url=base_url)

    def send_event(self, run_id: str, name: str, payload: Any = None, *,
                   tenant: str = DEFAULT_TENANT) -> int:
        """Deliver an event to a run (kept until a `wait_for_event` takes it). The name
        follows the plan format's rule for event names (`ValueError` otherwise); the
        payload must be JSON data (`NotJsonData` otherwise)."""
        to_json_value(payload, f"the payload of event {name!r}")
        if not isinstance(name, str) or re.fullmatch(EVENT_NAME_PATTERN, name) is None:
            raise ValueError(f"invalid event name {name!r}: use letters, digits, '_', '.', "
                             "':' and '-' (the rule wait_for_event names follow)")
        return self.store.send_event(tenant, run_id, name, payload, time.time())

    def cancel(self, run_id: str, *, reason: str = "cancelled",
               tenant: str = DEFAULT_TENANT) -> RunResult:
        """Stop a run for good. A worker executing it starts no further call (it learns at
        its next lease renewal or journal write) and its caller gets the cancelled result."""
        below = children(self.store, tenant, run_id)
        cancelled = self.store.cancel_run(tenant, run_id, reason, time.time())
        notify_parent(self.store, cancelled, "cancelled", None, cancelled.error)
        for child in below:  # its sub-plans go with it
            with contextlib.suppress(RunFinished):
                self.cancel(child.run_id, reason=f"parent run {run_id!r}: {reason}",
                            tenant=tenant)
        return self.get_run(run_id, tenant=tenant)

    def run_due(self, *, tools: ToolsArg = None, limit: int = 100,
                tenant: str | None = None) -> list[RunResult]:
        """Resume the waiting runs whose timer is due or whose decision or event arrived
        (an index range scan, whatever the number of waiting runs), and the running runs
        whose worker died (their lease expired). Runs another worker holds are left to it."""
        results = []
        now = time.time()
        found = self.store.due_runs(now, limit=limit, tenant_id=tenant)
        found += self.store.orphaned_runs(now, limit=limit, tenant_id=tenant)
        for run in found:
            try:
                results.append(run_sync(functools.partial(self._resume_due, run, tools)))
            except RunLeased:
                continue
            except AgentflowError as error:  # one broken run must not stop the worker
                log.warning("run %r of tenant %r cannot be resumed: %s", run.run_id,
                            run.tenant_id, error)
            except Exception:  # nor a bug that one run trips over (logged with its trace)
                log.exception("run %r of tenant %r failed while resuming", run.run_id,
                              run.tenant_id)
        return results

    async def _resume_due(self, listed: RunRecord, tools: ToolsArg) -> RunResult:
        """Resume a run a worker found due; an error before its execution starts (its
        pinned plan missing or unreadable) counts as a failed execution, as one during it
        does. A plan that does not compile with this worker's tools does not count: another
        worker may have them."""
        run = self._run(listed.tenant_id, listed.run_id)
        if run.status in FINISHED_STATUSES:
            return self.get_run(run.run_id, tenant=run.tenant_id)
        if run.corrupt is not None:
            return self._fail_corrupt(run)
        execution = self._execution(tools, None, None, run.tenant_id)
        try:
            compiled = self._pinned_plan(run, execution.tools)
        except PlanValidationError:
            raise
        except AgentflowError as error:
            owner = new_worker_id()
            claim(self.store, run, owner, self.lease_seconds)
            release_after_error(self.store, run, owner, error, self.failure_policy)
            raise
        return await self._continue(run, compiled, execution)

    def _pending_wait(self, tenant: str, run_id: str, pending_id: str, by: Any) -> Any:
        """The approval to decide, once `by` may decide it: a decision always names who
        made it, and one who is not among an approval's approvers is refused."""
        self._run(tenant, run_id)
        waits = {w.wait_id: w for w in self.store.list_waits(tenant, run_id)}
        wait = waits.get(pending_id)
        if wait is None or wait.kind != "approval":
            raise PendingNotFound(run_id, pending_id, ("approval",),
                                  None if wait is None else wait.kind,
                                  [w.wait_id for w in waits.values()
                                   if w.kind == "approval" and w.status == "pending"])
        if not isinstance(by, str) or not by.strip():
            raise NotAnApprover(run_id, pending_id,
                                f"a decision on {pending_id!r} of run {run_id!r} must name who "
                                f"decides (by=...), not {by!r}")
        if wait.approvers and by not in wait.approvers:
            raise NotAnApprover(run_id, pending_id,
                                f"{by!r} may not decide {pending_id!r} of run {run_id!r}; "
                                f"approvers: {', '.join(wait.approvers)}")
        return wait

    @staticmethod
    def _check_edited_args(run_id: str, pending_id: str, tool: str | None,
                           schema: dict[str, Any] | None, args: dict[str, Any]) -> None:
        if not isinstance(args, dict):
            raise ToolArgumentsError(f"run {run_id!r}, approval {pending_id!r}: edited "
                                     "arguments must be a JSON object")
        if schema is None:
            return
        problems = sorted(jsonschema.Draft202012Validator(schema).iter_errors(args),
                          key=lambda e: list(e.path))
        if problems:
            detail = "; ".join(
                f"args{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}"
                for e in problems)
            raise ToolArgumentsError(f"run {run_id!r}, approval {pending_id!r}: edited "
                                     f"arguments for tool {tool!r} are invalid: {detail}")

    # -- reading ----------------------------------------------------------------------

    def get_run(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunResult:
        """The run's current state, from the store alone. A journal with a corrupt row
        gives the run without its steps (the run's error names the row)."""
        run = self._run(tenant, run_id)
        try:
            entries = self.store.read_journal(tenant, run_id)
        except CorruptRow:
            entries = []
        return remember_origin(self._result(run, entries), self, None)

    def _result(self, run: RunRecord,
                entries: list[JournalEntry] | dict[str, CallRecord]) -> RunResult:
        pending = [pending_from_wait(w) for w in [
            *self.store.list_waits(run.tenant_id, run.run_id, status="pending"),
            *pending_below(self.store, run)]]
        return build_result(run, self._step_ids(run), entries, pending)

    def list_runs(self, *, tenant: str = DEFAULT_TENANT, status: str | None = None,
                  plan_hash: str | None = None, limit: int = 100,
                  before: tuple[float, str] | None = None,
                  plan_name: str | None = None) -> list[RunRecord]:
        """The tenant's runs, newest first; `before` (created_at, run_id of the last run of
        the previous page) continues a listing; `plan_name`: runs started by that
        registered name (an index look-up in the store)."""
        return self.store.list_runs(tenant, status=status, plan_hash=plan_hash, limit=limit,
                                    before=before, plan_name=plan_name)

    def journal(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> list[JournalEntry]:
        """The run's journal: every intent, result, error, skip, wait and decision in order."""
        self._run(tenant, run_id)
        return self.store.read_journal(tenant, run_id)

    def plan_data_of(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> Any:
        """The plan a run is pinned to, as plan data (a dict, or a `CodePlan`)."""
        run = self._run(tenant, run_id)
        stored = self.store.get_plan(tenant, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run_id!r}: its pinned plan is missing from the store")
        return plan_data(stored)

    def plan_of(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """The plan a run is pinned to, as JSON data."""
        run = self._run(tenant, run_id)
        stored = self.store.get_plan(tenant, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run_id!r}: its pinned plan is missing from the store")
        body: dict[str, Any] = json.loads(stored.body)
        return body

    def _run(self, tenant: str, run_id: str) -> RunRecord:
        run = self.store.get_run(tenant, run_id)
        if run is None:
            raise RunNotFound(run_id, tenant)
        return run

    def _step_ids(self, run: RunRecord) -> list[tuple[str, bool]] | None:
        """The graph plan's (step id, is foreach) list; None for a code plan, whose steps
        are its calls as the journal records them, or a plan row that cannot be read."""
        stored = self.store.get_plan(run.tenant_id, run.plan_hash)
        if stored is None or stored.kind != "graph":
            return None
        try:
            return [(step["id"], "foreach" in step)
                    for step in json.loads(stored.body).get("steps", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # a corrupt plans row: the run's own error says so

    def _pinned_plan(self, run: RunRecord, registry: dict[str, Tool]) -> Compiled:
        stored = self.store.get_plan(run.tenant_id, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run.run_id!r}: its pinned plan {run.plan_hash[:12]} is "
                               "missing from the store")
        if stored.kind == STREAMING_KIND:
            raise PlanMismatch(f"run {run.run_id!r}: the plan was still streaming when the "
                               "run stopped, so there is no whole plan to resume; run it "
                               "again with execute_stream and the same run_id")
        data = plan_data(stored)
        compiled = self._plans.compile(
            data, {**registry, **plan_tools(self, run.tenant_id, data)})
        if compiled.plan_hash != run.plan_hash:
            raise PlanMismatch(f"run {run.run_id!r}: pinned plan hash changed on reload")
        return compiled

    def prune(self, *, older_than: timedelta | float,
              status: str | Iterable[str] = tuple(sorted(FINISHED_STATUSES)),
              tenant: str | None = None, dry_run: bool = False,
              batch: int = PRUNE_BATCH) -> list[tuple[str, str]]:
        """Delete the finished runs (`status`: some of completed, failed, cancelled) that
        last changed more than `older_than` ago (a timedelta or seconds), with their
        journal, waits and events, and the plans no run or registry entry refers to any
        more; of one tenant, or of all. Each batch of at most `batch` runs is one short
        write transaction, so other writers wait for one batch at most. Returns the
        (tenant, run id) of each run deleted, or with `dry_run` that would be."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"older_than must be a timedelta or seconds >= 0, not "
                             f"{older_than!r}")
        statuses = (status,) if isinstance(status, str) else tuple(status)
        before = time.time() - seconds
        if dry_run:
            return self.store.prune_runs(before, statuses, limit=PRUNE_DRY_RUN_LIMIT,
                                         tenant_id=tenant, dry_run=True)
        deleted: list[tuple[str, str]] = []
        while True:
            done = self.store.prune_runs(before, statuses, limit=batch, tenant_id=tenant)
            deleted += done
            if len(done) < batch:
                return deleted

    def close(self) -> None:
        self.leases.close()
        self.commits.close()
        self.store.close()


def _run_id(run_id: str | None) -> str:
    """The caller's run id, checked, or a fresh one."""
    if run_id is not None and (not isinstance(run_id, str) or not run_id.strip()):
        raise ValueError(f"run_id must be a non-empty string, not {run_id!r}")
    return run_id or uuid.uuid4().hex


def _options(limits: SandboxLimits | None, budget: Mapping[str, float] | None) -> dict[str, Any]:
    """The per-run options kept with the run."""
    options: dict[str, Any] = {}
    if limits is not None:
        options["limits"] = asdict(limits)
    if budget is not None:
        options["budget"] = budget
    return options


def _check_same_inputs(run: RunRecord, compiled: Compiled, inputs: Any) -> None:
    """Continuing a run with inputs is allowed only with the inputs it was started with
    (a run whose row is corrupt is failed instead, further on)."""
    if run.corrupt is not None:
        return
    if inputs is not None and _check_inputs(compiled, inputs) != run.inputs:
        raise PlanMismatch(f"run {run.run_id!r} was started with other inputs: "
                           f"{json.dumps(run.inputs)[:200]}")


def _check_inputs(compiled: Compiled, inputs: Any) -> dict[str, Any]:
    """Graph plans declare an input schema; code plans take any JSON object."""
    try:
        to_json_value(inputs, "the inputs")
    except NotJsonData as error:
        raise PlanValidationError([ValidationIssue("$.inputs", str(error))],
                                  what="inputs") from None
    if isinstance(compiled, CompiledPlan):
        return validate_inputs(compiled, inputs)
    if not isinstance(inputs, dict):
        raise PlanValidationError([ValidationIssue("$.inputs", "inputs must be a JSON "
                                                   f"object, not {type(inputs).__name__}")],
                                  what="inputs")
    try:
        checked: dict[str, Any] = json.loads(json.dumps(inputs, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise PlanValidationError([ValidationIssue("$.inputs", f"inputs must be JSON data: "
                                                   f"{error}")], what="inputs") from None
    return checked
