"""A plan's own JSON Schemas are matched in linear time (issue 9, finding 9, part 3).

The inputs schema of the issue held `"^(a+)+$"` with a 28-character default: Python's
backtracking `re` took 22 s, each character more doubling it. RE2 answers at once, and a
pattern it cannot run (backreferences, lookaround) is refused where it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, PlanValidationError, tool
from agentflow.plan.safe_schema import PlanSchemaValidator

CATASTROPHIC = "^(a+)+$"


@tool
def echo(value: Any) -> Any:
    return value


def plan_with_inputs(schema: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": {"type": "object", **schema},
            "steps": [{"id": "s", "tool": "echo", "args": {"value": "${inputs}"}}],
            "outputs": {"inputs": "${steps.s.output}"}}


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_with_its_default_is_answered_at_once(tmp_path: Path) -> None:
    # with `re`, this default (60 characters, then a mismatch) would take longer than the
    # age of the universe, and the test would time out
    default = "a" * 60 + "!"
    plan = plan_with_inputs({"properties": {"name": {"type": "string", "pattern": CATASTROPHIC,
                                                     "default": default}}})
    engine = Engine(str(tmp_path / "runs.db"), tools=[echo])
    with pytest.raises(PlanValidationError) as refused:
        engine.execute(plan, run_id="r")
    [issue] = refused.value.issues
    assert issue.path == "$.inputs.name" and "does not match '^(a+)+$'" in issue.message
    assert engine.list_runs() == []


@pytest.mark.timeout(60)
def test_inputs_that_miss_a_catastrophic_pattern_are_refused_at_once(tmp_path: Path) -> None:
    plan = plan_with_inputs({"properties": {"name": {"type": "string",
                                                     "pattern": CATASTROPHIC}}})
    engine = Engine(str(tmp_path / "runs.db"), tools=[echo])
    with pytest.raises(PlanValidationError) as refused:
        engine.execute(plan, inputs={"name": "a" * 60 + "!"}, run_id="r")
    [issue] = refused.value.issues
    assert issue.path == "$.inputs.name" and "does not match" in issue.message
    ok = engine.execute(plan, inputs={"name": "a" * 60}, run_id="ok")
    assert ok.outputs == {"inputs": {"name": "a" * 60}}


@pytest.mark.parametrize(("schema", "path"), [
    ({"properties": {"x": {"type": "string", "pattern": r"^(a)\1$"}}},
     "$.inputs.properties.x.pattern"),
    ({"patternProperties": {"(?=x)": {"type": "string"}}},
     '$.inputs.patternProperties["(?=x)"]'),
    ({"properties": {"x": {"prefixItems": [{"pattern": r"(?<=a)b"}]}}},
     "$.inputs.properties.x.prefixItems[0].pattern"),
])
def test_a_pattern_the_linear_engine_cannot_run_is_refused_where_it_is_written(
        tmp_path: Path, schema: dict[str, Any], path: str) -> None:
    engine = Engine(str(tmp_path / "runs.db"), tools=[echo])
    with pytest.raises(PlanValidationError) as refused:
        engine.execute(plan_with_inputs(schema), run_id="r")
    issues = [issue for issue in refused.value.issues if issue.code == "unsafe_pattern"]
    assert [issue.path for issue in issues] == [path]
    assert "cannot be matched in linear time" in issues[0].message
    assert engine.list_runs() == []  # nothing was started


def test_pattern_properties_and_additional_properties_follow_json_schema() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "integer"}},
              "patternProperties": {"^x-": {"type": "string"}},
              "additionalProperties": False}
    validator = PlanSchemaValidator(schema)
    assert list(validator.iter_errors({"id": 1, "x-a": "ok"})) == []
    messages = sorted(error.message for error in validator.iter_errors(
        {"id": 1, "x-a": 3, "other": True}))
    assert messages == ["3 is not of type 'string'",
                        "Additional properties are not allowed ('other' unexpected)"]


def test_unevaluated_properties_beside_pattern_properties_is_refused(tmp_path: Path) -> None:
    schema = {"patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    with pytest.raises(PlanValidationError, match="unevaluatedProperties cannot be combined"):
        Engine(str(tmp_path / "runs.db"), tools=[echo]).execute(plan_with_inputs(schema))
