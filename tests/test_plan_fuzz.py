"""Whatever a plan, condition or inputs look like, the plan layer answers with a result or a
PlanValidationError listing issues: never any other exception."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentflow.errors import PlanValidationError, ReferenceResolutionError
from agentflow.plan import (
    CompiledPlan,
    Scope,
    StepView,
    compile_condition,
    compile_plan,
    parse_timestamp,
    validate_inputs,
)
from agentflow.tools import Tool, tool

FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class FileInfo(BaseModel):
    path: str
    lines: list[int]


class CheckoutResult(BaseModel):
    sha: str
    pythons: list[str]
    files: list[FileInfo]


@tool
def checkout(ref: str) -> CheckoutResult:
    raise NotImplementedError


@tool
def run_tests(python: str, sha: str, retries: int = 0) -> dict[str, bool]:
    raise NotImplementedError


@tool
def notify(text: str, channels: list[str] | None = None) -> None:
    raise NotImplementedError


TOOLS: dict[str, Tool] = {t.name: t for t in (checkout, run_tests, notify)}

BASE: dict[str, Any] = {
    "name": "release",
    "inputs": {"type": "object", "required": ["ref"],
               "properties": {"ref": {"type": "string"}, "n": {"type": "integer", "default": 2},
                              "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
               "$defs": {"tag": {"type": "string", "maxLength": 5}}},
    "steps": [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "${inputs.ref}"}},
        {"id": "test", "tool": "run_tests", "foreach": "${steps.checkout.output.pythons}",
         "args": {"python": "${item}", "sha": "${steps.checkout.output.sha}"},
         "max_parallel": 2, "retry": {"max_attempts": 2}, "continue_on_error": True},
        {"id": "notify-all", "tool": "notify", "after": ["test"],
         "when": "failure() or steps.test.output[0].ok == true",
         "args": {"text": "${steps.checkout.output.files[0].path} ${steps.test.error}",
                  "channels": ["${inputs.ref}", "x"]}},
        {"id": "ok", "approval": {"prompt": "Ship ${steps.checkout.output.sha}?",
                                  "approvers": ["ops"], "expires_in": 60,
                                  "on_expiry": "reject", "on_reject": "continue"}},
        {"id": "nap", "sleep": 1, "after": ["ok"], "when": "steps.ok.output.approved"},
        {"id": "until", "wait_until": "2030-01-01T00:00:00Z", "after": ["nap"]},
        {"id": "hook", "wait_for_event": "ci.done", "timeout": 60, "after": ["until"]},
        {"id": "ship", "tool": "notify", "approval": {"prompt": "Send ${item}?"},
         "foreach": "${steps.checkout.output.pythons}",
         "args": {"text": "${steps.hook.output.url} ${steps.ok.output.reason} ${item}"}},
    ],
    "outputs": {"sha": "${steps.checkout.output.sha}", "tests": "${steps.test.output}"},
}
SCOPE_VIEWS = {
    "checkout": StepView("succeeded", {"sha": "abc", "pythons": ["3.12"],
                                       "files": [{"path": "a.py", "lines": [1]}]}),
    "test": StepView("failed", None, "boom"),
    "notify-all": StepView("skipped"),
    "ok": StepView("rejected", {"approved": False, "by": "bob", "comment": None,
                                "reason": "no"}),
    "nap": StepView("skipped"),
    "until": StepView("succeeded"),
    "hook": StepView("succeeded", {"url": "http://ci"}),
}

FIELDS = ["format", "name", "inputs", "steps", "outputs", "id", "tool", "args", "approval",
          "sleep", "wait_until", "wait_for_event", "plan", "after", "when", "foreach",
          "max_parallel", "retry", "timeout", "continue_on_error", "max_attempts", "backoff",
          "prompt", "approvers", "expires_in", "on_expiry", "on_reject", "type", "properties",
          "required", "items", "$ref", "additionalProperties", "default"]
REFERENCE_PARTS = ["${", "}", "$${", "$", "steps", ".", "checkout", "test", "notify-all", "ok",
                   "hook", "nap", "approved", "reason", "2030-01-01T00:00:00", "Z", "+01:00",
                   "output", "status", "error", "sha", "files", "pythons", "[0]", "[-1]", "[99]",
                   '["a b"]', "['x']", "inputs", "ref", "n", "tags", "item", "index", "x", " ",
                   "-", "'", '"', "[", "]", "\\", "{"]
CONDITION_PARTS = ["steps.checkout.output.sha", "steps.test.status", "steps.test.output[0]",
                   "inputs.ref", "inputs.tags", "item", "index", "==", "!=", "<", "<=", ">",
                   ">=", "in", "not", "and", "or", "(", ")", "[", "]", ",", "'x'", '"y"', "1",
                   "-2.5", "1e999", "true", "None", "False", "always()", "success()",
                   "failure()", "always", "(1)", "${", "}", "&&", "||", "!", "=", "-", ".",
                   "steps", "'", "\\"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
reference_text = st.lists(st.sampled_from(REFERENCE_PARTS), max_size=12).map("".join)
condition_text = (st.lists(st.sampled_from(CONDITION_PARTS), max_size=12).map(" ".join)
                  | st.lists(st.sampled_from(CONDITION_PARTS), max_size=12).map("".join))
step_ids = st.sampled_from(["checkout", "test", "notify-all", "ok", "hook", "new", "x y",
                            ""]) | st.text(max_size=6)
approvals = st.fixed_dictionaries(
    {"prompt": reference_text},
    optional={"approvers": st.lists(st.sampled_from(["ops", "", "alice"]), max_size=2),
              "expires_in": st.floats(-1, 1e10), "on_expiry": st.sampled_from(
                  ["reject", "approve", "fail", "maybe"]),
              "on_reject": st.sampled_from(["fail", "skip", "continue", "retry"])},
)
times = st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "2030-01-01",
                         "2030-01-01T00:00:00+05:30", "soon", "${inputs.ref}",
                         "${steps.checkout.output.sha}", "${steps.ok.output}"]) | reference_text
event_names = st.sampled_from(["ci.done", "a:b-c_d", "", "has space", "${inputs.ref}"]) | st.text(
    max_size=6)
steps = st.fixed_dictionaries(
    {"id": step_ids},
    optional={"tool": st.sampled_from(["checkout", "run_tests", "notify", "nope"]),
              "args": st.dictionaries(st.sampled_from(["ref", "python", "sha", "text",
                                                       "channels", "retries", "zzz"]),
                                      reference_text | json_values, max_size=3),
              "when": condition_text, "after": st.lists(step_ids, max_size=3),
              "foreach": reference_text | st.lists(reference_text, max_size=3),
              "max_parallel": st.integers(-1, 3), "sleep": st.floats(-1, 10),
              "approval": approvals, "wait_until": times, "wait_for_event": event_names,
              "timeout": st.floats(-1, 100), "retry": st.just({"max_attempts": 2}),
              "continue_on_error": st.booleans()},
)
generated_plans = st.fixed_dictionaries(
    {"steps": st.lists(steps, max_size=6)},
    optional={"inputs": st.sampled_from([{}, BASE["inputs"], {"type": "string"}]) | json_values,
              "outputs": st.dictionaries(st.text(max_size=5), reference_text, max_size=3)},
)


def check_plan(data: Any) -> CompiledPlan | None:
    """Compile `data`: a rejection lists issues; a compiled plan round-trips and evaluates."""
    try:
        compiled = compile_plan(data, TOOLS)
    except PlanValidationError as error:
        assert error.issues
        assert all(issue.path.startswith("$") and issue.message for issue in error.issues)
        event("rejected")
        return None
    event("compiled")
    assert compile_plan(compiled.canonical_json, TOOLS).plan_hash == compiled.plan_hash
    scope = Scope(inputs={"ref": "main"}, steps=SCOPE_VIEWS, upstream_success=False,
                  upstream_failure=True, item="3.12", index=0)
    for step in compiled.steps.values():
        assert step.kind == ("tool" if step.step.tool is not None else next(
            kind for kind in ("approval", "sleep", "wait_until", "wait_for_event")
            if getattr(step.step, kind) is not None))
        assert (step.prompt is not None) == (step.step.approval is not None)
        assert (step.wait_until is not None) == (step.kind == "wait_until")
        assert step.foreach is None or step.kind == "tool"
        if step.condition is not None:
            assert step.condition.evaluate(scope) in (True, False)
        for template in (step.args, step.foreach, step.wait_until):
            with contextlib.suppress(ReferenceResolutionError):
                template is None or template.evaluate(scope)
        if step.prompt is not None:
            with contextlib.suppress(ReferenceResolutionError):
                assert isinstance(step.prompt.evaluate(scope), str)
        if step.wait_until is not None and step.wait_until.is_static:
            parse_timestamp(step.wait_until.evaluate(scope))
    return compiled


def check_inputs(compiled: CompiledPlan, inputs: Any) -> None:
    try:
        values = validate_inputs(compiled, inputs)
    except PlanValidationError as error:
        assert error.issues
        assert all(issue.path.startswith("$.inputs") for issue in error.issues)
    else:
        assert isinstance(values, dict)


def mutate(plan: Any, data: st.DataObject) -> Any:
    """Drop, replace or insert one thing somewhere in `plan` (which is changed in place)."""
    places: list[tuple[Any, Any]] = []
    stack = [plan]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for key in keys:
            places.append((node, key))
            if isinstance(node[key], dict | list):
                stack.append(node[key])
    if not places:
        return data.draw(json_values)
    container, key = data.draw(st.sampled_from(places))
    action = data.draw(st.sampled_from(["drop", "replace", "reference", "condition", "insert"]))
    if action == "drop":
        del container[key]
    elif action == "insert" and isinstance(container, dict):
        container[data.draw(st.sampled_from(FIELDS) | st.text(max_size=6))] = data.draw(
            json_values | reference_text)
    elif action == "insert":
        container.insert(key, data.draw(steps | json_values))
    else:
        strategy = {"reference": reference_text, "condition": condition_text}.get(
            action, json_values | steps)
        container[key] = data.draw(strategy)
    return plan


def test_the_base_plan_is_valid() -> None:
    compiled = compile_plan(BASE, TOOLS)
    assert list(compiled.steps) == ["checkout", "test", "notify-all", "ok", "nap", "until",
                                    "hook", "ship"]
    assert [step.kind for step in compiled.steps.values()] == [
        "tool", "tool", "tool", "approval", "sleep", "wait_until", "wait_for_event", "tool"]


@FUZZ
@given(json_values)
def test_random_json_values_are_rejected_cleanly(value: Any) -> None:
    check_plan(value)


@FUZZ
@given(st.text(max_size=60) | json_values.map(repr))
def test_random_strings_are_rejected_cleanly(text: str) -> None:
    check_plan(text)


@FUZZ
@given(st.data())
def test_mutated_plans_compile_or_list_issues(data: st.DataObject) -> None:
    plan = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        plan = mutate(plan, data)
    compiled = check_plan(plan)
    if compiled is not None:
        check_inputs(compiled, data.draw(json_values))


@FUZZ
@given(generated_plans)
def test_generated_plans_compile_or_list_issues(plan: dict[str, Any]) -> None:
    check_plan(plan)


wait_kinds = st.one_of(
    st.fixed_dictionaries({"sleep": st.floats(-1, 1e9) | st.integers(0, 10)}),
    st.fixed_dictionaries({"wait_until": times}),
    st.fixed_dictionaries({"wait_for_event": event_names},
                          optional={"timeout": st.floats(0, 100)}),
    st.fixed_dictionaries({"approval": approvals}),
    st.fixed_dictionaries({"tool": st.just("notify"), "approval": approvals,
                           "args": st.just({"text": "${item}"}),
                           "foreach": st.just("${steps.checkout.output.pythons}")}),
)
wait_steps = st.tuples(
    wait_kinds,
    st.fixed_dictionaries({}, optional={
        "when": condition_text | st.sampled_from(["steps.w.output.approved",
                                                  "steps.ok.output.approved == false"]),
        "after": st.lists(step_ids, max_size=2), "continue_on_error": st.booleans(),
        "timeout": st.floats(1, 10), "foreach": st.just([1, 2]),
        "retry": st.just({"max_attempts": 2})}),
).map(lambda parts: {"id": "w", **parts[1], **parts[0]})


@FUZZ
@given(wait_steps, st.sampled_from(["${steps.w.output}", "${steps.w.output.approved}",
                                    "${steps.w.output.x[0]}", "${steps.w.status}"]))
def test_generated_wait_steps_compile_or_list_issues(step: dict[str, Any], use: str) -> None:
    plan = copy.deepcopy(BASE)
    plan["steps"].append(step)
    plan["outputs"]["w"] = use
    check_plan(plan)


@FUZZ
@given(json_values | st.dictionaries(st.sampled_from(["ref", "n", "tags", "other"]),
                                     json_values, max_size=4))
def test_random_inputs_validate_or_list_issues(inputs: Any) -> None:
    check_inputs(compile_plan(BASE, TOOLS), inputs)


@FUZZ
@given(condition_text | st.text(max_size=40))
def test_random_conditions_compile_or_raise_a_syntax_issue(text: str) -> None:
    try:
        condition = compile_condition(text, "$.when")
    except PlanValidationError as error:
        assert [issue.path for issue in error.issues] == ["$.when"]
        return
    scope = Scope(inputs={"ref": "main", "tags": ["x"]}, steps=SCOPE_VIEWS, item=None, index=None)
    assert condition.evaluate(scope) in (True, False)
