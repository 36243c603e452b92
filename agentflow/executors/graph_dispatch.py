"""Dispatching calls: the part of `GraphExecutor` that admits the calls that may start
now (concurrency, budget) and resolves waits: approvals, timers, events and sub-plans."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from agentflow.errors import (
    AgentflowError,
    BudgetExceeded,
    LimitExceeded,
    NonDeterminismError,
    StepTimeout,
)
from agentflow.executors.budget import LIMIT_GATE, LIMIT_SUFFIX
from agentflow.executors.calls import error_info, retry_delay
from agentflow.executors.children import attempt_keys, child_failure, retries_child
from agentflow.executors.graph_settling import Settling
from agentflow.executors.graph_state import POLICY_GATE, Call, StepProgress
from agentflow.executors.identities import call_key
from agentflow.executors.journal import args_hash
from agentflow.executors.waits import GATE_SUFFIX, Decision, EventTimedOut
from agentflow.plan.models import ApprovalSpec


class Dispatching(Settling):
    """Chooses the calls that start now and parks or resolves the ones that wait."""

    def _dispatch(self) -> list[Call]:
        """Resolve waits and approval gates, then take queued tool calls up to the
        concurrency limits and buffer their intents."""
        starting: list[Call] = []
        if self.stream_error is not None:
            return starting
        busy = len(self.running) + len(self.delayed)
        most = self.max_concurrency
        journal, launchable, budgeted = self.journal, self.launchable, bool(self.budget.limits)
        for sid in list(launchable):
            progress = self.progress[sid]
            queued = progress.queued  # (the same deque until the end of the loop)
            limit = self.plan.steps[sid].step.max_parallel or most
            waiting: deque[Call] | None = None
            while queued:
                call = queued.popleft()
                tool = call.tool
                if call.kind != "tool" or call.gate is not None:
                    if not self._resolve_wait(call, progress):
                        progress.blocked.append(call)
                    continue
                if busy >= most or progress.running >= limit:
                    if progress.plain:  # all the others wait too: no need to look at them
                        queued.appendleft(call)
                        break
                    if waiting is None:
                        waiting = deque()
                    waiting.append(call)
                    continue
                if tool is not None and budgeted and not self._within_budget(call, progress):
                    continue
                if not self._admitted(call):
                    continue
                key = call.key
                call.idempotency_key = call_key(journal.records.get(key), self.tenant_id,
                                                journal.run_id, key, call.hashed_args or "")
                call.attempts += 1
                progress.running += 1
                busy += 1
                journal.add(key, "intent", {"args": call.raw}, attempt=call.attempts,
                            tool=tool.name if tool else None, hashed_args=call.hashed_args)
                starting.append(call)
            if waiting:  # then every call was taken from the queue
                progress.queued = waiting
            if not progress.queued and sid in launchable:
                del launchable[sid]
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
                    call.key + LIMIT_SUFFIX, step_id=call.step.step.id, spec=LIMIT_GATE,
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
            self.journal.admit(call.raw, call.where, "the arguments", size=call.size)
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
                call.raw, call.size = decision.args, None
                call.hashed_args = args_hash(decision.args)
            progress.queued.append(call)
            return True
        self._reject(call, spec, decision)
        return True

    def _resolve_subplan(self, call: Call) -> bool:
        """Start (once) the child run of a plan step and wait for its end: an event the
        engine sends when the child finishes (waited for under `KEY@plan`). The step's own
        journal key then holds the child's outputs, or its error; with `retry`, a failed
        child is followed by a new one (see `children`). False while waiting."""
        sid = call.step.step.id
        recorded = self.journal.record(call.key)
        if recorded is not None and recorded.status in ("succeeded", "failed"):
            self._settle_call(call, recorded.status, recorded.output,
                              None if recorded.status == "succeeded" else recorded.error)
            return True
        failures = len(recorded.errors) if recorded is not None else 0
        policy = call.step.step.retry
        child, wait = attempt_keys(call.key, failures + 1)
        try:
            if self.subplans is None:
                raise AgentflowError(f"step {sid!r}: plan steps run only through a tenant "
                                     "(engine.tenant(...).execute)")
            self.journal.admit(call.raw, f"step {sid!r}", "the inputs")
            delay = retry_delay(policy, failures) if policy is not None and failures else 0.0
            name = self.subplans(child, call.step.step.plan or "", call.raw or {}, delay)
        except AgentflowError as error:
            self._fail_subplan(call, {**error_info(error), "final": True})
            return True
        done, ended = self.waits.event(wait, step_id=sid, name=name, timeout=None)
        if not done:
            self._emit("waiting", call, detail={"kind": "plan", "name": name})
            return False
        ended = ended if isinstance(ended, dict) else {}
        if ended.get("status") == "completed":
            try:
                self.journal.admit(ended.get("outputs"), f"step {sid!r}", "the outputs")
            except LimitExceeded as error:
                self._fail_subplan(call, {**error_info(error), "final": True})
                return True
            self.journal.add(call.key, "result", ended.get("outputs"), tool="plan")
            self._settle_call(call, "succeeded", ended.get("outputs"), None)
            return True
        info = child_failure(call.step.step.plan or "", ended)
        if retries_child(policy, failures + 1, ended):
            self.journal.add(call.key, "error", {**info, "final": False},
                             attempt=failures + 1, tool="plan")
            self._emit("call_retrying", call, detail=info)
            return self._resolve_subplan(call)
        self._fail_subplan(call, info)
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
