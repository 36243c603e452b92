"""`plan_for`: a goal in, a validated plan out, repaired from validation issues.

The real openai client talks to the scripted server of `tests/support/openai_server.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentflow import execute_plan, plan_schema, tool
from agentflow.llm import PlanningFailed, plan_for
from agentflow.llm.schema import decode_strict_plan, encode_strict_plan, strict_plan_schema
from agentflow.plan.code import CodePlan
from tests.support.openai_server import OpenAIServer, strict_problems


@tool
def run_tests(ref: str) -> dict[str, bool]:
    """Run the test suite at `ref`."""
    return {"passed": True}


@tool
def build(ref: str) -> dict[str, str]:
    """Build a release artifact from `ref`."""
    return {"artifact": f"app-{ref}.whl"}


TOOLS = [run_tests, build]
GOAL = "Test v2, then build it."
FIXED: dict[str, Any] = {
    "format": "agentflow/v1", "name": "release",
    "steps": [{"id": "test", "tool": "run_tests", "args": {"ref": "v2"}},
              {"id": "build", "tool": "build", "args": {"ref": "v2"},
               "when": "steps.test.output.passed"}],
    "outputs": {"artifact": "${steps.build.output.artifact}"},
}
BROKEN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "release",
    "steps": [{"id": "test", "tool": "compile", "args": {"ref": "v2"}},
              {"id": "build", "tool": "build", "args": {"ref": "${steps.nope.output}"}}],
}


def strict(plan: dict[str, Any]) -> str:
    """A plan as a strict-mode model writes it."""
    return json.dumps(encode_strict_plan(plan))


def test_invalid_plan_is_repaired_in_one_round(openai_server: OpenAIServer,
                                               openai_client: Any, tmp_path: Path) -> None:
    openai_server.script(strict(BROKEN), strict(FIXED))
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner")
    assert plan == FIXED
    first, second = openai_server.requests
    assert first.body["response_format"]["type"] == "json_schema"
    assert first.body["response_format"]["json_schema"]["strict"] is True
    repair = second.prompt
    assert "$.steps[0].tool (step 'test'): unknown tool 'compile'" in repair
    assert "$.steps[1].args.ref (step 'build'): ${steps.nope.output}: unknown step 'nope'" \
        in repair
    assert second.messages[-2] == {"role": "assistant", "content": strict(BROKEN)}
    assert execute_plan(plan, tools=TOOLS, store=str(tmp_path / "runs.db")).outputs == \
        {"artifact": "app-v2.whl"}


def test_prompt_lists_tools_with_their_schemas(openai_server: OpenAIServer,
                                               openai_client: Any) -> None:
    openai_server.script(strict(FIXED))
    plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner")
    system = openai_server.requests[0].messages[0]["content"]
    assert "## build\nBuild a release artifact from `ref`." in system
    assert json.dumps(build.input_schema) in system
    assert json.dumps(run_tests.output_schema) in system
    assert openai_server.requests[0].prompt == GOAL


def test_gives_up_after_max_repairs_with_last_issues(openai_server: OpenAIServer,
                                                     openai_client: Any) -> None:
    openai_server.script(strict(BROKEN), strict(BROKEN), "{\"format\": 1}")
    with pytest.raises(PlanningFailed) as failure:
        plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner", max_repairs=1)
    assert len(openai_server.requests) == 2
    assert failure.value.responses == [strict(BROKEN), strict(BROKEN)]
    assert [issue.code for issue in failure.value.issues] == ["unknown_tool", "unknown_step"]


def test_strict_refusal_falls_back_to_json_mode(openai_client: Any,
                                                openai_server: OpenAIServer) -> None:
    openai_server.reject_strict = True
    openai_server.script(json.dumps(FIXED))
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner")
    assert plan == FIXED
    refused, answered = openai_server.requests
    assert refused.body["response_format"]["type"] == "json_schema"
    assert answered.body["response_format"] == {"type": "json_object"}
    assert json.dumps(plan_schema()["properties"]["steps"]) in answered.messages[0]["content"]


def test_strict_false_uses_json_mode_and_repairs(openai_server: OpenAIServer,
                                                 openai_client: Any) -> None:
    openai_server.script("not json at all", json.dumps(FIXED))
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner", strict=False)
    assert plan == FIXED
    assert [r.body["response_format"]["type"] for r in openai_server.requests] == \
        ["json_object", "json_object"]
    assert "$: the answer is not JSON" in openai_server.requests[1].prompt


def test_inputs_schema_is_imposed_on_the_plan(openai_server: OpenAIServer,
                                              openai_client: Any) -> None:
    schema = {"type": "object", "properties": {"ref": {"type": "string"}}, "required": ["ref"]}
    uses_input = {**FIXED, "steps": [{"id": "test", "tool": "run_tests",
                                      "args": {"ref": "${inputs.ref}"}}], "outputs": {}}
    openai_server.script(strict(uses_input))
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner",
                    inputs_schema=schema)
    assert plan["inputs"] == schema
    assert json.dumps(schema) in openai_server.requests[0].messages[0]["content"]


def test_python_plan_is_extracted_and_repaired(openai_server: OpenAIServer,
                                               openai_client: Any) -> None:
    broken = "Here it is:\n```python\nimport os\nresult = build('v2')\nreturn result\n```"
    fixed = "```python\nresult = build(ref='v2')\nreturn result\n```\nDone."
    openai_server.script(broken, fixed)
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner", kind="python")
    assert plan == CodePlan(source="result = build(ref='v2')\nreturn result\n", name="llm_plan")
    first, second = openai_server.requests
    assert "response_format" not in first.body
    assert "keyword arguments only" in first.messages[0]["content"]
    assert "- $.source:1:1: import statements are not allowed" in second.prompt
    assert "- $.source:2:16: tool 'build' takes keyword arguments only" in second.prompt


def test_python_answer_without_a_fence_is_sent_back(openai_server: OpenAIServer,
                                                    openai_client: Any) -> None:
    openai_server.script("I would build it.", "```python\nreturn build(ref='v2')\n```")
    plan = plan_for(GOAL, tools=TOOLS, client=openai_client, model="planner", kind="python")
    assert plan.source == "return build(ref='v2')\n"
    assert "$: the answer has no ```python fenced block" in openai_server.requests[1].prompt


def test_client_from_environment(openai_server: OpenAIServer,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    openai_server.script(strict(FIXED))
    assert plan_for(GOAL, tools=TOOLS, client=None, model="planner") == FIXED
    assert openai_server.requests[0].headers["authorization"] == "Bearer from-env"


def test_strict_schema_follows_strict_rules_and_round_trips() -> None:
    schema = strict_plan_schema()
    assert list(strict_problems(schema)) == []
    plan = {**FIXED, "inputs": {"type": "object"},
            "steps": [{"id": "each", "tool": "build", "foreach": ["a", {"b": [1, None]}],
                       "args": {"ref": "${item}"}, "retry": {"max_attempts": 2}},
                      {"id": "ok", "approval": {"prompt": "Ship?"}, "after": ["each"]}]}
    encoded = encode_strict_plan(plan)
    jsonschema.validate(encoded, schema)
    assert encoded["steps"][0]["args"] == '{"ref": "${item}"}'
    assert decode_strict_plan(encoded) == plan


def test_strict_decoding_keeps_a_bare_reference_and_reports_bad_json() -> None:
    step = {"id": "each", "tool": "build", "foreach": "${steps.a.output}", "args": "{oops"}
    with pytest.raises(Exception) as error:
        decode_strict_plan({"steps": [step]})
    assert [str(issue) for issue in error.value.issues] == [  # type: ignore[attr-defined]
        "$.steps[0].args: must be a JSON-encoded string; '{oops' is not JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"]
    assert decode_strict_plan({"steps": [{**step, "args": "{}"}]})["steps"][0]["foreach"] == \
        "${steps.a.output}"
