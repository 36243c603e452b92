"""The queue: runs submitted now and executed by a worker (`submit`, `wait`,
`run_claimed`), and the waiting or orphaned runs a worker resumes (`run_due`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from agentflow.engine.failures import release_after_error
from agentflow.engine.leases import claim, new_worker_id
from agentflow.engine.loading import compile_any, load_plan, stored_plan
from agentflow.engine.options import (
    DEFAULT_TENANT,
    Claimed,
    ToolsArg,
    _check_inputs,
    _check_same_inputs,
    _options,
    _run_id,
    run_on,
    run_sync,
)
from agentflow.engine.results import RunResult
from agentflow.engine.running import Running
from agentflow.engine.subplans import plan_tools
from agentflow.errors import (
    AgentflowError,
    CorruptRow,
    PlanMismatch,
    PlanValidationError,
    RunLeased,
    RunNotFound,
    RunWaitTimeout,
)
from agentflow.executors.budget import check_budget_option
from agentflow.sandbox import SandboxLimits
from agentflow.store import FINISHED_STATUSES, RunRecord

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine


# What `Engine.wait` waits for: a run no worker is executing that ended or must wait.
SETTLED_STATUSES = frozenset({"completed", "failed", "cancelled", "waiting"})
log = logging.getLogger("agentflow")


class Queueing(Running):
    """The part of `Engine` that workers use."""

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
        compiled = compile_any(
            data, {**execution.tools, **plan_tools(cast("Engine", self), tenant, data)})
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
        return self._result(run, self._records(run))

    def run_claimed(self, run: RunRecord, owner: str, *, leased_at: float,
                    tools: ToolsArg = None, claim: Claimed | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> RunResult:
        """Execute a run that `store.claim_run` leased to `owner` (a worker's claim; the
        `time.monotonic()` taken just before it is `leased_at`), until it ends or waits.
        With `claim` (`Store.claim`'s answer for `run`), the plan and policy it read with
        the run are not read again, nor the journal and waits of a run it started. With
        `loop` (one the calling thread keeps, not running), the run executes on it."""
        execution = self._run_and_execution(tools, None, None, run.tenant_id, None,
                                            claim)[1]
        try:
            if run.corrupt is not None:
                raise CorruptRow(run.corrupt)
            compiled = self._pinned_plan(run, execution.tools, claim)
        except PlanValidationError:
            raise  # this worker lacks a tool another may have: left to the lease's expiry
        except AgentflowError as error:  # counts as a failed execution (engine.failures)
            release_after_error(self.store, run, owner, error, self.failure_policy)
            raise
        started = claim is not None and claim.started
        drive = functools.partial(self._drive, run, compiled, execution, owner, leased_at,
                                  new=started)
        return run_sync(drive) if loop is None else run_on(loop, drive)
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
        found, execution = self._run_and_execution(tools, None, None, listed.tenant_id,
                                                   listed.run_id)
        if found is None:
            raise RunNotFound(listed.run_id, listed.tenant_id)
        run = found
        if run.status in FINISHED_STATUSES:
            return self.get_run(run.run_id, tenant=run.tenant_id)
        if run.corrupt is not None:
            return self._fail_corrupt(run)
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

