"""A tool of a JSON plan that raises anything ends its step cleanly (finding 1 of issue 9).

StopIteration raised into an asyncio future leaves the future pending forever, so a run
with two calls in flight hung (and with `timeout:` the call was reported as a StepTimeout);
SystemExit from a tool would have stopped the engine. Each must be a journaled step error.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, tool

RAISED = {
    "StopIteration": StopIteration("x"),
    "StopAsyncIteration": StopAsyncIteration("x"),
    "SystemExit": SystemExit(3),
    "GeneratorExit": GeneratorExit(),
}


def _tools(kind: str, is_async: bool) -> list[Any]:
    both_started = threading.Barrier(2, timeout=30)

    if is_async:
        @tool(name="boom")
        async def boom_async(x: int) -> int:
            await asyncio.to_thread(both_started.wait)
            raise RAISED[kind]
        boom = boom_async
    else:
        @tool(name="boom")
        def boom_sync(x: int) -> int:
            both_started.wait()
            raise RAISED[kind]
        boom = boom_sync

    @tool
    def other(x: int) -> int:
        both_started.wait()
        return x

    return [boom, other]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, 30])
@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("kind", sorted(RAISED))
def test_a_control_flow_exception_from_a_tool_fails_its_step(
        tmp_path: Path, kind: str, is_async: bool, timeout: float | None) -> None:
    boom_step: dict[str, Any] = {"id": "a", "tool": "boom", "args": {"x": 1}}
    if timeout is not None:
        boom_step["timeout"] = timeout
    plan = {"steps": [boom_step, {"id": "b", "tool": "other", "args": {"x": 2}}],
            "outputs": {"b": "${steps.b.output}"}}
    engine = Engine(str(tmp_path / "runs.db"))
    result = engine.execute(plan, tools=_tools(kind, is_async), run_id="r")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.step_id == "a"
    assert result.error.type == "ToolControlFlowError"
    assert f"tool 'boom' raised {kind}" in result.error.message
    assert result.steps["b"].status == "succeeded"  # the other call finished and was journaled
    journal = [(e.key, e.kind) for e in engine.journal("r")]
    assert ("a", "error") in journal and ("b", "result") in journal


@pytest.mark.timeout(60)
def test_a_retry_policy_applies_to_a_stop_iteration(tmp_path: Path) -> None:
    attempts: list[int] = []

    @tool
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise StopIteration
        return x

    @tool
    def other(x: int) -> int:
        return x

    plan = {"steps": [
        {"id": "a", "tool": "flaky", "args": {"x": 1}, "timeout": 30,
         "retry": {"max_attempts": 2, "initial_delay": 0, "retry_on": ["RuntimeError"]}},
        {"id": "b", "tool": "other", "args": {"x": 2}}],
        "outputs": {"a": "${steps.a.output}"}}
    result = Engine(str(tmp_path / "runs.db")).execute(plan, tools=[flaky, other])
    assert result.status == "completed"
    assert result.outputs == {"a": 1}
    assert attempts == [1, 1]
