"""Deciding what starts: the part of `GraphExecutor` that finds the steps that are ready,
skips those whose condition or dependencies say so, and makes their calls (one per foreach
item, with arguments resolved and validated when the step starts)."""

from __future__ import annotations

import time
from datetime import datetime

from agentflow.errors import AgentflowError, ExpressionError, LimitExceeded, NonDeterminismError
from agentflow.executors.calls import error_info
from agentflow.executors.gates import gate_for
from agentflow.executors.graph_settling import Settling
from agentflow.executors.graph_state import Call, StepProgress, same_flat_json
from agentflow.executors.identities import hash_matches
from agentflow.executors.journal import args_hash
from agentflow.executors.limits import value_size
from agentflow.executors.waits import GATE_SUFFIX
from agentflow.plan import CompiledStep, Scope
from agentflow.plan.models import MAX_SECONDS
from agentflow.tools import Tool, to_json_value


class Starting(Settling):
    """Starts the steps that are ready and makes their calls."""

    def _start_ready_steps(self) -> None:
        if self.stream_error is not None:
            return
        while self.ready:
            self._start_step(self.plan.steps[self.ready.popleft()])

    def _start_step(self, step: CompiledStep) -> None:
        sid = step.step.id
        recorded = self.journal.records.get(sid)
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
            if step.timeout is not None or step.step.timeout is not None:
                timeout = self._timeout(step)
                for call in calls:
                    call.timeout = timeout
        except AgentflowError as error:
            info = {**error_info(error), "final": True}
            self.journal.add(sid, "error", info)
            self._settle_step(sid, "failed", None, info)
            return
        if not calls:
            self._record_foreach_settled(sid, "succeeded", 0)
            self._settle_step(sid, "succeeded", [], None)
            return
        plain = True
        for call in calls:
            if call.kind != "tool" or call.gate is not None:
                plain = False
                break
        progress = StepProgress(calls, [None] * len(calls), len(calls), plain=plain)
        self.progress[sid] = progress
        records = self.journal.records
        for call in calls:
            record = records.get(call.key)
            if record is None or call.kind != "tool":
                progress.queued.append(call)
            elif record.status == "succeeded":
                self._settle_call(call, "succeeded", record.output, None)
            elif record.status == "failed":
                self._settle_call(call, "failed", None, record.error)
            else:
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
        views = self.views
        upstream_ok = True
        for dep in step.dependencies:
            if views[dep].status != "succeeded" and not self._counts_as_success(dep):
                upstream_ok = False
                break
        condition = step.condition
        if condition is None:
            return None if upstream_ok else "an upstream step did not succeed"
        if not condition.uses_status_function and not upstream_ok:
            return "an upstream step did not succeed"
        scope = self._scope(step, upstream_ok=upstream_ok)
        return None if condition.evaluate(scope) else f"condition is false: {step.step.when}"

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

    def _calls_for(self, step: CompiledStep) -> list[Call]:
        """The calls a started step makes; arguments are resolved and validated now."""
        sid = step.step.id
        if step.kind == "tool" and step.foreach is None:
            return [self._tool_call(sid, step, self.tools[step.tool or ""], self._scope(step),
                                    None)]
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
        where = f"step {step.step.id!r} ({key})"
        if record is not None and record.status in ("succeeded", "failed"):
            return Call(key, step, "tool", item_index, tool, None, None, record.args_hash,
                        where=where)
        raw = step.args.evaluate(scope)
        size: int | None = value_size(raw, self.journal.limits, where, "the arguments")
        hashed = args_hash(raw)
        args = tool.prepare_arguments(raw, where)
        approval = step.step.approval
        if approval is None and tool.requires_approval is False:
            gate = None  # what gate_for says then, without asking it
        else:
            plan_prompt = (str(step.prompt.evaluate(scope))
                           if step.prompt is not None and approval is not None else None)
            gate = gate_for(tool, raw, approval, plan_prompt)
        if record is not None and not hash_matches(record.args_hash, hashed):
            gate_record = self.journal.record(key + GATE_SUFFIX)
            if gate_record is None or not (gate_record.decision or {}).get("args"):
                raise NonDeterminismError(self.journal.run_id, key,
                                          f"{record.tool}(args {record.args_hash})",
                                          f"{tool.name}(args {hashed})")
        if same_flat_json(args, raw):
            journaled = args  # already JSON data, and measured
        else:
            journaled, size = to_json_value(args), None  # as the tool gets them, defaults
        return Call(key, step, "tool", item_index, tool, args, journaled, hashed, gate,
                    gate.prompt if gate is not None else "", size=size, where=where)
