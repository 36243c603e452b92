"""Values a run cannot store: a tool result that is not JSON is a final error of that call
(never a retry, which would repeat the tool's effect), and text that is not valid Unicode
(a lone surrogate, from `os.fsdecode` of a name that is not UTF-8) is refused wherever it
would enter a run, with the place named."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, NotJsonData, PlanValidationError, code_plan, tool

UNDECODABLE = os.fsdecode(b"caf\xe9.txt")  # what os.listdir gives for a latin-1 name


@pytest.mark.parametrize(("returned", "named"), [
    (object(), "a object"), (float("nan"), "nan"), ({"name": UNDECODABLE}, "lone surrogate"),
])
def test_a_result_that_cannot_be_stored_is_final_not_retried(
    tmp_path: Path, returned: Any, named: str
) -> None:
    effects: list[int] = []

    @tool(retry={"max_attempts": 3, "initial_delay": 0.01})
    def side_effect() -> Any:
        effects.append(1)
        return returned

    plan = {"format": "agentflow/v1", "name": "bad",
            "steps": [{"id": "act", "tool": "side_effect", "args": {}}]}
    engine = Engine(str(tmp_path / "runs.db"))
    result = engine.execute(plan, tools=[side_effect], run_id="r")
    assert effects == [1]
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "NotJsonData"
    assert "the result of tool 'side_effect'" in result.error.message
    assert named in result.error.message


def test_an_undecodable_file_name_fails_the_run_cleanly_not_forever(tmp_path: Path) -> None:
    @tool
    def list_dir() -> list[str]:
        return [UNDECODABLE]

    @tool
    def open_file(name: str) -> str:
        return name

    plan = {"format": "agentflow/v1", "name": "files",
            "steps": [{"id": "ls", "tool": "list_dir", "args": {}},
                      {"id": "open", "tool": "open_file",
                       "args": {"name": "${steps.ls.output[0]}"}}]}
    engine = Engine(str(tmp_path / "runs.db"))
    result = engine.execute(plan, tools=[list_dir, open_file], run_id="r")
    assert result.status == "failed"
    assert result.error is not None and "$[0]" in result.error.message
    assert engine.resume("r", tools=[list_dir, open_file]).status == "failed"
    assert engine.store.get_run("default", "r").lease_owner is None  # type: ignore[union-attr]


def test_a_code_plan_tool_result_that_cannot_be_stored_is_not_retried(tmp_path: Path) -> None:
    effects: list[int] = []

    @tool(retry={"max_attempts": 3, "initial_delay": 0.01})
    def side_effect() -> Any:
        effects.append(1)
        return float("inf")

    engine = Engine(str(tmp_path / "runs.db"))
    result = engine.execute(code_plan("return side_effect()"), tools=[side_effect],
                            run_id="r")
    assert effects == [1] and result.status == "failed"
    assert result.error is not None and "not JSON data at $ (inf)" in result.error.message


def test_undecodable_text_is_refused_at_the_door(tmp_path: Path) -> None:
    plan = {"format": "agentflow/v1", "name": "wait",
            "inputs": {"type": "object", "properties": {"path": {"type": "string"}}},
            "steps": [{"id": "ev", "wait_for_event": "go"}]}
    engine = Engine(str(tmp_path / "runs.db"))
    with pytest.raises(PlanValidationError, match=r"\$\.path"):
        engine.execute(plan, inputs={"path": UNDECODABLE}, run_id="bad")
    assert engine.store.get_run("default", "bad") is None
    assert engine.execute(plan, inputs={"path": "ok"}, run_id="r").status == "waiting"
    with pytest.raises(NotJsonData, match="payload of event 'go'"):
        engine.send_event("r", "go", {"file": UNDECODABLE})
    assert engine.store.list_events("default", "r") == []
