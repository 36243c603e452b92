"""Plan validation: every kind of problem, all at once, with JSON paths and step ids."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pydantic
import pytest
from pydantic import BaseModel

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan import (
    Plan,
    Scope,
    StepView,
    compile_plan,
    parse_timestamp,
    plan_schema,
    validate_inputs,
)
from agentflow.tools import Tool, tool
from tests.support.counting import python_calls


class FileInfo(BaseModel):
    path: str
    lines: list[int]


class CheckoutResult(BaseModel):
    sha: str
    pythons: list[str]
    files: list[FileInfo]
    parent: CheckoutResult | None = None


class Report(BaseModel):
    passed: bool
    failures: int


@tool
def checkout(ref: str) -> CheckoutResult:
    raise NotImplementedError


@tool
def run_tests(python: str, sha: str, retries: int = 0) -> Report:
    raise NotImplementedError


@tool
def deploy(sha: str, dry_run: bool = False) -> dict[str, Any]:
    raise NotImplementedError


@tool
def notify(text: str, channels: list[str] | None = None) -> None:
    raise NotImplementedError


@tool
def count(n: int) -> int:
    raise NotImplementedError


@tool
def anything(payload: Any = None):  # no return annotation: no output schema
    raise NotImplementedError


TOOLS: dict[str, Tool] = {t.name: t for t in (checkout, run_tests, deploy, notify, count,
                                               anything)}

RELEASE: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "release",
    "inputs": {"type": "object", "properties": {"ref": {"type": "string", "default": "main"}}},
    "steps": [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "${inputs.ref}"}},
        {"id": "test", "tool": "run_tests", "foreach": "${steps.checkout.output.pythons}",
         "args": {"python": "${item}", "sha": "${steps.checkout.output.sha}"},
         "max_parallel": 4, "retry": {"max_attempts": 3}, "timeout": 600},
        {"id": "deploy", "tool": "deploy", "args": {"sha": "${steps.checkout.output.sha}"},
         "after": ["test"], "when": "steps.test.output[0].passed"},
        {"id": "notify", "tool": "notify", "args": {"text": "deploy ${steps.deploy.status}"},
         "after": ["deploy"], "when": "always()"},
    ],
    "outputs": {"sha": "${steps.checkout.output.sha}", "tests": "${steps.test.output}"},
}


def release(**changes: Any) -> dict[str, Any]:
    """The release plan with steps replaced or added by id (None removes one)."""
    plan = copy.deepcopy(RELEASE)
    by_id = {step["id"]: step for step in plan["steps"]}
    for step_id, step in changes.items():
        by_id[step_id] = step
    plan["steps"] = [step for step in by_id.values() if step is not None]
    return plan


def issues_of(data: Any, tools: dict[str, Tool] = TOOLS) -> list[ValidationIssue]:
    with pytest.raises(PlanValidationError) as caught:
        compile_plan(data, tools)
    assert caught.value.issues
    return caught.value.issues


def only_issue(data: Any) -> ValidationIssue:
    issues = issues_of(data)
    assert len(issues) == 1, issues
    return issues[0]


# -- valid plans ----------------------------------------------------------------------


def test_the_release_plan_compiles() -> None:
    compiled = compile_plan(RELEASE, TOOLS)
    assert list(compiled.steps) == ["checkout", "test", "deploy", "notify"]
    notify_step = compiled.steps["notify"]
    assert notify_step.dependencies == {"deploy"}
    assert compiled.steps["checkout"].dependents == {"test", "deploy"}
    assert notify_step.dependents == frozenset()
    assert notify_step.tool == "notify" and notify_step.index == 3
    assert notify_step.kind == "tool" and notify_step.prompt is None
    assert notify_step.wait_until is None
    assert notify_step.condition is not None and notify_step.condition.uses_status_function
    assert not hasattr(notify_step, "ancestors")  # quadratic in a chain: the executor
                                                  # propagates "an ancestor failed" itself


def test_compiled_templates_evaluate_against_a_scope() -> None:
    compiled = compile_plan(RELEASE, TOOLS)
    views = {"checkout": StepView("succeeded", {"sha": "abc", "pythons": ["3.12"], "files": []}),
             "test": StepView("succeeded", [{"passed": True, "failures": 0}]),
             "deploy": StepView("skipped")}
    scope = Scope(inputs={"ref": "main"}, steps=views)
    assert compiled.steps["notify"].args.evaluate(scope) == {"text": "deploy skipped"}
    assert compiled.outputs.evaluate(scope) == {"sha": "abc", "tests": views["test"].output}
    test_step = compiled.steps["test"]
    assert test_step.foreach is not None and test_step.foreach.evaluate(scope) == ["3.12"]
    item_scope = Scope(inputs={}, steps=views, item="3.12", index=0)
    assert test_step.args.evaluate(item_scope) == {"python": "3.12", "sha": "abc"}


def test_the_hash_is_the_sha256_of_the_canonical_json() -> None:
    compiled = compile_plan(RELEASE, TOOLS)
    assert compiled.canonical_json == json.dumps(
        Plan.model_validate(RELEASE).model_dump(mode="json", exclude_defaults=True),
        sort_keys=True, separators=(",", ":"))
    assert compiled.plan_hash == hashlib.sha256(compiled.canonical_json.encode()).hexdigest()
    assert '"format"' not in compiled.canonical_json  # a default value


def test_the_hash_survives_a_round_trip_and_ignores_key_order_and_defaults() -> None:
    compiled = compile_plan(RELEASE, TOOLS)
    assert compile_plan(compiled.canonical_json, TOOLS).plan_hash == compiled.plan_hash
    reordered = dict(reversed(list(RELEASE.items())))
    reordered["steps"] = [{**dict(reversed(list(step.items()))), "continue_on_error": False}
                          for step in RELEASE["steps"]]
    assert compile_plan(reordered, TOOLS).plan_hash == compiled.plan_hash
    assert compile_plan(release(extra={"id": "extra", "tool": "count", "args": {"n": 1}}),
                        TOOLS).plan_hash != compiled.plan_hash


def test_a_json_string_and_a_plan_model_are_accepted() -> None:
    expected = compile_plan(RELEASE, TOOLS).plan_hash
    assert compile_plan(json.dumps(RELEASE), TOOLS).plan_hash == expected
    assert compile_plan(Plan.model_validate(RELEASE), TOOLS).plan_hash == expected


def test_steps_are_ordered_by_dependencies_then_plan_order() -> None:
    plan = {"steps": [
        {"id": "c", "tool": "count", "args": {"n": "${steps.b.output}"}},
        {"id": "a", "tool": "count", "args": {"n": 1}},
        {"id": "b", "tool": "count", "args": {"n": 2}},
        {"id": "d", "tool": "count", "args": {"n": 3}, "after": ["a"]},
    ]}
    assert list(compile_plan(plan, TOOLS).steps) == ["a", "b", "c", "d"]


def test_a_deep_dag_with_a_wide_fan_in_validates() -> None:
    steps: list[dict[str, Any]] = [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "${inputs.ref}"}}]
    for i in range(20):
        steps.append({"id": f"test-{i}", "tool": "run_tests", "continue_on_error": True,
                      "args": {"python": "${steps.checkout.output.pythons[0]}",
                               "sha": "${steps.checkout.output.files[0].path}"}})
    for i in range(20):
        previous = f"chain-{i - 1}" if i else "test-19"
        steps.append({"id": f"chain-{i}", "tool": "count",
                      "args": {"n": f"${{steps.{previous}.output.failures}}" if i == 0
                               else f"${{steps.{previous}.output}}"}})
    steps.append({
        "id": "report", "tool": "notify", "when": "failure() or steps.chain-19.output > 0",
        "args": {"text": "lines ${steps.checkout.output.files[0].lines[-1]} of "
                         "${steps.checkout.output.parent.sha}",
                 "channels": [f"${{steps.test-{i}.status}}" for i in range(17)]},
        "after": [f"test-{i}" for i in range(17, 20)] + ["chain-19"]})
    plan = {"inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
            "steps": steps}
    compiled = compile_plan(plan, TOOLS)
    report = compiled.steps["report"]
    assert len(report.dependencies) == 22  # checkout, 20 tests and the end of the chain
    assert list(compiled.steps)[-1] == "report"
    assert compiled.steps["chain-0"].dependencies == {"test-19"}
    assert compiled.steps["checkout"].dependents == {f"test-{i}" for i in range(20)} | {
        "report"}
    assert compiled.steps["chain-19"].dependents == {"report"}


def test_open_and_unknown_output_schemas_accept_any_field() -> None:
    plan = {"steps": [
        {"id": "d", "tool": "deploy", "args": {"sha": "x"}},
        {"id": "a", "tool": "anything", "args": {"payload": 1}},
        {"id": "n", "tool": "notify",
         "args": {"text": "${steps.d.output.url.host} ${steps.a.output[3].whatever}"}},
    ]}
    compile_plan(plan, TOOLS)


def test_undeclared_inputs_are_accepted_when_the_schema_is_open() -> None:
    plan = release(checkout={"id": "checkout", "tool": "checkout",
                             "args": {"ref": "${inputs.other}"}})
    plan["inputs"]["additionalProperties"] = True
    compile_plan(plan, TOOLS)
    plan["inputs"] = {}
    compile_plan(plan, TOOLS)


# -- structure --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    (None, "a plan is a JSON object (a dict, a JSON string or a Plan), not null"),
    (42, "not a number"),
    ([RELEASE], "not a list"),
    ("{not json", "the plan is not valid JSON"),
    ("[1, 2]", "not a list"),
    ("[" * 100_000, "the plan is not valid JSON"),
])
def test_data_that_is_not_a_plan_object_is_one_issue(data: Any, message: str) -> None:
    issue = only_issue(data)
    assert issue.path == "$" and message in issue.message


def test_structural_problems_have_paths_into_the_plan_as_written() -> None:
    plan = copy.deepcopy(RELEASE)
    plan["steps"][1]["retry"]["max_attempts"] = 0
    plan["steps"][2]["argz"] = {}
    plan["steps"][3]["id"] = "no spaces"
    plan["steps"][0]["foreach"] = {"a": 1}
    plan["nmae"] = "x"
    found = {(i.path, i.step_id, i.message) for i in issues_of(plan)}
    assert found == {
        ("$.steps[1].retry.max_attempts", "test", "Input should be greater than or equal to 1"),
        ("$.steps[2].argz", "deploy", "unknown field 'argz'; did you mean 'args'?"),
        ("$.steps[3].id", "no spaces", "a step id starts with a letter or '_' and has only "
                                       "letters, digits, '_' and '-'"),
        ("$.steps[0].foreach", "checkout", "Input should be a valid list or a valid string"),
        ("$.nmae", None, "unknown field 'nmae'; did you mean 'name'?"),
    }


def test_a_missing_field_and_an_empty_plan() -> None:
    assert only_issue({"steps": [{"tool": "count"}]}).path == "$.steps[0].id"
    assert only_issue({"steps": []}).path == "$.steps"


def test_values_that_are_not_json_are_reported() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    plan = release(extra={"id": "extra", "tool": "anything",
                          "args": {"nan": float("nan"), "set": {1}, "cyclic": cyclic}})
    found = {(i.path, i.step_id, i.message) for i in issues_of(plan)}
    assert found == {
        ("$.steps[4].args.nan", "extra", "nan is not a JSON number"),
        ("$.steps[4].args.set", "extra", "set is not JSON data"),
        ("$.steps[4].args.cyclic.self", "extra", "the value contains itself"),
    }


def test_overly_deep_values_are_reported() -> None:
    deep: Any = 1
    for _ in range(200):
        deep = {"a": deep}
    issue = only_issue(release(extra={"id": "extra", "tool": "anything", "args": deep}))
    assert "nested more than 100 levels deep" in issue.message and issue.step_id == "extra"


# -- meaning ----------------------------------------------------------------------------


def test_duplicate_step_ids() -> None:
    plan = copy.deepcopy(RELEASE)
    plan["steps"].append({"id": "test", "tool": "count", "args": {"n": 1}})
    issue = only_issue(plan)
    assert (issue.path, issue.step_id, issue.code) == ("$.steps[4].id", "test", "duplicate_id")
    assert "first used by $.steps[1]" in issue.message


@pytest.mark.parametrize(("step", "path", "message"), [
    ({"id": "x"}, "$.steps[4]", "a step needs exactly one of tool, approval, sleep, wait_until, "
                                "wait_for_event, plan"),
    ({"id": "x", "tool": "count", "args": {"n": 1}, "sleep": 3}, "$.steps[4]",
     "a step has exactly one kind; this one has tool and sleep"),
    ({"id": "x", "tool": "count", "args": {"n": 1}, "approval": {"prompt": "ok?"},
      "wait_for_event": "go"}, "$.steps[4]",
     "a step has exactly one kind; this one has tool and wait_for_event"),
    ({"id": "x", "approval": {"prompt": "ok?"}, "sleep": 3}, "$.steps[4]",
     "a step has exactly one kind; this one has approval and sleep (approval can only be "
     "combined with tool, as a gate on its call)"),
    ({"id": "x", "wait_until": "2030-01-01T00:00:00Z", "wait_for_event": "go"}, "$.steps[4]",
     "a step has exactly one kind; this one has wait_until and wait_for_event"),
    ({"id": "x", "plan": "other", "inputs": {"a": 1}}, "$.steps[4].plan",
     "unknown plan 'other': a plan step runs a plan registered for the tenant; "
     "register it with tenant.plans.put or `agentflow plans put other FILE`"),
])
def test_step_kinds(step: dict[str, Any], path: str, message: str) -> None:
    issue = only_issue(release(x=step))
    assert (issue.path, issue.step_id) == (path, "x") and issue.message == message


def test_fields_that_do_not_belong_to_the_step_kind() -> None:
    found = {(i.path, i.message) for i in issues_of(release(
        s={"id": "s", "sleep": 1, "args": {"a": 1}, "timeout": 5},
        t={"id": "t", "tool": "count", "args": {"n": 1}, "inputs": {"n": 1}, "max_parallel": 2},
        a={"id": "a", "approval": {"prompt": "ok?"}, "foreach": [1, 2], "max_parallel": 2,
           "retry": {"max_attempts": 2}, "timeout": 60},
        e={"id": "e", "wait_for_event": "go", "timeout": 60, "retry": {}},
        w={"id": "w", "wait_until": "2030-01-01T00:00:00Z", "foreach": "${inputs.ref}"}))}
    assert found == {
        ("$.steps[4].args", "args only belong to a tool step"),
        ("$.steps[4].timeout", "timeout only applies to a tool step or a wait_for_event step"),
        ("$.steps[5].inputs", "inputs only belong to a plan step; tool arguments go in args"),
        ("$.steps[5].max_parallel", "max_parallel only applies to a foreach step"),
        ("$.steps[6].foreach", "foreach only applies to a tool step"),
        ("$.steps[6].retry", "retry only applies to a tool step or a plan step"),
        ("$.steps[6].timeout", "timeout only applies to a tool step or a wait_for_event step; "
                               "an approval expires after approval.expires_in seconds"),
        ("$.steps[7].retry", "retry only applies to a tool step or a plan step"),
        ("$.steps[8].foreach", "foreach only applies to a tool step"),
    }


def test_unknown_tool_suggests_a_close_name_or_lists_the_known_ones() -> None:
    issue = only_issue(release(x={"id": "x", "tool": "deplyo"}))
    assert (issue.path, issue.code) == ("$.steps[4].tool", "unknown_tool")
    assert issue.message == "unknown tool 'deplyo'; did you mean 'deploy'?"
    issue = only_issue(release(x={"id": "x", "tool": "zzz"}))
    assert issue.message == ("unknown tool 'zzz'; known tools: anything, checkout, count, "
                             "deploy, notify, run_tests")


def test_argument_problems() -> None:
    found = {(i.path, i.code, i.message) for i in issues_of(release(
        a={"id": "a", "tool": "run_tests", "args": {"pyhton": "3.12", "sha": 7}},
        b={"id": "b", "tool": "count", "args": {"n": "${steps.checkout.output.sha}"}},
        c={"id": "c", "tool": "count", "args": {"n": "n=${inputs.ref}"}},
        d={"id": "d", "tool": "notify", "args": {"text": "${steps.checkout.output.files}",
                                                 "channels": {"k": "${inputs.ref}"}}},
    ))}
    assert found == {
        ("$.steps[4].args", "missing_argument", "missing required argument 'python' for tool "
                                                "'run_tests'"),
        ("$.steps[4].args.pyhton", "unknown_argument",
         "tool 'run_tests' has no argument 'pyhton'; did you mean 'python'?"),
        ("$.steps[4].args.sha", "argument_type",
         "argument 'sha' of tool 'run_tests': 7 is not of type 'string'"),
        ("$.steps[5].args.n", "argument_type", "argument 'n' of tool 'count' expects an "
         "integer, but ${steps.checkout.output.sha} is a string"),
        ("$.steps[6].args.n", "argument_type",
         "argument 'n' of tool 'count' expects an integer, but this text is a string"),
        ("$.steps[7].args.text", "argument_type", "argument 'text' of tool 'notify' expects a "
         "string, but ${steps.checkout.output.files} is an array"),
        ("$.steps[7].args.channels", "argument_type", "argument 'channels' of tool 'notify' "
         "expects an array or null, but this value is an object"),
    }


def test_static_values_inside_an_argument_are_validated_with_their_path() -> None:
    issue = only_issue(release(x={"id": "x", "tool": "notify",
                                  "args": {"text": "hi", "channels": ["a", 3]}}))
    assert issue.path == "$.steps[4].args.channels[1]"
    assert issue.message == "argument 'channels' of tool 'notify': 3 is not of type 'string'"


def test_integers_fit_numbers_and_nullable_outputs_fit() -> None:
    compile_plan(release(x={"id": "x", "tool": "count",
                            "args": {"n": "${steps.test.output[0].failures}"}}), TOOLS)


def test_references_to_unknown_steps_and_fields() -> None:
    found = {(i.path, i.step_id, i.code, i.message) for i in issues_of(release(x={
        "id": "x", "tool": "notify", "when": "steps.tset.status == 'failed'",
        "args": {"text": "${steps.checkout.output.files[0].lnies} ${inputs.reff}",
                 "channels": ["${steps.checkout.output.parent.sha[0]}",
                              "${steps.test.output.passed}"]}}))}
    assert found == {
        ("$.steps[4].when", "x", "unknown_step", "${steps.tset.status}: unknown step 'tset'; "
                                                  "did you mean 'test'?"),
        ("$.steps[4].args.text", "x", "unknown_field",
         "${steps.checkout.output.files[0].lnies}: steps.checkout.output.files[0] has no field "
         "'lnies' (fields: lines, path) in the output schema of tool 'checkout'"),
        ("$.steps[4].args.text", "x", "unknown_field",
         "${inputs.reff}: inputs has no field 'reff' (fields: ref) in the plan's inputs schema"),
        ("$.steps[4].args.channels[0]", "x", "unknown_field",
         "${steps.checkout.output.parent.sha[0]}: steps.checkout.output.parent.sha is a string, "
         "not a list in the output schema of tool 'checkout'"),
        ("$.steps[4].args.channels[1]", "x", "unknown_field",
         "${steps.test.output.passed}: steps.test.output is an array, not an object in the "
         "output schema of tool 'run_tests'"),
    }


def test_item_and_index_only_exist_in_the_args_of_a_foreach_step() -> None:
    found = {(i.path, i.message) for i in issues_of(release(
        a={"id": "a", "tool": "count", "args": {"n": "${index}"}},
        b={"id": "b", "tool": "count", "foreach": [1, 2], "when": "item > 1",
           "args": {"n": "${index}"}},
    ) | {"outputs": {"i": "${item}"}})}
    only = "only exists in a foreach step's args (and approval prompt)"
    assert found == {
        ("$.steps[4].args.n", f"${{index}}: index {only}"),
        ("$.steps[5].when", f"${{item}}: item {only}"),
        ("$.outputs.i", f"${{item}}: item {only}"),
    }


def test_item_is_typed_by_the_list_it_comes_from() -> None:
    issue = only_issue(release(x={"id": "x", "tool": "count", "args": {"n": "${item}"},
                                  "foreach": "${steps.checkout.output.pythons}"}))
    assert issue.message == ("argument 'n' of tool 'count' expects an integer, but ${item} is "
                             "a string")
    compile_plan(release(x={"id": "x", "tool": "count", "args": {"n": "${item.lines[0]}"},
                            "foreach": "${steps.checkout.output.files}"}), TOOLS)


@pytest.mark.parametrize(("foreach", "message"), [
    ("${steps.checkout.output.sha}", "foreach needs a list, but ${steps.checkout.output.sha} is "
                                     "a string"),
    ("items: ${steps.checkout.output.pythons}", "foreach must be a list, or one '${...}' "
                                                "reference or '${= ...}' expression"),
    ("python3", "foreach must be a list, or one '${...}' reference or '${= ...}'"),
])
def test_foreach_must_be_a_list(foreach: str, message: str) -> None:
    issue = only_issue(release(x={"id": "x", "tool": "notify", "foreach": foreach,
                                  "args": {"text": "${item}"}}))
    assert (issue.path, issue.code) == ("$.steps[4].foreach", "foreach")
    assert issue.message.startswith(message)


def test_after_names_unknown_steps_or_itself() -> None:
    found = {(i.path, i.message) for i in issues_of(release(
        x={"id": "x", "tool": "count", "args": {"n": 1}, "after": ["checkout", "chekout", "x"]}))}
    assert found == {
        ("$.steps[4].after[1]", "unknown step 'chekout'; did you mean 'checkout'?"),
        ("$.steps[4].after[2]", "a step cannot run after itself"),
    }


def test_a_step_cannot_use_its_own_result() -> None:
    issue = only_issue(release(x={"id": "x", "tool": "count", "args": {"n": "${steps.x.output}"}}))
    assert issue.message == "${steps.x.output}: a step cannot use its own result"


def test_cycles_are_reported_as_paths() -> None:
    plan = {"steps": [
        {"id": "start", "tool": "count", "args": {"n": 1}},
        {"id": "a", "tool": "count", "args": {"n": "${steps.c.output}"}},
        {"id": "b", "tool": "count", "args": {"n": "${steps.a.output}"}},
        {"id": "c", "tool": "count", "args": {"n": 1}, "after": ["b", "start"]},
        {"id": "d", "tool": "count", "args": {"n": 1}, "when": "steps.e.status == 'failed'"},
        {"id": "e", "tool": "count", "args": {"n": 1}, "after": ["d"]},
        {"id": "downstream", "tool": "count", "args": {"n": "${steps.a.output}"}},
    ]}
    found = [(i.path, i.step_id, i.message) for i in issues_of(plan)]
    assert found == [
        ("$.steps[1]", "a", "dependency cycle: a -> c -> b -> a (each step waits for the next)"),
        ("$.steps[4]", "d", "dependency cycle: d -> e -> d (each step waits for the next)"),
    ]


def test_bad_conditions_are_reported_with_the_step() -> None:
    issue = only_issue(release(x={"id": "x", "tool": "count", "args": {"n": 1},
                                  "when": "steps.test.status = 'failed'"}))
    assert (issue.path, issue.step_id, issue.code) == ("$.steps[4].when", "x", "syntax")
    assert "use '==' at column 19" in issue.message


def test_outputs_references_are_checked() -> None:
    found = {(i.path, i.message) for i in issues_of(
        RELEASE | {"outputs": {"a": "${steps.nope.output}", "b": ["${steps.checkout.output.x}"],
                               "c": "${steps.checkout"}})}
    assert found == {
        ("$.outputs.a", "${steps.nope.output}: unknown step 'nope'"),
        ("$.outputs.b[0]", "${steps.checkout.output.x}: steps.checkout.output has no field 'x' "
                           "(fields: files, parent, pythons, sha) in the output schema of tool "
                           "'checkout'"),
        ("$.outputs.c", "invalid reference in '${steps.checkout' at character 17: expected "
                        ".output, .status or .error after steps.checkout"),
    }


@pytest.mark.parametrize(("schema", "path", "message"), [
    ({"type": "objekt"}, "$.inputs.type", "not a valid JSON Schema"),
    ({"properties": {"a": {"minimum": "3"}}}, "$.inputs.properties.a.minimum",
     "not a valid JSON Schema: '3' is not of type 'number'"),
    ({"type": "string"}, "$.inputs.type", "the inputs schema must describe an object"),
])
def test_the_inputs_schema_must_be_a_json_schema_of_an_object(
        schema: dict[str, Any], path: str, message: str) -> None:
    issue = only_issue(RELEASE | {"inputs": schema})
    assert (issue.path, issue.code) == (path, "schema") and issue.message.startswith(message)


def test_every_issue_is_collected_in_one_error() -> None:
    plan = copy.deepcopy(RELEASE)
    plan["steps"][0]["args"] = {}
    plan["steps"][1]["args"]["sha"] = "${steps.checkout.output.shaa}"
    plan["steps"][2]["when"] = "steps.test.output[0].passed &&"
    plan["steps"][3]["after"] = ["deploi"]
    plan["steps"][3]["tool"] = "notfy"
    plan["steps"].append({"id": "deploy", "tool": "deploy", "args": {"sha": "x"}})
    plan["outputs"]["extra"] = "${item}"
    found = [(i.path, i.step_id, i.code) for i in issues_of(plan)]
    assert sorted(found, key=str) == sorted([
        ("$.steps[4].id", "deploy", "duplicate_id"),
        ("$.steps[0].args", "checkout", "missing_argument"),
        ("$.steps[3].tool", "notify", "unknown_tool"),
        ("$.steps[1].args.sha", "test", "unknown_field"),
        ("$.steps[2].when", "deploy", "syntax"),
        ("$.steps[3].after[0]", "notify", "unknown_step"),
        ("$.outputs.extra", None, "scope"),
    ], key=str)


def status_chain(n: int) -> dict[str, Any]:
    """n steps, each with a condition and references to the first and the previous step."""
    steps = [{"id": "s0", "tool": "checkout", "args": {"ref": "${inputs.ref}"}}]
    for i in range(1, n):
        steps.append({"id": f"s{i}", "tool": "run_tests", "when": "success() or failure()",
                      "args": {"python": "${steps.s0.output.pythons[0]}",
                               "sha": f"${{steps.s{i - 1}.status}}"}})
    return {"inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
            "steps": steps}


def output_chain(n: int) -> dict[str, Any]:
    """n steps, each taking the previous step's output."""
    steps: list[dict[str, Any]] = [{"id": "s0", "tool": "count", "args": {"n": 0}}]
    steps += [{"id": f"s{i}", "tool": "count", "args": {"n": f"${{steps.s{i - 1}.output}}"}}
              for i in range(1, n)]
    return {"steps": steps}


@pytest.mark.parametrize("chain", [status_chain, output_chain])
def test_validation_work_grows_linearly_with_the_number_of_steps(
        chain: Callable[[int], dict[str, Any]]) -> None:
    """Counted in Python calls, not seconds (bench/plan_compile.py times it): twice the steps
    may cost at most a little over twice the work; a quadratic pass would cost four times."""
    compile_plan(chain(50), TOOLS)  # warm up the process-wide schema and regex caches
    small, large = (python_calls(lambda n=n: compile_plan(chain(n), TOOLS))
                    for n in (1000, 2000))
    assert large < 2.2 * small, (small, large)


def test_a_long_chain_holds_only_each_steps_neighbours() -> None:
    """Nothing transitive is precomputed: a chain of n steps held n*(n-1)/2 ancestor names
    (about 2 GB at 10,000 steps) before; now each step holds its neighbours only."""
    compiled = compile_plan(output_chain(10_000), TOOLS)
    assert compiled.steps["s5000"].dependencies == {"s4999"}
    assert compiled.steps["s5000"].dependents == {"s5001"}
    held = sum(len(s.dependencies) + len(s.dependents) for s in compiled.steps.values())
    assert held == 2 * (10_000 - 1)
    status = compile_plan(status_chain(1000), TOOLS)
    assert status.steps["s999"].dependencies == {"s0", "s998"}


# -- approvals and waits ------------------------------------------------------------------

DESIGN_EXAMPLE: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "release",
    "inputs": {"type": "object", "properties": {"ref": {"type": "string"}},
               "required": ["ref"]},
    "steps": [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "${inputs.ref}"}},
        {"id": "test", "tool": "run_tests", "foreach": "${steps.checkout.output.pythons}",
         "args": {"python": "${item}", "sha": "${steps.checkout.output.sha}"},
         "max_parallel": 4,
         "retry": {"max_attempts": 3, "initial_delay": 1.0, "backoff": 2.0}, "timeout": 600},
        {"id": "ok_to_ship", "approval": {"prompt": "Deploy ${steps.checkout.output.sha}?",
                                          "expires_in": 86400, "on_expiry": "reject"}},
        {"id": "deploy", "tool": "deploy", "args": {"sha": "${steps.checkout.output.sha}"},
         "after": ["ok_to_ship"], "when": "steps.ok_to_ship.output.approved"},
        {"id": "notify", "tool": "notify", "args": {"text": "deploy ${steps.deploy.status}"},
         "after": ["deploy"], "when": "always()"},
    ],
    "outputs": {"sha": "${steps.checkout.output.sha}", "tests": "${steps.test.output}"},
}
WAITS: dict[str, Any] = {
    "inputs": {"type": "object", "properties": {
        "deadline": {"type": "string", "format": "date-time"}, "n": {"type": "integer"}}},
    "steps": [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "main"}},
        {"id": "ok", "approval": {"prompt": "Ship ${steps.checkout.output.sha}? Files: "
                                            "${steps.checkout.output.files}",
                                  "approvers": ["release-managers"], "expires_in": 3600,
                                  "on_expiry": "fail", "on_reject": "continue"},
         "when": "steps.checkout.output.sha != ''", "continue_on_error": True},
        {"id": "nap", "sleep": 1.5, "after": ["ok"]},
        {"id": "until", "wait_until": "2030-01-31T09:00:00+01:00", "after": ["nap"]},
        {"id": "until_input", "wait_until": "${inputs.deadline}"},
        {"id": "hook", "wait_for_event": "ci.done:main-42", "timeout": 600, "after": ["until"]},
        {"id": "deploy", "tool": "deploy", "args": {"sha": "${steps.checkout.output.sha}"},
         "approval": {"prompt": "Deploy ${steps.checkout.output.sha} ("
                                "${steps.hook.output.build.url})?", "on_reject": "skip"},
         "retry": {"max_attempts": 2}, "timeout": 30,
         "when": "steps.ok.output.approved or steps.ok.status == 'rejected'"},
        {"id": "each", "tool": "count", "foreach": "${steps.checkout.output.files}",
         "args": {"n": "${item.lines[0]}"},
         "approval": {"prompt": "Count ${item.path} (#${index})?"}},
        {"id": "report", "tool": "notify", "when": "always()",
         "args": {"text": "${steps.ok.output.reason} / ${steps.ok.output.by} / "
                          "${steps.hook.output[0].anything} / ${steps.nap.output}",
                  "channels": ["${steps.ok.output.comment}", "${steps.hook.output.channel}"]}},
    ],
}


def test_the_design_example_compiles() -> None:
    compiled = compile_plan(DESIGN_EXAMPLE, TOOLS)
    gate = compiled.steps["ok_to_ship"]
    assert (gate.kind, gate.tool) == ("approval", None)
    assert gate.dependencies == {"checkout"}
    assert gate.args.is_static and gate.args.evaluate(Scope({}, {})) == {}
    assert gate.prompt is not None and gate.foreach is None and gate.wait_until is None
    views = {"checkout": StepView("succeeded", {"sha": "abc", "pythons": [], "files": []})}
    assert gate.prompt.evaluate(Scope({}, views)) == "Deploy abc?"
    assert compiled.steps["deploy"].dependencies == {"checkout", "ok_to_ship"}
    assert jsonschema.Draft202012Validator(plan_schema()).is_valid(DESIGN_EXAMPLE)


def test_every_wait_kind_compiles() -> None:
    compiled = compile_plan(WAITS, TOOLS)
    kinds = {step_id: step.kind for step_id, step in compiled.steps.items()}
    assert kinds == {"checkout": "tool", "ok": "approval", "nap": "sleep", "until": "wait_until",
                     "until_input": "wait_until", "hook": "wait_for_event", "deploy": "tool",
                     "each": "tool", "report": "tool"}
    views = {"checkout": StepView("succeeded", {"sha": "abc", "pythons": [],
                                                "files": [{"path": "a.py", "lines": [1]}]}),
             "hook": StepView("succeeded", {"build": {"url": "http://ci/1"}})}
    scope = Scope(inputs={"deadline": "2030-01-01T00:00:00Z"}, steps=views)
    ok = compiled.steps["ok"]
    assert ok.prompt is not None and ok.prompt.evaluate(scope) == (
        'Ship abc? Files: [{"path":"a.py","lines":[1]}]')
    until = compiled.steps["until"]
    assert until.wait_until is not None and until.wait_until.is_static
    assert parse_timestamp(until.wait_until.evaluate(scope)).utcoffset() == timedelta(hours=1)
    until_input = compiled.steps["until_input"]
    assert until_input.wait_until is not None
    assert until_input.wait_until.evaluate(scope) == "2030-01-01T00:00:00Z"
    assert compiled.steps["hook"].dependencies == {"until"}
    deploy = compiled.steps["deploy"]
    assert deploy.kind == "tool" and deploy.tool == "deploy" and deploy.prompt is not None
    assert deploy.dependencies == {"checkout", "ok", "hook"}
    assert deploy.prompt.evaluate(scope) == "Deploy abc (http://ci/1)?"
    each = compiled.steps["each"]
    assert each.prompt is not None and each.prompt.evaluate(
        Scope(inputs={}, steps=views, item={"path": "a.py"}, index=0)) == "Count a.py (#0)?"
    assert compiled.steps["report"].dependencies == {"ok", "hook", "nap"}


def test_references_into_an_approval_follow_its_decision() -> None:
    found = {(i.path, i.code, i.message) for i in issues_of(release(
        ok={"id": "ok", "approval": {"prompt": "ok?"}},
        a={"id": "a", "tool": "notify", "args": {"text": "${steps.ok.output.approvd}"}},
        b={"id": "b", "tool": "count", "args": {"n": "${steps.ok.output.approved}"}},
        c={"id": "c", "tool": "count", "args": {"n": 1}, "when": "steps.ok.output.by.name"},
        d={"id": "d", "tool": "notify", "args": {"text": "${steps.ok.output.reason}"}}))}
    assert found == {
        ("$.steps[5].args.text", "unknown_field", "${steps.ok.output.approvd}: steps.ok.output "
         "has no field 'approvd' (fields: approved, by, comment, reason) in the output of an "
         "approval step"),
        ("$.steps[6].args.n", "argument_type", "argument 'n' of tool 'count' expects an "
         "integer, but ${steps.ok.output.approved} is a boolean"),
        ("$.steps[7].when", "unknown_field", "${steps.ok.output.by.name}: steps.ok.output.by "
         "is a string, not an object in the output of an approval step"),
    }  # d is fine: the reason may be null, and a string or null may fit a string


def test_approval_prompts_are_checked_like_args() -> None:
    found = {(i.path, i.step_id, i.code, i.message) for i in issues_of(release(
        a={"id": "a", "approval": {"prompt": "Ship ${steps.chekout.output.sha} ${item}?"}},
        b={"id": "b", "tool": "count", "args": {"n": 1},
           "approval": {"prompt": "${steps.checkout.output.sah} ${steps.b.output}"}},
        c={"id": "c", "approval": {"prompt": "Ship ${steps.checkout"}}))}
    assert found == {
        ("$.steps[4].approval.prompt", "a", "unknown_step", "${steps.chekout.output.sha}: "
         "unknown step 'chekout'; did you mean 'checkout'?"),
        ("$.steps[4].approval.prompt", "a", "scope", "${item}: item only exists in a foreach "
         "step's args (and approval prompt)"),
        ("$.steps[5].approval.prompt", "b", "unknown_field", "${steps.checkout.output.sah}: "
         "steps.checkout.output has no field 'sah' (fields: files, parent, pythons, sha) in the "
         "output schema of tool 'checkout'"),
        ("$.steps[5].approval.prompt", "b", "cycle",
         "${steps.b.output}: a step cannot use its own result"),
        ("$.steps[6].approval.prompt", "c", "syntax", "invalid reference in 'Ship "
         "${steps.checkout' at character 22: expected .output, .status or .error after "
         "steps.checkout"),
    }


@pytest.mark.parametrize(("approval", "path", "message"), [
    ({"prompt": "ok?", "on_expiry": "ignore"}, "$.steps[4].approval.on_expiry",
     "Input should be 'reject', 'approve' or 'fail'"),
    ({"prompt": "ok?", "on_reject": "retry"}, "$.steps[4].approval.on_reject",
     "Input should be 'fail', 'skip' or 'continue'"),
    ({"prompt": "ok?", "approvers": []}, "$.steps[4].approval.approvers",
     "List should have at least 1 item after validation, not 0"),
    ({"prompt": "ok?", "approvers": [""]}, "$.steps[4].approval.approvers[0]",
     "String should have at least 1 character"),
    ({"prompt": "ok?", "expires_in": 0}, "$.steps[4].approval.expires_in",
     "Input should be greater than 0"),
    ({"prompt": "ok?", "expires_in": 1e12}, "$.steps[4].approval.expires_in",
     "Input should be less than or equal to 316224000"),
    ({"prompt": "ok?", "expirs_in": 60}, "$.steps[4].approval.expirs_in",
     "unknown field 'expirs_in'; did you mean 'expires_in'?"),
    ({}, "$.steps[4].approval.prompt", "required field is missing"),
])
def test_approval_settings_are_checked(approval: dict[str, Any], path: str, message: str
                                       ) -> None:
    issue = only_issue(release(x={"id": "x", "approval": approval}))
    assert (issue.path, issue.step_id, issue.message) == (path, "x", message)


@pytest.mark.parametrize(("step", "path", "message"), [
    ({"sleep": -1}, "$.steps[4].sleep", "Input should be greater than or equal to 0"),
    ({"sleep": 1e10}, "$.steps[4].sleep", "Input should be less than or equal to 316224000"),
    ({"sleep": "soon"}, "$.steps[4].sleep", "Input should be a valid number"),
    ({"sleep": "1"}, "$.steps[4].sleep", "Input should be a valid number"),
    ({"sleep": True}, "$.steps[4].sleep", "Input should be a valid number"),
    ({"wait_for_event": ""}, "$.steps[4].wait_for_event", "an event name is one or more "
     "letters, digits, '_', '.', ':' and '-' (no ${...} references)"),
    ({"wait_for_event": "ci done"}, "$.steps[4].wait_for_event", "an event name is one or "
     "more letters, digits, '_', '.', ':' and '-' (no ${...} references)"),
    ({"wait_for_event": "${inputs.ref}"}, "$.steps[4].wait_for_event", "an event name is one "
     "or more letters, digits, '_', '.', ':' and '-' (no ${...} references)"),
    ({"wait_for_event": "go", "timeout": 0}, "$.steps[4].timeout",
     "Input should be greater than 0 or a '${...}' reference or a '${= ...}' expression"),
    ({"wait_until": "2030-01-31T09:00:00"}, "$.steps[4].wait_until", "wait_until: "
     "'2030-01-31T09:00:00' has no timezone; add one, such as 'Z' or '+01:00'"),
    ({"wait_until": "2030-01-31"}, "$.steps[4].wait_until",
     "wait_until: '2030-01-31' has no timezone; add one, such as 'Z' or '+01:00'"),
    ({"wait_until": "tomorrow 9am"}, "$.steps[4].wait_until", "wait_until: 'tomorrow 9am' is "
     "not an ISO-8601 time such as '2025-01-31T09:00:00+00:00'"),
    ({"wait_until": "${steps.checkout.output.pythons}"}, "$.steps[4].wait_until",
     "wait_until needs an ISO-8601 time (a string), but ${steps.checkout.output.pythons} is "
     "an array"),
    ({"wait_until": "${inputs.ref}T09:00:00Z"}, "$.steps[4].wait_until",
     "wait_until must be an ISO-8601 time with a timezone, or one '${...}' reference to one "
     "such as '${inputs.deadline}' (or one '${= ...}' expression)"),
    ({"wait_until": "${= length(inputs.ref)}"}, "$.steps[4].wait_until",
     "wait_until needs an ISO-8601 time (a string), but ${= length(inputs.ref)} is an "
     "integer"),
    ({"wait_until": "${steps.nope.output}"}, "$.steps[4].wait_until",
     "${steps.nope.output}: unknown step 'nope'"),
    ({"wait_until": "${item}"}, "$.steps[4].wait_until",
     "${item}: item only exists in a foreach step's args (and approval prompt)"),
])
def test_wait_settings_are_checked(step: dict[str, Any], path: str, message: str) -> None:
    issue = only_issue(release(x={"id": "x", **step}))
    assert (issue.path, issue.step_id, issue.message) == (path, "x", message)


def test_waits_without_output_and_events_with_any_output() -> None:
    found = {(i.path, i.message) for i in issues_of(release(
        nap={"id": "nap", "sleep": 0},
        until={"id": "until", "wait_until": "2030-01-01T00:00:00Z"},
        hook={"id": "hook", "wait_for_event": "go"},
        x={"id": "x", "tool": "notify", "args": {
            "text": "${steps.nap.output.x} ${steps.hook.output.a[0]['b c']}",
            "channels": ["${steps.until.output[0]}", "${steps.hook.output}"]}}))}
    assert found == {
        ("$.steps[7].args.text",
         "${steps.nap.output.x}: steps.nap.output is null, not an object (sleep steps output "
         "null)"),
        ("$.steps[7].args.channels[0]", "${steps.until.output[0]}: steps.until.output is "
         "null, not a list (wait_until steps output null)"),
    }


def test_wait_references_make_dependencies() -> None:
    compiled = compile_plan(release(
        until={"id": "until", "wait_until": "${steps.checkout.output.sha}", "after": ["test"],
               "when": "steps.deploy.status == 'succeeded'"}), TOOLS)
    assert compiled.steps["until"].dependencies == {"checkout", "test", "deploy"}
    assert compiled.steps["deploy"].dependents == {"notify", "until"}


def test_parse_timestamp() -> None:
    assert parse_timestamp("2030-01-31T09:00:00Z") == datetime(2030, 1, 31, 9, tzinfo=UTC)
    assert parse_timestamp("2030-01-31T10:00:00.5+01:00").utcoffset() == timedelta(hours=1)
    for bad in ("2030-01-31T09:00:00", "", "31/01/2030"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_non_finite_numbers_are_rejected_in_a_plan_model_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        Plan.model_validate({"steps": [{"id": "a", "sleep": float("inf")}]})


# -- inputs -----------------------------------------------------------------------------


def test_validate_inputs_fills_defaults_and_keeps_extras() -> None:
    compiled = compile_plan(RELEASE, TOOLS)
    assert validate_inputs(compiled, {}) == {"ref": "main"}
    assert validate_inputs(compiled, None) == {"ref": "main"}
    assert validate_inputs(compiled, {"ref": "v1", "x": 1}) == {"ref": "v1", "x": 1}


def test_validate_inputs_lists_every_problem_with_its_path() -> None:
    plan = RELEASE | {"inputs": {
        "type": "object", "required": ["ref", "env"],
        "properties": {"ref": {"type": "string"}, "env": {"enum": ["prod", "dev"]},
                       "n": {"type": "integer", "minimum": 1},
                       "tags": {"type": "array", "items": {"type": "string"}}}}}
    compiled = compile_plan(plan, TOOLS)
    with pytest.raises(PlanValidationError) as caught:
        validate_inputs(compiled, {"n": 0, "tags": ["a", 2]})
    assert str(caught.value).startswith("inputs are invalid (4 issue(s))")
    assert [(i.path, i.message) for i in caught.value.issues] == [
        ("$.inputs.ref", "required input is missing"),
        ("$.inputs.env", "required input is missing"),
        ("$.inputs.n", "0 is less than the minimum of 1"),
        ("$.inputs.tags[1]", "2 is not of type 'string'"),
    ]


@pytest.mark.parametrize(("inputs", "message"), [
    ([1], "inputs must be an object, not a list"),
    ({"ref": float("inf")}, "inf is not a JSON number"),
])
def test_validate_inputs_rejects_data_that_is_not_a_json_object(inputs: Any, message: str
                                                                ) -> None:
    with pytest.raises(PlanValidationError, match=message):
        validate_inputs(compile_plan(RELEASE, TOOLS), inputs)


def test_validate_inputs_never_fetches_remote_schemas() -> None:
    plan = RELEASE | {"inputs": {"type": "object", "properties": {
        "ref": {"$ref": "https://example.invalid/schema.json"}}}}
    with pytest.raises(PlanValidationError, match="the inputs schema cannot be applied"):
        validate_inputs(compile_plan(plan, TOOLS), {"ref": "x"})


# -- the schema -------------------------------------------------------------------------


def test_plan_schema_describes_the_format() -> None:
    schema = plan_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "agentflow plan (agentflow/v1)"
    assert "${path}" in schema["description"]
    assert set(schema["$defs"]) == {"Step", "RetryPolicy", "ApprovalSpec"}
    jsonschema.Draft202012Validator.check_schema(schema)


def test_plan_schema_accepts_a_plan_and_rejects_a_malformed_one() -> None:
    validator = jsonschema.Draft202012Validator(plan_schema())
    assert validator.is_valid(RELEASE)
    assert not validator.is_valid({"steps": [{"id": "a b", "tool": "x"}]})
    assert not validator.is_valid({"name": "no steps"})


def test_plan_schema_returns_a_fresh_copy() -> None:
    plan_schema()["title"] = "changed"
    assert plan_schema()["title"] == "agentflow plan (agentflow/v1)"
