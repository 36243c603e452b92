"""The engine compiles a plan once per content and tools: many runs of one plan are
validated once, and nothing else can make it skip a validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentflow import Engine, code_plan, tool
from agentflow.engine.compiling import CompiledPlans
from agentflow.errors import PlanValidationError
from agentflow.tools import Tool


def echo_tool() -> Tool:
    @tool
    def echo(x: int) -> int:
        return x

    return echo


PLAN: dict[str, Any] = {"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]}


def test_the_same_plan_with_the_same_tools_is_compiled_once() -> None:
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    first = plans.compile(copy.deepcopy(PLAN), tools)
    assert plans.compile(copy.deepcopy(PLAN), dict(tools)) is first
    source = code_plan("return echo(x=1)")
    assert plans.compile(source, tools) is plans.compile(code_plan("return echo(x=1)"), tools)


def test_other_content_or_other_tool_objects_compile_again() -> None:
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    first = plans.compile(PLAN, tools)
    changed = {"steps": [{"id": "a", "tool": "echo", "args": {"x": 2}}]}
    assert plans.compile(changed, tools) is not first
    assert plans.compile(PLAN, {"echo": echo_tool()}) is not first  # same name, new tool
    with pytest.raises(PlanValidationError):
        plans.compile(PLAN, {})  # checked against these tools, not served from the cache


def test_an_invalid_plan_raises_every_time() -> None:
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    broken = {"steps": [{"id": "a", "tool": "nope"}]}
    for _ in range(2):
        with pytest.raises(PlanValidationError):
            plans.compile(broken, tools)


def test_the_cache_keeps_its_size() -> None:
    plans, tools = CompiledPlans(size=2), {"echo": echo_tool()}
    compiled = [plans.compile({"steps": [{"id": "a", "tool": "echo", "args": {"x": n}}]}, tools)
                for n in range(3)]
    again = plans.compile({"steps": [{"id": "a", "tool": "echo", "args": {"x": 0}}]}, tools)
    assert again is not compiled[0]  # the oldest was dropped
    assert plans.compile({"steps": [{"id": "a", "tool": "echo", "args": {"x": 2}}]},
                         tools) is compiled[2]


def test_runs_of_one_plan_share_its_compiled_form(tmp_path: Any) -> None:
    engine, echo = Engine(str(tmp_path / "runs.db")), echo_tool()
    for run_id in ("r1", "r2"):
        assert engine.execute(copy.deepcopy(PLAN), tools=[echo], run_id=run_id).outputs == {}
    assert len(engine._plans._entries) == 1
    engine.close()


def test_a_plan_is_measured_once_per_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    import agentflow.engine.loading as loading

    walks: list[Any] = []
    measure = loading.value_size
    monkeypatch.setattr(loading, "value_size",
                        lambda value, *rest: walks.append(value) or measure(value, *rest))
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    plans.compile(copy.deepcopy(PLAN), tools)  # as resume compiles a run's pinned plan
    assert walks == [PLAN]
    plans.compile(copy.deepcopy(PLAN) | {"name": "other"}, tools, checked=True)
    assert walks == [PLAN]  # load_plan measured it
    with pytest.raises(PlanValidationError, match="larger than"):
        plans.compile({"steps": [], "name": "x" * loading.MAX_PLAN_BYTES}, tools)


def stored(body: str, tenant: str = "t") -> Any:
    from agentflow.store import StoredPlan

    return StoredPlan(tenant, "h", "graph", body, 0.0)


def test_a_stored_plan_row_is_read_once_per_text_and_tools() -> None:
    """A worker executing many runs of one plan parses, measures and compiles its row
    once; a row of other text, another tenant's row or other tool objects compile again."""
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    extras: list[Any] = []

    def extra(data: Any) -> dict[str, Tool]:
        extras.append(data)
        return {}

    body = '{"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]}'
    first, data = plans.compile_stored(stored(body), tools, extra)
    assert data == PLAN and extras == [PLAN]
    assert plans.compile_stored(stored(body), dict(tools), extra) == (first, None)
    assert extras == [PLAN]  # not parsed again
    assert plans.compile_stored(stored(body, "u"), tools, extra)[1] == PLAN
    assert plans.compile_stored(stored(body), {"echo": echo_tool()}, extra)[1] == PLAN
    assert plans.compile_stored(stored(body.replace("1", "2")), tools, extra)[1] is not None
    assert len(extras) == 4


def test_a_stored_plan_that_adds_tools_is_compiled_each_time() -> None:
    """A row whose sub-plan references add tools (a child plan's schema, which may change)
    is never served from the row cache."""
    plans, tools = CompiledPlans(), {"echo": echo_tool()}
    body = '{"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]}'
    added = {"plan:child": echo_tool()}
    for _ in range(2):
        assert plans.compile_stored(stored(body), tools, lambda data: added)[1] == PLAN
