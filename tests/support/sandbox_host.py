"""A stand-in for the executor's side of the code-plan sandbox: bindings that record calls.

The real executor journals each call and raises `Suspension` to pause; these fakes keep only
what the sandbox tests need to observe: which bindings ran, with what, in which order.
"""

from __future__ import annotations

import datetime
import textwrap
import threading
from collections.abc import Callable
from typing import Any

from agentflow.errors import Suspension, ToolCallError
from agentflow.plan.code import code_plan
from agentflow.sandbox import CompiledCodePlan, SandboxLimits, compile_code_plan, run_code_plan
from agentflow.tools import Tool, tool


@tool
def list_issues(repo: str, label: str = "bug") -> list[dict[str, Any]]:
    """Issues of a repository with a label."""
    raise NotImplementedError


@tool
def triage(issue: dict[str, Any]) -> str:
    """A label for one issue."""
    raise NotImplementedError


@tool
def close_issue(number: int) -> None:
    """Close an issue."""


@tool
def note(text: str) -> str:
    """Record a line of text (the fake host keeps it)."""
    raise NotImplementedError


@tool
def fail(reason: str) -> None:
    """Always fails (the fake host raises ToolCallError)."""


TOOLS: dict[str, Tool] = {t.name: t for t in (list_issues, triage, close_issue, note, fail)}
ISSUES = [{"number": 1, "title": "crash"}, {"number": 2, "title": "typo"}]
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


class FakeHost:
    """Bindings for `run_code_plan`; `approve` and `wait_for_event` suspend unless told not to.

    Each binding takes the call's position first, as the executor's do; `positions` keeps
    them in call order.
    """

    def __init__(self, approved: bool | None = None) -> None:
        self.approved = approved
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.positions: list[str] = []
        self.stored_issues = [dict(issue) for issue in ISSUES]
        self._lock = threading.Lock()

    @property
    def tool_calls(self) -> list[tuple[str, dict[str, Any]]]:
        return [call for call in self.calls if call[0] in TOOLS]

    def _record(self, name: str, arguments: dict[str, Any], position: str = "") -> None:
        with self._lock:
            self.calls.append((name, arguments))
            self.positions.append(position)

    def _tool(self, name: str) -> Callable[..., Any]:
        def call(position: str, **kwargs: Any) -> Any:
            self._record(name, kwargs, position)
            if name == "list_issues":
                return self.stored_issues
            if name == "triage":
                return "bug" if "crash" in kwargs["issue"]["title"] else "chore"
            if name == "note":
                return kwargs["text"]
            if name == "fail":
                raise ToolCallError("fail", kwargs["reason"], step_id="call-1",
                                    error_type="RuntimeError")
            return None
        return call

    def approve(self, position: str, prompt: str, **details: Any) -> bool:
        self._record("approve", {"prompt": prompt, **details}, position)
        if self.approved is None:
            raise Suspension(f"waiting for approval: {prompt}")
        return self.approved

    def wait_for_event(self, position: str, name: str, timeout: float | None = None) -> Any:
        self._record("wait_for_event", {"name": name, "timeout": timeout}, position)
        raise Suspension(f"waiting for event {name}")

    def sleep(self, position: str, seconds: float = 0, **units: float) -> None:
        self._record("sleep", {"seconds": seconds, **units}, position)

    def now(self, position: str) -> datetime.datetime:
        self._record("now", {}, position)
        return NOW

    def bindings(self) -> dict[str, Callable[..., Any]]:
        return {**{name: self._tool(name) for name in TOOLS}, "approve": self.approve,
                "wait_for_event": self.wait_for_event, "sleep": self.sleep, "now": self.now}


def compile_source(source: str, tools: dict[str, Tool] | None = None) -> CompiledCodePlan:
    return compile_code_plan(code_plan(textwrap.dedent(source)), TOOLS if tools is None else tools)


def run_source(source: str, host: FakeHost | None = None, inputs: dict[str, Any] | None = None,
               limits: SandboxLimits | None = None) -> Any:
    """Compile and run `source` against `host` (a fresh FakeHost by default)."""
    return run_code_plan(compile_source(source), (host or FakeHost()).bindings(),
                         {"repo": "acme/app"} if inputs is None else inputs, limits)
