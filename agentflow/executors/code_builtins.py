"""The plan built-ins of a code plan's execution (`approve`, `sleep`, `wait_for_event`,
`now`, `run_plan`), and what every call position shares with them: the check that a call
answered from the journal is the journaled one, the plan line that made it, suspending.
`CodeExecutor` adds the tools and runs the plan.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from types import FrameType
from typing import Any, NoReturn

from agentflow.errors import (
    AgentflowError,
    LeaseLost,
    LimitExceeded,
    NonDeterminismError,
    StoreError,
    Suspension,
    ToolCallError,
)
from agentflow.executors.calls import error_info
from agentflow.executors.children import SUBPLAN_SUFFIX, SubPlans, child_failure
from agentflow.executors.gates import plan_approval
from agentflow.executors.identities import hash_matches
from agentflow.executors.journal import RunJournal, args_hash
from agentflow.executors.progress import Observer, ProgressEvent, notify
from agentflow.executors.waits import EventTimedOut, WaitBook
from agentflow.plan.models import check_event_name
from agentflow.sandbox import CALLING_LINE


class PlanBuiltins:
    """The built-ins' side of `CodeExecutor` (which sets these attributes)."""

    journal: RunJournal
    waits: WaitBook
    observer: Observer | None
    lock: threading.RLock
    last_key: str | None
    max_inline_wait: float
    inline_waited: float
    subplans: SubPlans | None
    filename: str  # the plan code's frames, to find lines

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
        given = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"sleep() needs a number of {name}, not {value!r:.60} (a "
                                f"{type(value).__name__})")
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
        check_event_name(name, "the rule of JSON plans and send_event")
        with self.lock:
            self._check_same_call(key, "wait_for_event", None)
            self._note_call(key, "wait_for_event", line)
            record = self.journal.record(key)
            if record is not None and record.status == "failed":
                raise tool_error("wait_for_event", key, record.error or {})
            done, payload = self.waits.event(key, step_id=key, name=str(name), timeout=timeout)
            if isinstance(payload, EventTimedOut):
                info = {"type": "StepTimeout", "message": f"no event {name!r} within "
                        f"{payload.timeout:g}s", "final": True}
                self.journal.add(key, "error", info, tool="wait_for_event")
                raise tool_error("wait_for_event", key, info)
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
                raise tool_error("run_plan", key, record.error or {})
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
        raise tool_error("run_plan", key, info)

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


def tool_error(tool: str, key: str, info: dict[str, Any]) -> ToolCallError:
    """The error plan code sees for a failed call, from its journaled error `info`."""
    return ToolCallError(tool, plan_message(str(info.get("message", ""))), key, info.get("type"))
