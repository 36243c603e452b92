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
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from types import TracebackType
from typing import Any

from agentflow.errors import (
    AgentflowError,
    BudgetExceeded,
    IsolateCrashed,
    LeaseLost,
    LimitExceeded,
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
from agentflow.executors.children import SubPlans
from agentflow.executors.code_builtins import PlanBuiltins, plan_message, tool_error
from agentflow.executors.gates import gate_for
from agentflow.executors.graph import GraphOutcome
from agentflow.executors.identities import call_key
from agentflow.executors.journal import RunJournal, args_hash
from agentflow.executors.limits import value_size
from agentflow.executors.progress import Observer, ProgressEvent, notify
from agentflow.executors.waits import WaitBook
from agentflow.sandbox import (
    CompiledCodePlan,
    IsolatePool,
    Isolation,
    PlanError,
    SandboxLimits,
    default_pool,
    run_code_plan,
    run_isolated,
)
from agentflow.sandbox.shown import plain_text
from agentflow.tools import Tool, ToolContext, to_json_value


class CodeExecutor(PlanBuiltins):
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
                    answers=self._answers(), verify=self._verify_replayed,
                    tenant=self.tenant_id)
            except BaseException as error:
                return False, error

        try:
            ok, value = await self.loop.run_in_executor(self.threads, execute)
            outcome = self.outcome(ok, value)
        except BaseException:
            self._flush()
            raise
        if self.waits.unwritten or not self.journal.last_waits_for_end:
            # waits are written after the entries they follow
            self._flush()
        return outcome  # the last entries left are committed with the run's end

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
            return GraphOutcome("failed", None, {  # reported as an isolate reports it
                "step": self.last_key, "type": type(value).__name__,
                "message": plain_text(str(value) or repr(value))[:4096],
                **self._failure_line(value.__traceback__)})
        raise value

    # -- plan lines --------------------------------------------------------------------

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
                raise tool_error(tool.name, key, record.error or {})
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
                raise tool_error(tool.name, key, info) from None
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
                self.journal.commit_blocking()
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
                raise tool_error(tool.name, key, info) from None
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
