"""The JSON step-graph executor: runs a compiled plan against a run's journal.

Scheduling happens in rounds on one asyncio loop. Each round settles what finished, decides
which steps can start (conditions, foreach lists, arguments), buffers their intents, commits
everything in one journal write and only then starts the calls. A call already recorded as
finished is never started again; one that was started but never finished (a crash) is
started again with the next attempt number and the same idempotency key.

Waits (approvals, timers, events) never hold a task: a call that must wait is parked, the
rest of the graph goes on, and when nothing else can run the outcome is "waiting" with the
time the run must be looked at again.

A streamed plan grows while it runs: `add_steps` takes each larger plan (the steps so far
unchanged, plus new ones), and the run does not end while the stream is open; it waits for
the next arrival instead. `close_stream` gives the whole plan (its outputs make the outcome);
`fail_stream` stops the run: nothing more starts, calls already running finish and are
journaled, and the run fails with the stream's error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentflow.errors import (
    AgentflowError,
    BudgetExceeded,
    ExpressionError,
    LeaseLost,
    LimitExceeded,
    NonDeterminismError,
    PlanValidationError,
    StepTimeout,
    ValidationIssue,
)
from agentflow.executors.budget import LIMIT_SUFFIX, Budget
from agentflow.executors.calls import error_info, invoke_tool, is_retryable, retry_delay
from agentflow.executors.children import SUBPLAN_SUFFIX, SubPlans, child_failure
from agentflow.executors.gates import gate_for
from agentflow.executors.identities import call_key, hash_matches
from agentflow.executors.journal import RunJournal, args_hash
from agentflow.executors.limits import value_size
from agentflow.executors.progress import Observer, ProgressEvent, notify
from agentflow.executors.waits import GATE_SUFFIX, Decision, EventTimedOut, WaitBook
from agentflow.plan import CompiledPlan, CompiledStep, Scope, StepView
from agentflow.plan.models import MAX_SECONDS, ApprovalSpec
from agentflow.tools import Tool, ToolContext, to_json_value

POLICY_GATE = ApprovalSpec(prompt="", on_reject="fail")


@dataclass
class Call:
    """One unit of work of a step: a tool call (one per foreach item), or a wait."""

    key: str
    step: CompiledStep
    kind: str  # tool | approval | timer | event
    item_index: int | None = None
    tool: Tool | None = None
    args: dict[str, Any] | None = None  # converted to the tool's parameter types
    raw: dict[str, Any] | None = None  # as JSON, as journaled
    hashed_args: str | None = None
    gate: ApprovalSpec | None = None
    prompt: str = ""
    due: float = 0.0
    idempotency_key: str = ""
    attempts: int = 0
    failures: int = 0
    timeout: float | None = None  # the step's, evaluated when it started

    @property
    def position(self) -> int:
        return self.item_index or 0


@dataclass
class StepProgress:
    """A started step whose calls have not all settled."""

    calls: list[Call]
    outputs: list[Any]
    unsettled: int
    running: int = 0
    first_error: dict[str, Any] | None = None
    rejection: dict[str, Any] | None = None
    queued: deque[Call] = field(default_factory=deque)
    blocked: list[Call] = field(default_factory=list)


class _Interrupted(Exception):
    """A tool call raised KeyboardInterrupt or SystemExit; the round re-raises `interrupt`
    once the calls still running are settled."""

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


@dataclass(frozen=True)
class GraphOutcome:
    status: str  # completed | failed | waiting
    outputs: Any
    error: dict[str, Any] | None
    wake_at: float | None = None


class GraphExecutor:
    """Interprets one run of a compiled plan. Create one per execution attempt."""

    def __init__(
        self, compiled: CompiledPlan, tools: Mapping[str, Tool], journal: RunJournal,
        waits: WaitBook, inputs: Mapping[str, Any], *, tenant_id: str, max_concurrency: int,
        threads: Executor, observer: Observer | None = None, max_inline_wait: float = 1.0,
        poll_interval: float = 0.5, budget: Budget | None = None, stream_open: bool = False,
        subplans: SubPlans | None = None,
    ) -> None:
        self.plan = compiled
        self.tools = tools
        self.journal = journal
        self.waits = waits
        self.inputs = inputs
        self.tenant_id = tenant_id
        self.max_concurrency = max_concurrency
        self.threads = threads
        self.observer = observer
        self.max_inline_wait = max_inline_wait
        self.poll_interval = poll_interval
        self.budget = budget or Budget(None, journal, tools)
        self.subplans = subplans
        self.views: dict[str, StepView] = {}
        self.failed_upstream: set[str] = set()  # failed steps and steps below a failure
        self.first_failure: dict[str, Any] | None = None
        self.unsettled_deps = {sid: len(s.dependencies) for sid, s in compiled.steps.items()}
        self.ready: deque[str] = deque(sid for sid, n in self.unsettled_deps.items() if n == 0)
        self.progress: dict[str, StepProgress] = {}
        self.launchable: dict[str, None] = {}  # steps with queued calls, in order
        self.running: dict[asyncio.Future[Any], Call] = {}
        self.delayed: dict[asyncio.Future[Any], Call] = {}
        self.timed_out: dict[str, concurrent.futures.Future[Any]] = {}  # still running
        self.stream_open = stream_open
        self.stream_error: Exception | None = None
        self._arrival: asyncio.Future[None] | None = None  # done when the stream moved

    async def run(self) -> GraphOutcome:
        poll: asyncio.Future[Any] | None = None
        try:
            while True:
                self._start_ready_steps()
                starting = self._dispatch()
                await self.journal.commit()
                self.waits.flush()
                if len(starting) == 1 and not self.running and not self.delayed \
                        and not self.stream_open and self._can_run_inline(starting[0]):
                    await self._run_inline(starting[0])
                    continue
                for call in starting:
                    self._emit("call_started", call)
                    self.running[asyncio.ensure_future(self._invoke(call))] = call
                blocked = self._has_blocked()
                if self.stream_error is not None and not self.running:
                    break
                if not self.running and not self.delayed:
                    if self.ready or self.launchable:
                        continue
                    if not self.stream_open:
                        if not blocked or not await self._wait_inline():
                            break
                        continue
                if blocked and poll is None:
                    poll = asyncio.ensure_future(asyncio.sleep(self.poll_interval))
                if self.stream_open and self._arrival is None:
                    self._arrival = asyncio.get_running_loop().create_future()
                pending = [*self.running, *self.delayed,
                           *(future for future in (poll, self._arrival) if future)]
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future is self._arrival:
                        self._arrival = None
                    elif future is poll:
                        poll = None
                        if self.waits.refresh() or self._timer_due():
                            self._unblock_all()
                    else:
                        self._settle_future(future)
        except BaseException as error:
            if not isinstance(error, LeaseLost):
                await self._settle_running()
            raise
        finally:
            for future in [*self.running, *self.delayed,
                           *(future for future in (poll, self._arrival) if future)]:
                future.cancel()
        self.journal.flush()
        self.waits.flush()
        return self._outcome()

    async def _settle_running(self) -> None:
        """Something ended the round (a tool raised KeyboardInterrupt or SystemExit, Ctrl-C,
        a store error): let the calls still running finish and journal them before the run
        is given back, so no completed call is lost and run again on resume. Nothing new
        starts. A second interrupt while waiting stops the wait."""
        running = list(self.running)
        if running:
            await asyncio.wait(running)
        for future in running:
            with contextlib.suppress(BaseException):
                self._settle_future(future)
        with contextlib.suppress(Exception):
            self.journal.flush()
            self.waits.flush()

    # -- a streamed plan -------------------------------------------------------------

    def add_steps(self, compiled: CompiledPlan) -> None:
        """Take the larger plan a stream has grown to. Its new steps are scheduled as their
        dependencies settle; PlanValidationError if it drops or redefines a step taken
        before (it may have run: the journal must match the plan that gets pinned)."""
        issues = [ValidationIssue("$.steps", "the plan drops or differs from this step as "
                                  "it was streamed before", step_id=sid, code="stream_changed")
                  for sid, old in self.plan.steps.items()
                  if sid not in compiled.steps or compiled.steps[sid].step != old.step]
        if issues:
            raise PlanValidationError(issues)
        new = [sid for sid in compiled.steps if sid not in self.plan.steps]
        self.plan = compiled
        for sid in new:
            unsettled = sum(dep not in self.views for dep in compiled.steps[sid].dependencies)
            self.unsettled_deps[sid] = unsettled
            if unsettled == 0:
                self.ready.append(sid)
        self._wake()

    def close_stream(self, final: CompiledPlan) -> None:
        """The whole plan arrived: take its last steps and its outputs; the run now ends
        when nothing more can run, as for a plan received whole."""
        self.add_steps(final)
        self.stream_open = False

    def fail_stream(self, error: Exception) -> None:
        """The plan will not be completed: start nothing more, let running calls finish
        (journaled), and fail the run with `error`."""
        self.stream_error = error
        self.stream_open = False
        self._wake()

    def _wake(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    # -- deciding what starts ---------------------------------------------------------

    def _start_ready_steps(self) -> None:
        if self.stream_error is not None:
            return
        while self.ready:
            self._start_step(self.plan.steps[self.ready.popleft()])

    def _start_step(self, step: CompiledStep) -> None:
        sid = step.step.id
        recorded = self.journal.record(sid)
        if recorded is not None and recorded.status == "skipped":
            self._settle_step(sid, "skipped", None, recorded.error)
            return
        try:
            skip_reason = self._skip_reason(step)
        except AgentflowError as error:  # a function in the condition could not evaluate
            info = {**error_info(error), "final": True}
            self.journal.add(sid, "error", info)
            self._settle_step(sid, "failed", None, info)
            return
        if skip_reason is not None:
            self.journal.add(sid, "skipped", {"reason": skip_reason})
            self._settle_step(sid, "skipped", None, {"reason": skip_reason})
            return
        try:
            calls = self._calls_for(step)
            timeout = self._timeout(step)
            for call in calls:
                call.timeout = timeout
        except AgentflowError as error:
            info = {**error_info(error), "final": True}
            self.journal.add(sid, "error", info)
            self._settle_step(sid, "failed", None, info)
            return
        progress = StepProgress(calls=calls, outputs=[None] * len(calls), unsettled=len(calls))
        self.progress[sid] = progress
        if not calls:
            self._record_foreach_settled(sid, "succeeded", 0)
            del self.progress[sid]
            self._settle_step(sid, "succeeded", [], None)
            return
        for call in calls:
            record = self.journal.record(call.key)
            if call.kind == "tool" and record is not None and record.status == "succeeded":
                self._settle_call(call, "succeeded", record.output, None)
            elif call.kind == "tool" and record is not None and record.status == "failed":
                self._settle_call(call, "failed", None, record.error)
            else:
                if record is not None and call.kind == "tool":
                    call.attempts = record.attempts
                    call.failures = len(record.errors)
                progress.queued.append(call)
        if progress.queued:
            self.launchable[sid] = None

    def _counts_as_success(self, sid: str) -> bool:
        view = self.views[sid]
        step = self.plan.steps[sid].step
        if view.status == "succeeded":
            return True
        if view.status == "failed":
            return self._continues_on_error(self.plan.steps[sid])
        if view.status == "rejected":
            return step.approval is not None and step.approval.on_reject == "continue"
        return False

    def _skip_reason(self, step: CompiledStep) -> str | None:
        upstream_ok = all(self._counts_as_success(dep) for dep in step.dependencies)
        condition = step.condition
        if condition is None:
            return None if upstream_ok else "an upstream step did not succeed"
        if not condition.uses_status_function and not upstream_ok:
            return "an upstream step did not succeed"
        scope = self._scope(step, upstream_ok=upstream_ok)
        return None if condition.evaluate(scope) else f"condition is false: {step.step.when}"

    def _scope(self, step: CompiledStep, *, upstream_ok: bool = True,
               item: Any = None, index: int | None = None) -> Scope:
        failure = not self.failed_upstream.isdisjoint(step.dependencies)
        return Scope(inputs=self.inputs, steps=self.views, item=item, index=index,
                     upstream_success=upstream_ok, upstream_failure=failure,
                     max_text=self.journal.limits.max_value_bytes)

    def _timeout(self, step: CompiledStep) -> float | None:
        """The step's timeout in seconds: as written, or what its reference or expression
        gives now (a positive number of at most MAX_SECONDS, or null for none)."""
        if step.timeout is None:
            written = step.step.timeout
            return None if written is None or isinstance(written, str) else float(written)
        value = step.timeout.evaluate(self._scope(step))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 < value <= MAX_SECONDS:
            raise ExpressionError(str(step.step.timeout), f"$.steps[{step.index}].timeout",
                                  f"timeout must be a number of seconds in (0, {MAX_SECONDS}], "
                                  f"not {value!r}")
        return float(value)

    def _continues_on_error(self, step: CompiledStep) -> bool:
        """Whether a failure of `step` lets the run go on (a computed setting is evaluated
        with the results its step could see)."""
        if step.continue_on_error is None:
            return bool(step.step.continue_on_error)
        try:
            return bool(step.continue_on_error.evaluate(self._scope(step)))
        except AgentflowError:
            return False  # cannot tell: the failure counts

    def _calls_for(self, step: CompiledStep) -> list[Call]:
        """The calls a started step makes; arguments are resolved and validated now."""
        sid = step.step.id
        if step.kind == "approval":
            prompt = step.prompt.evaluate(self._scope(step)) if step.prompt else ""
            return [Call(sid, step, "approval", prompt=str(prompt),
                         hashed_args=args_hash({"prompt": prompt}), gate=step.step.approval)]
        if step.kind in ("sleep", "wait_until"):
            return [Call(sid, step, "timer", due=self._due(step))]
        if step.kind == "plan":
            return [Call(sid, step, "plan", raw=step.args.evaluate(self._scope(step)))]
        if step.kind == "wait_for_event":
            return [Call(sid, step, "event")]
        tool = self.tools[step.tool or ""]
        if step.foreach is None:
            return [self._tool_call(sid, step, tool, self._scope(step), None)]
        items = step.foreach.evaluate(self._scope(step))
        if not isinstance(items, list):
            raise AgentflowError(f"step {sid!r}: foreach must produce a list, "
                                 f"got {type(items).__name__}")
        limit = self.journal.limits.max_foreach_items
        if len(items) > limit:
            raise LimitExceeded("max_foreach_items", limit, f"step {sid!r}",
                                f"foreach gives {len(items)} items")
        return [self._tool_call(f"{sid}[{i}]", step, tool,
                                self._scope(step, item=item, index=i), i)
                for i, item in enumerate(items)]

    def _due(self, step: CompiledStep) -> float:
        recorded = self.waits.timer_due(step.step.id)
        if recorded is not None:
            return recorded
        if step.kind == "sleep":
            return time.time() + float(step.step.sleep or 0.0)
        value = step.wait_until.evaluate(self._scope(step)) if step.wait_until else None
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            raise AgentflowError(f"step {step.step.id!r}: wait_until {value!r} is not an "
                                 "ISO-8601 time") from None
        if moment.tzinfo is None:
            raise AgentflowError(f"step {step.step.id!r}: wait_until {value!r} has no "
                                 "time zone")
        return moment.timestamp()

    def _tool_call(self, key: str, step: CompiledStep, tool: Tool, scope: Scope,
                   item_index: int | None) -> Call:
        record = self.journal.record(key)
        if record is not None and record.status in ("succeeded", "failed"):
            return Call(key, step, "tool", item_index, tool, None, None, record.args_hash)
        raw = step.args.evaluate(scope)
        value_size(raw, self.journal.limits, f"step {step.step.id!r} ({key})", "the arguments")
        hashed = args_hash(raw)
        args = tool.prepare_arguments(raw, f"step {step.step.id!r} ({key})")
        plan_prompt = (str(step.prompt.evaluate(scope))
                       if step.prompt is not None and step.step.approval is not None else None)
        gate = gate_for(tool, raw, step.step.approval, plan_prompt)
        gate_record = self.journal.record(key + GATE_SUFFIX)
        edited = gate_record is not None and (gate_record.decision or {}).get("args")
        if record is not None and not edited and not hash_matches(record.args_hash, hashed):
            raise NonDeterminismError(self.journal.run_id, key,
                                      f"{record.tool}(args {record.args_hash})",
                                      f"{tool.name}(args {hashed})")
        return Call(key, step, "tool", item_index, tool, args, to_json_value(args), hashed, gate,
                    gate.prompt if gate is not None else "")

    def _dispatch(self) -> list[Call]:
        """Resolve waits and approval gates, then take queued tool calls up to the
        concurrency limits and buffer their intents."""
        starting: list[Call] = []
        if self.stream_error is not None:
            return starting
        busy = len(self.running) + len(self.delayed)
        for sid in list(self.launchable):
            progress = self.progress[sid]
            limit = self.plan.steps[sid].step.max_parallel or self.max_concurrency
            waiting: deque[Call] = deque()
            while progress.queued:
                call = progress.queued.popleft()
                if call.kind != "tool" or call.gate is not None:
                    if not self._resolve_wait(call, progress):
                        progress.blocked.append(call)
                    continue
                if busy >= self.max_concurrency or progress.running >= limit:
                    waiting.append(call)
                    continue
                if call.tool is not None and not self._within_budget(call, progress):
                    continue
                if not self._admitted(call):
                    continue
                call.idempotency_key = call_key(
                    self.journal.record(call.key), self.tenant_id, self.journal.run_id,
                    call.key, call.hashed_args or "")
                call.attempts += 1
                progress.running += 1
                busy += 1
                self.journal.add(call.key, "intent", {"args": call.raw},
                                 attempt=call.attempts, tool=call.tool.name if call.tool else None,
                                 hashed_args=call.hashed_args)
                starting.append(call)
            progress.queued = waiting
            if not waiting and sid in self.launchable:
                del self.launchable[sid]
        return starting

    def _within_budget(self, call: Call, progress: StepProgress) -> bool:
        """False when the call could overspend the run: the call failed, never made, or
        (a budget with `on_limit="approval"`) blocked on an approval to go past the limit."""
        assert call.tool is not None
        try:
            self.budget.check(call.tool, call.raw or {}, call.key)
        except BudgetExceeded as error:
            if self.budget.on_limit == "approval":
                prompt = f"{error}. Allow this call?"
                decision = self.waits.approval(
                    call.key + LIMIT_SUFFIX, step_id=call.step.step.id, spec=POLICY_GATE,
                    prompt=prompt, tool=call.tool.name, args=call.raw,
                    hashed_args=call.hashed_args or "", args_schema=None)
                if decision is None:
                    progress.blocked.append(call)
                    self._emit("waiting", call, detail={"kind": "approval", "prompt": prompt})
                    return False
                if decision.approved:
                    self.budget.allow(call.key)
                    return True
            self._refuse(call, error)
            return False
        return True

    def _admitted(self, call: Call) -> bool:
        """False (and the call failed, never made) when the limits or the journal quotas
        refuse its arguments."""
        try:
            self.journal.admit(call.raw, f"step {call.step.step.id!r} ({call.key})",
                               "the arguments")
        except LimitExceeded as error:
            self._refuse(call, error)
            return False
        return True

    def _refuse(self, call: Call, error: AgentflowError) -> None:
        """Fail a call that must not be made (for good: no retry), journaling why."""
        info = {**error_info(error), "final": True}
        self.journal.add(call.key, "error", info, tool=call.tool.name if call.tool else None)
        self._settle_call(call, "failed", None, info)

    def _resolve_wait(self, call: Call, progress: StepProgress) -> bool:
        """Settle a wait call, or clear a tool call's approval gate. False while blocked."""
        sid = call.step.step.id
        if call.kind == "timer":
            if not self.waits.timer(call.key, step_id=sid, due=call.due,
                                    marker=call.step.kind):
                self._emit("waiting", call, detail={"kind": "timer", "due": call.due})
                return False
            self._settle_call(call, "succeeded", None, None)
            return True
        if call.kind == "plan":
            return self._resolve_subplan(call)
        if call.kind == "event":
            name = call.step.step.wait_for_event or ""
            done, payload = self.waits.event(call.key, step_id=sid, name=name,
                                             timeout=call.timeout)
            if not done:
                self._emit("waiting", call, detail={"kind": "event", "name": name})
                return False
            if isinstance(payload, EventTimedOut):
                error = StepTimeout(f"step {sid!r}: no event {name!r} within "
                                    f"{payload.timeout:g}s")
                self._settle_call(call, "failed", None, {**error_info(error), "final": True})
            else:
                self._settle_call(call, "succeeded", payload, None)
            return True
        spec = call.gate or POLICY_GATE
        is_gate = call.kind == "tool"
        try:
            decision = self.waits.approval(
                call.key + GATE_SUFFIX if is_gate else call.key, step_id=sid, spec=spec,
                prompt=call.prompt, tool=call.tool.name if call.tool else None,
                args=call.raw if is_gate else None, hashed_args=call.hashed_args or "",
                args_schema=call.tool.input_schema if call.tool else None)
        except NonDeterminismError as error:  # decided for other arguments: never run it
            self._refuse(call, error)
            return True
        if decision is None:
            self._emit("waiting", call, detail={"kind": "approval", "prompt": call.prompt})
            return False
        if decision.approved:
            if not is_gate:
                self._settle_call(call, "succeeded", decision.output(), None)
                return True
            call.gate = None
            if decision.args is not None and call.tool is not None:
                try:
                    call.args = call.tool.prepare_arguments(decision.args, f"step {sid!r}")
                except AgentflowError as error:
                    self._settle_call(call, "failed", None, {**error_info(error), "final": True})
                    return True
                call.raw = decision.args
                call.hashed_args = args_hash(decision.args)
            progress.queued.append(call)
            return True
        self._reject(call, spec, decision)
        return True

    def _resolve_subplan(self, call: Call) -> bool:
        """Start (once) the child run of a plan step and wait for its end: an event the
        engine sends when the child finishes (waited for under `KEY@plan`). The step's own
        journal key then holds the child's outputs, or its error. False while waiting."""
        sid = call.step.step.id
        recorded = self.journal.record(call.key)
        if recorded is not None and recorded.status in ("succeeded", "failed"):
            self._settle_call(call, recorded.status, recorded.output,
                              None if recorded.status == "succeeded" else recorded.error)
            return True
        try:
            if self.subplans is None:
                raise AgentflowError(f"step {sid!r}: plan steps run only through a tenant "
                                     "(engine.tenant(...).execute)")
            name = self.subplans(call.key, call.step.step.plan or "", call.raw or {})
        except AgentflowError as error:
            self._fail_subplan(call, {**error_info(error), "final": True})
            return True
        done, ended = self.waits.event(call.key + SUBPLAN_SUFFIX, step_id=sid, name=name,
                                       timeout=None)
        if not done:
            self._emit("waiting", call, detail={"kind": "plan", "name": name})
            return False
        ended = ended if isinstance(ended, dict) else {}
        if ended.get("status") == "completed":
            self.journal.add(call.key, "result", ended.get("outputs"), tool="plan")
            self._settle_call(call, "succeeded", ended.get("outputs"), None)
        else:
            self._fail_subplan(call, child_failure(call.step.step.plan or "", ended))
        return True

    def _fail_subplan(self, call: Call, info: dict[str, Any]) -> None:
        self.journal.add(call.key, "error", info, tool="plan")
        self._settle_call(call, "failed", None, info)

    def _reject(self, call: Call, spec: ApprovalSpec, decision: Decision) -> None:
        """Settle a call whose approval was refused (or expired), as `spec` says."""
        if decision.fail or spec.on_reject == "fail":
            status, output = "failed", None
            error = ({"type": "ApprovalExpired", "message": decision.reason or "expired"}
                     if decision.fail else
                     {"type": "ApprovalRejected",
                      "message": f"rejected by {decision.by}: {decision.reason or 'no reason'}"})
        else:
            status = "rejected"
            output = decision.output() if call.kind == "approval" else None
            error = {"type": "ApprovalRejected", "message": decision.reason or "rejected"}
        if call.kind == "tool" and self.journal.record(call.key) is None:
            kind = "error" if status == "failed" else "rejected"
            self.journal.add(call.key, kind, {**error, "final": True},
                             tool=call.tool.name if call.tool else None)
        self._settle_call(call, status, output, {**error, "final": True})

    def _has_blocked(self) -> bool:
        return any(progress.blocked for progress in self.progress.values())

    def _unblock_all(self) -> None:
        self.waits.begin_round()
        for sid, progress in self.progress.items():
            if progress.blocked:
                progress.queued.extend(progress.blocked)
                progress.blocked.clear()
                self.launchable[sid] = None

    def _timer_due(self) -> bool:
        wake = self.waits.wake_at()
        return wake is not None and wake <= time.time()

    async def _wait_inline(self) -> bool:
        """Nothing runs and something waits: sleep here if it is due soon, else give up
        (the run is saved as waiting). True if the blocked calls should be tried again."""
        if self.waits.refresh() or self._timer_due():
            self._unblock_all()
            return True
        wake = self.waits.wake_at()
        if wake is None or wake - time.time() > self.max_inline_wait:
            return False
        await asyncio.sleep(max(0.0, wake - time.time()))
        self.waits.refresh()
        self._unblock_all()
        return True

    def _can_run_inline(self, call: Call) -> bool:
        """A lone sync call with no timeout runs on the loop thread: nothing else could run."""
        return call.tool is not None and not call.tool.is_async and call.timeout is None

    # -- running and settling calls ------------------------------------------------

    def _context(self, call: Call) -> ToolContext:
        return ToolContext(run_id=self.journal.run_id, step_id=call.step.step.id,
                           call_key=call.key, attempt=call.attempts, tenant_id=self.tenant_id,
                           idempotency_key=call.idempotency_key,
                           charger=self.budget.charger(call.key, call.attempts))

    async def _invoke(self, call: Call) -> Any:
        assert call.tool is not None
        self.journal.check_lease()
        try:
            return await invoke_tool(call.tool, call.args or {}, self._context(call),
                                     call.timeout, self.threads,
                                     functools.partial(self.timed_out.__setitem__, call.key))
        except (KeyboardInterrupt, SystemExit) as error:
            # Raised from a task, asyncio would tear it through the loop, past the round.
            raise _Interrupted(error) from None

    async def _run_inline(self, call: Call) -> None:
        assert call.tool is not None
        self._emit("call_started", call)
        self.journal.check_lease()
        try:
            result = await invoke_tool(call.tool, call.args or {}, self._context(call),
                                       None, None)
        except Exception as error:
            self._call_failed(call, error)
        else:
            self._call_succeeded(call, result)

    def _settle_future(self, future: asyncio.Future[Any]) -> None:
        if future in self.delayed:
            call = self.delayed.pop(future)
            self.progress[call.step.step.id].queued.append(call)
            self.launchable[call.step.step.id] = None
            return
        call = self.running.pop(future)
        error = future.exception()
        if error is None:
            self._call_succeeded(call, future.result())
        elif isinstance(error, _Interrupted):
            raise error.interrupt
        elif isinstance(error, Exception) and not isinstance(error, LeaseLost):
            self._call_failed(call, error)
        else:
            raise error

    async def _pause_before_retry(self, call: Call, seconds: float) -> None:
        """Wait out the retry delay and, unless the tool allows overlapping attempts, the
        end of an attempt that timed out but still runs (a sync tool cannot be stopped)."""
        await asyncio.sleep(seconds)
        attempt = self.timed_out.pop(call.key, None)
        if attempt is not None and not (call.tool and call.tool.overlapping_retries):
            await asyncio.wait([asyncio.wrap_future(attempt)])

    def _call_succeeded(self, call: Call, result: Any) -> None:
        try:
            self.journal.admit(result, f"step {call.step.step.id!r} ({call.key})", "the result")
        except LimitExceeded as error:
            self._call_failed(call, error)
            return
        self.progress[call.step.step.id].running -= 1
        if call.tool is not None:
            self.budget.charge(call.tool, result)
        self.journal.add(call.key, "result", result, attempt=call.attempts,
                         tool=call.tool.name if call.tool else None)
        self._emit("call_succeeded", call)
        self._settle_call(call, "succeeded", result, None)

    def _call_failed(self, call: Call, error: Exception) -> None:
        progress = self.progress[call.step.step.id]
        progress.running -= 1
        call.failures += 1
        policy = call.step.step.retry or (call.tool.retry_policy if call.tool else None)
        retry = (policy is not None and is_retryable(policy, error)
                 and call.failures < policy.max_attempts)
        info = {**error_info(error), "final": not retry}
        self.journal.add(call.key, "error", info, attempt=call.attempts,
                         tool=call.tool.name if call.tool else None)
        if retry and policy is not None:
            self._emit("call_retrying", call, detail=info)
            delay = asyncio.ensure_future(
                self._pause_before_retry(call, retry_delay(policy, call.failures)))
            self.delayed[delay] = call
            return
        self._emit("call_failed", call, detail=info)
        self._settle_call(call, "failed", None, info)

    def _settle_call(self, call: Call, status: str, output: Any,
                     error: dict[str, Any] | None) -> None:
        sid = call.step.step.id
        progress = self.progress[sid]
        progress.outputs[call.position] = output
        if status == "failed" and progress.first_error is None:
            progress.first_error = error
        if status == "rejected" and progress.rejection is None:
            progress.rejection = error
        progress.unsettled -= 1
        if progress.unsettled:
            return
        del self.progress[sid]
        self.launchable.pop(sid, None)
        foreach = call.step.foreach is not None
        final = ("failed" if progress.first_error is not None
                 else "rejected" if progress.rejection is not None else "succeeded")
        if foreach:
            self._record_foreach_settled(sid, final, len(progress.calls))
        output_value = progress.outputs if foreach else progress.outputs[0]
        self._settle_step(sid, final, output_value,
                          progress.first_error or progress.rejection)

    def _record_foreach_settled(self, sid: str, status: str, items: int) -> None:
        if self.journal.record(sid) is None:
            self.journal.add(sid, "settled", {"status": status, "items": items})

    def _settle_step(self, sid: str, status: str, output: Any,
                     error: dict[str, Any] | None) -> None:
        message = None if error is None else error.get("message") or error.get("reason")
        self.views[sid] = StepView(status=status, output=output, error=message)
        step = self.plan.steps[sid]
        is_failure = status == "failed" and not self._continues_on_error(step)
        if is_failure or not self.failed_upstream.isdisjoint(step.dependencies):
            self.failed_upstream.add(sid)
        if is_failure and self.first_failure is None:
            self.first_failure = {"step": sid, **(error or {})}
        if self.observer is not None:
            notify(self.observer, ProgressEvent("step_settled", self.journal.run_id, sid,
                                                status=status, detail=message))
        for dependent in step.dependents:
            self.unsettled_deps[dependent] -= 1
            if self.unsettled_deps[dependent] == 0:
                self.ready.append(dependent)

    def _emit(self, kind: Any, call: Call, detail: Any = None) -> None:
        if self.observer is not None:
            notify(self.observer, ProgressEvent(kind, self.journal.run_id, call.step.step.id,
                                                call.key, attempt=call.attempts,
                                                detail=detail))

    # -- the end ----------------------------------------------------------------------

    def _outcome(self) -> GraphOutcome:
        if self.stream_error is not None:
            return GraphOutcome("failed", None, {"step": None, **error_info(self.stream_error)})
        if self._has_blocked():
            return GraphOutcome("waiting", None, None, self.waits.wake_at())
        outputs, outputs_error = None, None
        try:
            outputs = self.plan.outputs.evaluate(Scope(inputs=self.inputs, steps=self.views))
            # stored with the run: bounded as a call's arguments and result are
            value_size(outputs, self.journal.limits, "$.outputs", "the outputs")
        except AgentflowError as unresolved:
            outputs_error = {"step": None, **error_info(unresolved)}
        if self.first_failure is not None:
            failure = {key: value for key, value in self.first_failure.items() if key != "final"}
            return GraphOutcome("failed", outputs, failure)
        if outputs_error is not None:
            return GraphOutcome("failed", None, outputs_error)
        return GraphOutcome("completed", outputs, None)
