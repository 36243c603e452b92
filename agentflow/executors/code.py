"""The code-plan executor: runs restricted Python, answering each call from the journal.

The program runs from the top on every execution. Each call of a tool or a plan built-in
comes with its position, numbered by the sandbox (`c1`, `c2`, ...; inside `parallel`, thunk
i of the call at `c3` numbers its calls `c3.i.c1`, ...). A position the journal already
holds is answered from it after checking that the call is the same one (tool name and
argument hash): a different call raises `NonDeterminismError` and executes nothing. A new
position journals its intent, commits, runs, and journals its result, which the next commit
makes durable. Whatever ends an execution (even KeyboardInterrupt), what was journaled is
committed before it returns or raises.

Waits raise `Suspension`, which plan code cannot catch; the run is then "waiting".

Each position also records the plan line that made the call (a tool call's intent carries
it; a built-in gets a "call" entry), and a failed run names the line that failed, so that
`show` can say `c3.0.c2 classify_issue line 20` instead of a bare key.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from types import FrameType, TracebackType
from typing import Any, NoReturn

from agentflow.errors import (
    AgentflowError,
    BudgetExceeded,
    IsolateCrashed,
    LeaseLost,
    LimitExceeded,
    NonDeterminismError,
    StoreError,
    Suspension,
    ToolCallError,
)
from agentflow.executors.budget import LIMIT_GATE, LIMIT_SUFFIX, Budget
from agentflow.executors.calls import (
    call_tool,
    error_info,
    invoke_tool,
    is_retryable,
    retry_delay,
)
from agentflow.executors.children import SUBPLAN_SUFFIX, SubPlans, child_failure
from agentflow.executors.gates import gate_for, plan_approval
from agentflow.executors.graph import GraphOutcome
from agentflow.executors.identities import call_key, hash_matches
from agentflow.executors.journal import RunJournal, args_hash
from agentflow.executors.limits import value_size
from agentflow.executors.progress import Observer, ProgressEvent, notify
from agentflow.executors.waits import EventTimedOut, WaitBook
from agentflow.plan.models import EVENT_NAME_PATTERN
from agentflow.sandbox import (
    CALLING_LINE,
    CompiledCodePlan,
    IsolatePool,
    Isolation,
    PlanError,
    SandboxLimits,
    default_pool,
    run_code_plan,
    run_isolated,
)
from agentflow.tools import Tool, ToolContext, to_json_value


class CodeExecutor:
    """Interprets one execution of a code plan. Create one per execution attempt."""

    def __init__(
        self, compiled: CompiledCodePlan, tools: Mapping[str, Tool], journal: RunJournal,
        waits: WaitBook, inputs: Mapping[str, Any], *, tenant_id: str, max_concurrency: int,
        threads: Executor, observer: Observer | None = None, max_inline_wait: float = 1.0,
        limits: SandboxLimits | None = None, budget: Budget | None = None,
        isolation: Isolation = "process", isolates: IsolatePool | None = None,
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
        self.limits = limits or SandboxLimits()
        self.isolation = isolation
        self.isolates = isolates
        self.budget = budget or Budget(None, journal, tools)
        self.subplans = subplans
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_key: str | None = None  # the latest position any thread took
        self.inline_waited = 0.0  # seconds this execution spent in inline sleeps
        self.filename = f"<plan {compiled.name}>"  # the plan code's frames, to find lines

    def bindings(self) -> dict[str, Callable[..., Any]]:
        """What plan code calls: each function takes the call's position first."""
        bindings: dict[str, Callable[..., Any]] = {
            name: self._tool_binding(tool) for name, tool in self.tools.items()}
        bindings.update(approve=self._approve, sleep=self._sleep, now=self._now,
                        wait_for_event=self._wait_for_event, run_plan=self._run_plan)
        return bindings

    async def run(self) -> GraphOutcome:
        self.loop = asyncio.get_running_loop()
        bindings = self.bindings()

        def execute() -> tuple[bool, Any]:
            # The outcome is returned, never raised through the future: a StopIteration
            # raised into an asyncio future would leave it pending forever.
            try:
                if self.isolation == "none":
                    return True, run_code_plan(self.plan, bindings, self.inputs, self.limits,
                                               max_concurrency=self.max_concurrency)
                return True, run_isolated(
                    self.isolates or default_pool(), self.plan.code, bindings, self.inputs,
                    self.limits, max_concurrency=self.max_concurrency,
                    answers=self._answers(), verify=self._verify_replayed)
            except BaseException as error:
                return False, error

        try:
            ok, value = await self.loop.run_in_executor(self.threads, execute)
        finally:
            self._flush()
        return self.outcome(ok, value)

    def outcome(self, ok: bool, value: Any) -> GraphOutcome:
        """The run's outcome from what the plan returned (ok) or raised; a signal that is not
        the plan's (KeyboardInterrupt, SystemExit, ...) and an isolate's crash are raised
        again."""
        if ok:
            try:  # the outputs are stored with the run: bounded as a call's result is
                value_size(value, self.journal.limits, "the plan's outputs", "its return value")
            except LimitExceeded as error:
                return GraphOutcome("failed", None, {"step": None, **error_info(error)})
            return GraphOutcome("completed", value, None)
        if isinstance(value, Suspension):
            return GraphOutcome("waiting", None, None, self.waits.wake_at())
        if isinstance(value, StoreError | LeaseLost):  # the store's trouble, not the plan's:
            raise value  # the execution stops and the run stays resumable
        if isinstance(value, IsolateCrashed):  # not the plan's doing: the execution failed,
            raise value  # and the engine's failure policy tries the run again later
        if isinstance(value, PlanError):  # what plan code raised in its isolate
            return GraphOutcome("failed", None, {**value.info,
                                                 "step": value.step or self.last_key})
        if isinstance(value, AgentflowError):
            position = getattr(value, "step_id", None) or getattr(value, "position", None)
            return GraphOutcome("failed", None, {
                "step": position or self.last_key, **error_info(value),
                **(self._failure_line(value.__traceback__) or self._recorded_line(position))})
        if isinstance(value, Exception):  # the plan's own exception ends the run as failed
            return GraphOutcome("failed", None, {
                "step": self.last_key, **error_info(value),
                **self._failure_line(value.__traceback__)})
        raise value

    # -- plan lines --------------------------------------------------------------------

    def _calling_line(self) -> int | None:
        """The plan line whose call reached the executor: from the stack when plan code runs
        in this process, else as the isolate reported it."""
        frame: FrameType | None = sys._getframe(2)
        for _ in range(16):
            if frame is None:
                break
            if frame.f_code.co_filename == self.filename:
                return frame.f_lineno
            frame = frame.f_back
        return CALLING_LINE.get()

    def _note_call(self, key: str, name: str, line: int | None) -> None:
        """Record which built-in a new position calls, and from which line."""
        if line is not None and self.journal.record(key) is None:
            self.journal.add(key, "call", {"line": line}, tool=name)

    def _failure_line(self, trace: TracebackType | None) -> dict[str, int]:
        """{"line": N} for the innermost plan line in `trace`, else nothing."""
        line = None
        while trace is not None:
            if trace.tb_frame.f_code.co_filename == self.filename:
                line = trace.tb_lineno
            trace = trace.tb_next
        return {} if line is None else {"line": line}

    def _recorded_line(self, position: str | None) -> dict[str, int]:
        """{"line": N} for the line journaled with a call (an isolate's errors carry no
        plan frames), else nothing."""
        record = self.journal.record(position) if position else None
        return {} if record is None or record.line is None else {"line": record.line}

    # -- the journal -------------------------------------------------------------------

    def _answers(self) -> dict[str, list[Any]]:
        """What an isolate may answer itself on replay: the journal's finished tool calls
        and `now()` values, by position (`[name, value]`, or `[name, None, error]`)."""
        answers: dict[str, list[Any]] = {}
        for key, record in self.journal.records.items():
            if record.tool not in self.tools and record.tool != "now":
                continue
            if record.status == "succeeded":
                answers[key] = [record.tool, record.output]
            elif record.status == "failed" and record.tool != "now":
                error = record.error or {}
                answers[key] = [record.tool, None, {
                    "type": "ToolCallError", "tool": record.tool, "step": key,
                    "detail": plan_message(str(error.get("message", ""))),
                    "error_type": error.get("type")}]
        return answers

    def _verify_replayed(self, key: str, name: str, kwargs: dict[str, Any]) -> None:
        """A call an isolate answered from `_answers`: it must be the journaled one."""
        self.last_key = key
        with self.lock:
            self._check_same_call(key, name, None if name == "now" else args_hash(kwargs),
                                  kwargs)

    def _flush(self) -> None:
        with self.lock:
            self.journal.flush()
            self.waits.flush()

    def _check_same_call(self, key: str, name: str, hashed: str | None,
                         args: Any = None) -> None:
        """Refuse to answer a position from the journal with another call's record."""
        record = self.journal.record(key)
        if record is None or record.tool is None:
            return
        if record.tool != name or (hashed is not None
                                   and not hash_matches(record.args_hash, hashed)):
            recorded = f", args {record.args}" if record.args is not None else ""
            replayed = f", args {args}" if args is not None else ""
            raise NonDeterminismError(
                self.journal.run_id, key,
                f"{record.tool}(args hash {(record.args_hash or '-')[:12]}{recorded})",
                f"{name}(args hash {(hashed or '-')[:12]}{replayed})")

    # -- tools ------------------------------------------------------------------------

    def _tool_binding(self, tool: Tool) -> Callable[..., Any]:
        def call(key: str, **kwargs: Any) -> Any:
            return self._call_tool(tool, key, kwargs)
        return call

    def _call_tool(self, tool: Tool, key: str, raw: dict[str, Any]) -> Any:
        line = self._calling_line()
        self.last_key = key
        hashed = args_hash(raw)
        with self.lock:
            self._check_same_call(key, tool.name, hashed, raw)
            record = self.journal.record(key)
            if record is not None and record.status == "succeeded":
                return record.output
            if record is not None and record.status == "failed":
                raise _tool_error(tool.name, key, record.error or {})
            try:
                self.journal.admit(raw, f"call {key}", "the arguments")
                args = tool.prepare_arguments(raw, f"call {key}")
                raw = to_json_value(args)  # what the tool gets, defaults included
                if tool.needs_approval(raw):
                    edited = self._gate(key, tool, raw, hashed)
                    if edited is not None:
                        args = tool.prepare_arguments(edited, f"call {key}")
                        raw = to_json_value(args)
            except AgentflowError as error:
                if isinstance(error, ToolCallError | StoreError | LeaseLost):
                    raise  # the store's trouble stops the execution; the run stays resumable
                info = {**error_info(error), "final": True}
                self.journal.add(key, "error", info, tool=tool.name, hashed_args=hashed)
                raise _tool_error(tool.name, key, info) from None
            self._within_budget(tool, key, raw, hashed)
            attempt = record.attempts if record is not None else 0
            failures = len(record.errors) if record is not None else 0
            idempotency_key = call_key(record, self.tenant_id, self.journal.run_id, key, hashed)
        policy = tool.retry_policy
        while True:
            attempt += 1
            with self.lock:
                self.journal.add(key, "intent", {"args": raw, "line": line}, attempt=attempt,
                                 tool=tool.name, hashed_args=hashed)
                self.journal.flush()
            notify(self.observer, ProgressEvent("call_started", self.journal.run_id, key,
                                                key, attempt=attempt))
            context = ToolContext(
                run_id=self.journal.run_id, step_id=key, call_key=key, attempt=attempt,
                tenant_id=self.tenant_id, idempotency_key=idempotency_key,
                charger=self.budget.charger(key, attempt))
            self.journal.check_lease()
            try:
                result = self._invoke(tool, args, context)
                self.journal.admit(result, f"call {key}", "the result")
            except (StoreError, LeaseLost):
                raise  # not the tool's failure: the execution stops, the run stays resumable
            except Exception as error:
                failures += 1
                retry = (policy is not None and is_retryable(policy, error)
                         and failures < policy.max_attempts)
                info = {**error_info(error), "final": not retry}
                with self.lock:
                    self.journal.add(key, "error", info, attempt=attempt, tool=tool.name)
                notify(self.observer, ProgressEvent(
                    "call_retrying" if retry else "call_failed", self.journal.run_id, key, key,
                    attempt=attempt, detail=info))
                if retry and policy is not None:
                    time.sleep(retry_delay(policy, failures))
                    continue
                raise _tool_error(tool.name, key, info) from None
            with self.lock:
                self.journal.add(key, "result", result, attempt=attempt, tool=tool.name)
                self.budget.charge(tool, result)
            notify(self.observer, ProgressEvent("call_succeeded", self.journal.run_id, key,
                                                key, attempt=attempt))
            return result

    def _within_budget(self, tool: Tool, key: str, raw: dict[str, Any], hashed: str) -> None:
        """Return once the call may be made; `BudgetExceeded` (journaled, the call never
        made) if it would pass a limit, unless the policy says `on_limit="approval"`: then
        the run waits for a person to let this one call past the limit."""
        try:
            self.budget.check(tool, raw, key)
            return
        except BudgetExceeded as error:
            refusal = error
        if self.budget.on_limit == "approval":
            decision = self.waits.approval(
                key + LIMIT_SUFFIX, step_id=key, spec=LIMIT_GATE,
                prompt=f"{refusal}. Allow this call?", tool=tool.name, args=raw,
                hashed_args=hashed, args_schema=None)
            if decision is None:
                self._wait(key, {"kind": "approval"})
            if decision.approved:
                self.budget.allow(key)
                return
        self.journal.add(key, "error", {**error_info(refusal), "final": True}, tool=tool.name,
                         hashed_args=hashed)
        raise refusal

    def _invoke(self, tool: Tool, args: dict[str, Any], context: ToolContext) -> Any:
        """Run the tool on this (plan) thread; async tools on the executor's loop."""
        if tool.is_async:
            assert self.loop is not None
            future = asyncio.run_coroutine_threadsafe(
                invoke_tool(tool, args, context, None, None), self.loop)
            return future.result()
        return call_tool(tool, args, context)

    def _gate(self, key: str, tool: Tool, raw: dict[str, Any],
              hashed: str) -> dict[str, Any] | None:
        """A tool whose policy requires approval waits for it. Returns the arguments an
        approver edited (None: as planned); a rejection is an error the plan sees (it may
        catch it and go another way)."""
        gate = gate_for(tool, raw, None)
        assert gate is not None
        decision = self.waits.approval(
            key + "@approval", step_id=key, spec=gate, prompt=gate.prompt, tool=tool.name,
            args=raw, hashed_args=hashed, args_schema=tool.input_schema)
        if decision is None:
            self._suspend()
        if not decision.approved:
            raise ToolCallError(tool.name, f"rejected by {decision.by}: "
                                f"{decision.reason or 'no reason'}", key, "ApprovalRejected")
        return decision.args

    # -- plan built-ins ---------------------------------------------------------------

    def _approve(self, key: str, prompt: str, **details: Any) -> bool:
        self.last_key = key
        line = self._calling_line()
        hashed = args_hash({"prompt": prompt, "details": details})
        with self.lock:
            self._check_same_call(key, "approve", hashed)
            self._note_call(key, "approve", line)
            spec = plan_approval(prompt, details, f"call {key}")
            decision = self.waits.approval(key, step_id=key, spec=spec, prompt=str(prompt),
                                           tool=None, args=details or None,
                                           hashed_args=hashed, args_schema=None)
        if decision is None:
            self._wait(key, {"kind": "approval"})
        if decision.fail:
            raise ToolCallError("approve", decision.reason or "approval expired", key,
                                "ApprovalExpired")
        return decision.approved

    def _sleep(self, key: str, seconds: float = 0.0, *, minutes: float = 0.0,
               hours: float = 0.0, days: float = 0.0) -> None:
        """A durable timer. Short ones are sat out inline, but no more than `max_inline_wait`
        in all per execution: a chain of short sleeps suspends like one long one."""
        self.last_key = key
        line = self._calling_line()
        total = float(seconds) + 60 * float(minutes) + 3600 * float(hours) + 86400 * float(days)
        if not math.isfinite(total) or total < 0:
            raise ValueError(f"sleep() needs a finite, non-negative duration, not {total!r}")
        with self.lock:
            self._check_same_call(key, "sleep", None)
            self._note_call(key, "sleep", line)
            due = self.waits.timer_due(key) or time.time() + total
        while True:
            with self.lock:
                if self.waits.timer(key, step_id=key, due=due):
                    return
            left = max(0.0, due - time.time())
            with self.lock:
                if self.inline_waited + left > self.max_inline_wait:
                    self._suspend()
                self.inline_waited += left
            time.sleep(left)

    def _wait_for_event(self, key: str, name: str, timeout: float | None = None) -> Any:
        self.last_key = key
        line = self._calling_line()
        if not isinstance(name, str) or re.fullmatch(EVENT_NAME_PATTERN, name) is None:
            raise ValueError(f"invalid event name {name!r}: use letters, digits, '_', '.', "
                             "':' and '-' (the rule of JSON plans and send_event)")
        with self.lock:
            self._check_same_call(key, "wait_for_event", None)
            self._note_call(key, "wait_for_event", line)
            record = self.journal.record(key)
            if record is not None and record.status == "failed":
                raise _tool_error("wait_for_event", key, record.error or {})
            done, payload = self.waits.event(key, step_id=key, name=str(name), timeout=timeout)
            if isinstance(payload, EventTimedOut):
                info = {"type": "StepTimeout", "message": f"no event {name!r} within "
                        f"{payload.timeout:g}s", "final": True}
                self.journal.add(key, "error", info, tool="wait_for_event")
                raise _tool_error("wait_for_event", key, info)
        if not done:
            self._suspend()
        return payload

    def _run_plan(self, key: str, plan: str, /, **inputs: Any) -> Any:
        """`run_plan(name, **inputs)`: run a registered plan ("name" or "name@version") as
        a child run of its own and return its outputs, as a `plan` step does (see
        `agentflow.engine.subplans`). A child that cannot start or does not complete is a
        `ToolCallError` the plan may catch."""
        self.last_key = key
        line = self._calling_line()
        call = {"plan": plan, "inputs": inputs}
        hashed = args_hash(call)
        with self.lock:
            self._check_same_call(key, "run_plan", hashed, call)
            record = self.journal.record(key)
            if record is not None and record.status == "succeeded":
                return record.output
            if record is not None and record.status == "failed":
                raise _tool_error("run_plan", key, record.error or {})
            if record is None:
                self.journal.add(key, "call", {"line": line, "plan": plan}, tool="run_plan",
                                 hashed_args=hashed)
            try:
                if not isinstance(plan, str):
                    raise AgentflowError(f"run_plan needs a plan name (a string), not "
                                         f"{type(plan).__name__}")
                if self.subplans is None:
                    raise AgentflowError("run_plan runs registered plans only through a "
                                         "tenant (engine.tenant(...).execute)")
                self.journal.admit(inputs, f"call {key}", "the inputs")
                event = self.subplans(key, plan, inputs, 0.0)
            except (StoreError, LeaseLost):
                raise  # the store's trouble stops the execution; the run stays resumable
            except AgentflowError as error:
                self._fail_child(key, {**error_info(error), "final": True})
            done, ended = self.waits.event(key + SUBPLAN_SUFFIX, step_id=key, name=event,
                                           timeout=None)
        if not done:
            self._wait(key, {"kind": "plan", "name": event})
        ended = ended if isinstance(ended, dict) else {}
        if ended.get("status") != "completed":
            self._fail_child(key, child_failure(plan, ended))
        outputs = ended.get("outputs")
        with self.lock:
            try:
                self.journal.admit(outputs, f"call {key}", "the outputs")
            except LimitExceeded as error:
                refused = {**error_info(error), "final": True}
            else:
                self.journal.add(key, "result", outputs, tool="run_plan")
                return outputs
        self._fail_child(key, refused)

    def _fail_child(self, key: str, info: dict[str, Any]) -> NoReturn:
        with self.lock:
            self.journal.add(key, "error", info, tool="run_plan")
        raise _tool_error("run_plan", key, info)

    def _now(self, key: str) -> float:
        self.last_key = key
        line = self._calling_line()
        with self.lock:
            self._check_same_call(key, "now", None)
            self._note_call(key, "now", line)
            record = self.journal.record(key)
            if record is not None and record.status == "succeeded":
                return float(record.output)
            value = time.time()
            self.journal.add(key, "result", value, tool="now")
            return value

    def _wait(self, key: str, detail: dict[str, Any]) -> NoReturn:
        """Tell the observer what the call at `key` waits for, and suspend."""
        notify(self.observer, ProgressEvent("waiting", self.journal.run_id, key, key,
                                            detail=detail))
        self._suspend()

    def _suspend(self) -> NoReturn:
        """Commit what is buffered, then unwind the plan: it must wait."""
        self._flush()
        raise Suspension()


# An absolute path or one under the home directory (not a URL's path, not "a/b" or "1/2").
_HOST_PATH = re.compile(r"(?<![\w:/.~-])~?/[^\s'\",;)\]}]+")


def plan_message(message: str) -> str:
    """A tool's error message as plan code sees it: host paths replaced by `<path>`.

    The journal keeps the full text for the operator; plan code (and whoever wrote it) learns
    neither the host's file layout nor its users' home directories."""
    return _HOST_PATH.sub("<path>", message)


def _tool_error(tool: str, key: str, info: dict[str, Any]) -> ToolCallError:
    return ToolCallError(tool, plan_message(str(info.get("message", ""))), key, info.get("type"))
