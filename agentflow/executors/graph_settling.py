"""Running and settling calls: the part of `GraphExecutor` that invokes tools, retries
them, journals their results and settles steps (a failure ends the run unless the step
continues on error)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from agentflow.errors import AgentflowError, LeaseLost, LimitExceeded
from agentflow.executors.calls import (
    error_info,
    invoke_tool,
    is_retryable,
    retry_delay,
    run_inline,
)
from agentflow.executors.graph_state import Call, GraphState
from agentflow.executors.limits import value_size
from agentflow.executors.progress import ProgressEvent, notify
from agentflow.plan import CompiledStep, StepView
from agentflow.tools import ToolContext

_SCALARS = (int, str, float, bool, type(None))  # converting one costs nothing


class _Interrupted(Exception):
    """A tool call raised KeyboardInterrupt or SystemExit; the round re-raises `interrupt`
    once the calls still running are settled."""

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


class Settling(GraphState):
    """Runs calls and records how they and their steps ended."""

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
                                     functools.partial(self.timed_out.__setitem__, call.key),
                                     functools.partial(self._bound_result, call))
        except (KeyboardInterrupt, SystemExit) as error:
            # Raised from a task, asyncio would tear it through the loop, past the round.
            raise _Interrupted(error) from None

    def _run_inline(self, call: Call) -> None:
        assert call.tool is not None
        if self.observer is not None:
            self._emit("call_started", call)
        self.journal.check_lease()
        try:
            result = run_inline(call.tool, call.args or {},
                                functools.partial(self._context, call),
                                functools.partial(self._bound_result, call))
        except Exception as error:
            self._call_failed(call, error)
        else:
            self._call_succeeded(call, result)

    def _bound_result(self, call: Call, result: Any) -> None:
        """Refuse a result past the limits before it is converted to JSON data (work that
        grows with the result), as `_call_succeeded` would refuse it once converted."""
        if type(result) not in _SCALARS:
            value_size(result, self.journal.limits, call.where, "the result", floor=True)

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
            self.journal.admit(result, call.where, "the result")
        except LimitExceeded as error:
            self._call_failed(call, error)
            return
        self.progress[call.step.step.id].running -= 1
        tool = call.tool
        if tool is not None and tool.spends_tokens:
            self.budget.charge(tool, result)
        self.journal.add(call.key, "result", result, attempt=call.attempts,
                         tool=tool.name if tool else None)
        if self.observer is not None:
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
        progress.outputs[call.item_index or 0] = output
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
        if is_failure or (self.failed_upstream
                          and not self.failed_upstream.isdisjoint(step.dependencies)):
            self.failed_upstream.add(sid)
        if is_failure and self.first_failure is None:
            self.first_failure = {"step": sid, **(error or {})}
        if self.observer is not None:
            notify(self.observer, ProgressEvent("step_settled", self.journal.run_id, sid,
                                                status=status, detail=message))
        unsettled = self.unsettled_deps
        for dependent in step.dependents:
            unsettled[dependent] -= 1
            if not unsettled[dependent]:
                self.ready.append(dependent)

    def _emit(self, kind: Any, call: Call, detail: Any = None) -> None:
        if self.observer is not None:
            notify(self.observer, ProgressEvent(kind, self.journal.run_id, call.step.step.id,
                                                call.key, attempt=call.attempts,
                                                detail=detail))

    def _continues_on_error(self, step: CompiledStep) -> bool:
        """Whether a failure of `step` lets the run go on (a computed setting is evaluated
        with the results its step could see)."""
        if step.continue_on_error is None:
            return bool(step.step.continue_on_error)
        try:
            return bool(step.continue_on_error.evaluate(self._scope(step)))
        except AgentflowError:
            return False  # cannot tell: the failure counts
