"""The JSON step-graph executor: runs a compiled plan against a run's journal.

Scheduling happens in rounds on one asyncio loop. Each round settles what finished, decides
which steps can start (conditions, foreach lists, arguments), buffers their intents, commits
everything in one journal write and only then starts the calls. A call already recorded as
finished is never started again; one that was started but never finished (a crash) is
started again with the next attempt number and the same idempotency key.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from agentflow.errors import AgentflowError, NonDeterminismError
from agentflow.executors.calls import error_info, invoke_tool, is_retryable, retry_delay
from agentflow.executors.journal import RunJournal, args_hash
from agentflow.plan import CompiledPlan, CompiledStep, Scope, StepView
from agentflow.tools import Tool, ToolContext


@dataclass
class Call:
    """One tool call of a step (one per foreach item) and its retry state."""

    key: str
    step: CompiledStep
    tool: Tool
    args: dict[str, Any] | None
    hashed_args: str | None
    item_index: int | None
    attempts: int = 0
    failures: int = 0


@dataclass
class StepProgress:
    """A started step whose calls have not all settled."""

    calls: list[Call]
    outputs: list[Any]
    unsettled: int
    running: int = 0
    first_error: dict[str, Any] | None = None
    queued: deque[Call] = field(default_factory=deque)


@dataclass(frozen=True)
class GraphOutcome:
    status: str  # completed | failed
    outputs: Any
    error: dict[str, Any] | None


class GraphExecutor:
    """Interprets one run of a compiled plan. Create one per execution attempt."""

    def __init__(
        self, compiled: CompiledPlan, tools: Mapping[str, Tool], journal: RunJournal,
        inputs: Mapping[str, Any], *, tenant_id: str, max_concurrency: int,
        threads: Executor,
    ) -> None:
        self.plan = compiled
        self.tools = tools
        self.journal = journal
        self.inputs = inputs
        self.tenant_id = tenant_id
        self.max_concurrency = max_concurrency
        self.threads = threads
        self.views: dict[str, StepView] = {}
        self.failed: set[str] = set()
        self.first_failure: dict[str, Any] | None = None
        self.unsettled_deps = {sid: len(s.dependencies) for sid, s in compiled.steps.items()}
        self.ready: deque[str] = deque(sid for sid, n in self.unsettled_deps.items() if n == 0)
        self.progress: dict[str, StepProgress] = {}
        self.launchable: dict[str, None] = {}  # steps with queued calls, in order
        self.running: dict[asyncio.Future[Any], Call] = {}
        self.delayed: dict[asyncio.Future[Any], Call] = {}

    async def run(self) -> GraphOutcome:
        try:
            while True:
                self._start_ready_steps()
                starting = self._claim_slots()
                self.journal.flush()
                if len(starting) == 1 and not self.running and not self.delayed \
                        and self._can_run_inline(starting[0]):
                    call = starting[0]
                    try:
                        result = await invoke_tool(call.tool, call.args or {},
                                                   self._context(call), None, None)
                    except Exception as error:
                        self._call_failed(call, error)
                    else:
                        self._call_succeeded(call, result)
                    continue
                for call in starting:
                    self.running[asyncio.ensure_future(self._invoke(call))] = call
                if not self.running and not self.delayed:
                    break
                done, _ = await asyncio.wait([*self.running, *self.delayed],
                                             return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    self._settle_future(future)
        finally:
            for future in [*self.running, *self.delayed]:
                future.cancel()
        self.journal.flush()
        return self._outcome()

    # -- deciding what starts ---------------------------------------------------------

    def _start_ready_steps(self) -> None:
        while self.ready:
            self._start_step(self.plan.steps[self.ready.popleft()])

    def _start_step(self, step: CompiledStep) -> None:
        sid = step.step.id
        recorded = self.journal.record(sid)
        if recorded is not None and recorded.status == "skipped":
            self._settle_step(sid, "skipped", None, recorded.error)
            return
        skip_reason = self._skip_reason(step)
        if skip_reason is not None:
            self.journal.add(sid, "skipped", {"reason": skip_reason})
            self._settle_step(sid, "skipped", None, {"reason": skip_reason})
            return
        try:
            calls = self._calls_for(step)
        except AgentflowError as error:
            info = {**error_info(error), "final": True}
            self.journal.add(sid, "error", info)
            self._settle_step(sid, "failed", None, info)
            return
        progress = StepProgress(calls=calls, outputs=[None] * len(calls), unsettled=len(calls))
        self.progress[sid] = progress
        if not calls:
            if self.journal.record(sid) is None:
                self.journal.add(sid, "settled", {"status": "succeeded", "items": 0})
            self._settle_step(sid, "succeeded", [], None)
            return
        for position, call in enumerate(calls):
            record = self.journal.record(call.key)
            if record is not None and record.status == "succeeded":
                self._settle_call(call, position, record.output, None)
            elif record is not None and record.status == "failed":
                self._settle_call(call, position, None, record.error)
            else:
                if record is not None:
                    call.attempts = record.attempts
                    call.failures = len(record.errors)
                progress.queued.append(call)
        if progress.queued:
            self.launchable[sid] = None

    def _skip_reason(self, step: CompiledStep) -> str | None:
        upstream_ok = all(
            self.views[dep].status == "succeeded"
            or (self.views[dep].status == "failed"
                and self.plan.steps[dep].step.continue_on_error)
            for dep in step.dependencies
        )
        condition = step.condition
        if condition is None:
            return None if upstream_ok else "an upstream step did not succeed"
        if not condition.uses_status_function and not upstream_ok:
            return "an upstream step did not succeed"
        scope = self._scope(step, upstream_ok=upstream_ok)
        return None if condition.evaluate(scope) else f"condition is false: {step.step.when}"

    def _scope(self, step: CompiledStep, *, upstream_ok: bool = True,
               item: Any = None, index: int | None = None, in_foreach: bool = False) -> Scope:
        kwargs: dict[str, Any] = {}
        if in_foreach:
            kwargs = {"item": item, "index": index}
        return Scope(inputs=self.inputs, steps=self.views, upstream_success=upstream_ok,
                     upstream_failure=not self.failed.isdisjoint(step.ancestors), **kwargs)

    def _calls_for(self, step: CompiledStep) -> list[Call]:
        """The calls a started step makes; arguments are resolved and validated now."""
        sid = step.step.id
        tool = self.tools[step.tool or ""]
        if step.foreach is None:
            return [self._make_call(sid, step, tool, self._scope(step), None)]
        items = step.foreach.evaluate(self._scope(step))
        if not isinstance(items, list):
            raise AgentflowError(f"step {sid!r}: foreach must produce a list, "
                                 f"got {type(items).__name__}")
        return [
            self._make_call(f"{sid}[{i}]", step, tool,
                            self._scope(step, item=item, index=i, in_foreach=True), i)
            for i, item in enumerate(items)
        ]

    def _make_call(self, key: str, step: CompiledStep, tool: Tool, scope: Scope,
                   item_index: int | None) -> Call:
        record = self.journal.record(key)
        if record is not None and record.status in ("succeeded", "failed"):
            return Call(key, step, tool, None, record.args_hash, item_index)
        raw = step.args.evaluate(scope)
        hashed = args_hash(raw)
        if record is not None and record.args_hash not in (None, hashed):
            raise NonDeterminismError(self.journal.run_id, key,
                                      f"{record.tool}(args {record.args_hash})",
                                      f"{tool.name}(args {hashed})")
        args = tool.prepare_arguments(raw, f"step {step.step.id!r} ({key})")
        return Call(key, step, tool, args, hashed, item_index)

    def _claim_slots(self) -> list[Call]:
        """Take queued calls up to the concurrency limits and buffer their intents."""
        starting: list[Call] = []
        busy = len(self.running) + len(self.delayed)
        for sid in list(self.launchable):
            if busy >= self.max_concurrency:
                break
            progress = self.progress[sid]
            limit = self.plan.steps[sid].step.max_parallel or self.max_concurrency
            while progress.queued and busy < self.max_concurrency and progress.running < limit:
                call = progress.queued.popleft()
                call.attempts += 1
                progress.running += 1
                busy += 1
                self.journal.add(call.key, "intent", {"args": call.args},
                                 attempt=call.attempts, tool=call.tool.name,
                                 hashed_args=call.hashed_args)
                starting.append(call)
            if not progress.queued:
                del self.launchable[sid]
        return starting

    def _can_run_inline(self, call: Call) -> bool:
        """A lone sync call with no timeout runs on the loop thread: nothing else could run."""
        return not call.tool.is_async and call.step.step.timeout is None

    # -- running and settling calls ------------------------------------------------

    def _context(self, call: Call) -> ToolContext:
        run_id = self.journal.run_id
        return ToolContext(run_id=run_id, step_id=call.step.step.id, call_key=call.key,
                           attempt=call.attempts, tenant_id=self.tenant_id,
                           idempotency_key=f"{self.tenant_id}/{run_id}/{call.key}")

    async def _invoke(self, call: Call) -> Any:
        return await invoke_tool(call.tool, call.args or {}, self._context(call),
                                 call.step.step.timeout, self.threads)

    def _settle_future(self, future: asyncio.Future[Any]) -> None:
        if future in self.delayed:
            call = self.delayed.pop(future)
            progress = self.progress[call.step.step.id]
            progress.queued.append(call)
            self.launchable[call.step.step.id] = None
            return
        call = self.running.pop(future)
        error = future.exception()
        if error is None:
            self._call_succeeded(call, future.result())
        elif isinstance(error, Exception):
            self._call_failed(call, error)
        else:
            raise error

    def _call_succeeded(self, call: Call, result: Any) -> None:
        self.progress[call.step.step.id].running -= 1
        self.journal.add(call.key, "result", result, attempt=call.attempts,
                         tool=call.tool.name)
        self._settle_call(call, call.item_index or 0, result, None)

    def _call_failed(self, call: Call, error: Exception) -> None:
        progress = self.progress[call.step.step.id]
        progress.running -= 1
        call.failures += 1
        policy = call.step.step.retry
        retry = (policy is not None and is_retryable(policy, error)
                 and call.failures < policy.max_attempts)
        info = {**error_info(error), "final": not retry}
        self.journal.add(call.key, "error", info, attempt=call.attempts, tool=call.tool.name)
        if retry and policy is not None:
            delay = asyncio.ensure_future(asyncio.sleep(retry_delay(policy, call.failures)))
            self.delayed[delay] = call
            return
        self._settle_call(call, call.item_index or 0, None, info)

    def _settle_call(self, call: Call, position: int, output: Any,
                     error: dict[str, Any] | None) -> None:
        sid = call.step.step.id
        progress = self.progress[sid]
        progress.outputs[position] = output
        if error is not None and progress.first_error is None:
            progress.first_error = error
        progress.unsettled -= 1
        if progress.unsettled:
            return
        del self.progress[sid]
        if call.step.foreach is not None and self.journal.record(sid) is None:
            self.journal.add(sid, "settled", {
                "status": "failed" if progress.first_error else "succeeded",
                "items": len(progress.calls)})
        if progress.first_error is not None:
            self._settle_step(sid, "failed", progress.outputs if call.step.foreach else None,
                              progress.first_error)
        else:
            self._settle_step(sid, "succeeded",
                              progress.outputs if call.step.foreach else progress.outputs[0],
                              None)

    def _settle_step(self, sid: str, status: str, output: Any,
                     error: dict[str, Any] | None) -> None:
        message = None if error is None else error.get("message") or error.get("reason")
        self.views[sid] = StepView(status=status, output=output, error=message)
        step = self.plan.steps[sid]
        if status == "failed" and not step.step.continue_on_error:
            self.failed.add(sid)
            if self.first_failure is None:
                self.first_failure = {"step": sid, **(error or {})}
        for dependent in step.dependents:
            self.unsettled_deps[dependent] -= 1
            if self.unsettled_deps[dependent] == 0:
                self.ready.append(dependent)

    # -- the end ----------------------------------------------------------------------

    def _outcome(self) -> GraphOutcome:
        if self.first_failure is not None:
            error = {key: value for key, value in self.first_failure.items() if key != "final"}
            return GraphOutcome("failed", self._outputs_or_none(), error)
        try:
            outputs = self.plan.outputs.evaluate(Scope(inputs=self.inputs, steps=self.views))
        except AgentflowError as error:
            return GraphOutcome("failed", None, {"step": None, **error_info(error)})
        return GraphOutcome("completed", outputs, None)

    def _outputs_or_none(self) -> Any:
        try:
            return self.plan.outputs.evaluate(Scope(inputs=self.inputs, steps=self.views))
        except AgentflowError:
            return None
