"""`${= expression}` values: the language, its functions, its limits, escaping, validation
against the tools' schemas, and computed foreach, timeout and continue_on_error in runs."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typing_extensions import TypedDict

from agentflow import PlanValidationError, execute_plan, tool
from agentflow.demo import TOOLS as DEMO_TOOLS
from agentflow.errors import ExpressionError
from agentflow.plan import Scope, StepView, compile_plan, compile_template
from agentflow.plan.expressions import MAX_EXPRESSION_LENGTH, MAX_NESTING, compile_expression
from agentflow.plan.functions import MAX_TEXT

ROOT = Path(__file__).resolve().parent.parent
SCOPE = Scope(
    inputs={"flag": None, "on": True, "env": "prod", "ref": "refs/tags/v1.2", "n": 3,
            "matrix": '["3.12", "3.13"]', "empty": "", "zero": 0, "words": ["a", "B"]},
    steps={"a": StepView("succeeded", {"labels": [{"name": "bug"}, {"name": "ui"}, {}],
                                       "count": 2, "nested": {"x": [1, 2]}}),
           "f": StepView("failed", None, "boom")},
)


def value(text: str, scope: Scope = SCOPE) -> Any:
    return compile_template(text, "$.x").evaluate(scope)


@pytest.mark.parametrize(("text", "expected"), [
    # defaulting and choosing, GitHub style
    ("${= inputs.flag || false}", False),
    ("${= inputs.flag || 'default'}", "default"),
    ("${= inputs.missing || 7}", 7),
    ("${= inputs.env || 'x'}", "prod"),
    ("${= inputs.zero || inputs.empty || 'last'}", "last"),
    ("${= inputs.env == 'prod' && 'large' || 'small'}", "large"),
    ("${= inputs.env == 'dev' && 'large' || 'small'}", "small"),
    ("${= inputs.on and inputs.n}", 3),
    ("${= inputs.flag and inputs.n}", None),
    ("${= not inputs.flag}", True),
    ("${= !inputs.on}", False),
    ("${= inputs.n >= 3 && inputs.n < 4}", True),
    ("${= 'B' in inputs.words}", True),
    ("${= [inputs.n, 'x', null]}", [3, "x", None]),
    # functions
    ("${= startsWith(inputs.ref, 'REFS/tags/')}", True),
    ("${= endsWith(inputs.ref, '.2')}", True),
    ("${= contains(inputs.words, 'b')}", True),
    ("${= contains(inputs.ref, 'TAGS')}", True),
    ("${= contains(steps.a.output.nested.x, 2)}", True),
    ("${= format('{0}-{1}-{0} {{literal}}', inputs.env, inputs.n)}", "prod-3-prod {literal}"),
    ("${= format('{0}', null)}", ""),
    ("${= join(inputs.words)}", "a,B"),
    ("${= join(inputs.words, ' | ')}", "a | B"),
    ("${= length(inputs.words)}", 2),
    ("${= length(inputs.ref)}", 14),
    ("${= length(inputs.flag)}", 0),
    ("${= toJSON(steps.a.output.nested)}", '{"x":[1,2]}'),
    ("${= fromJSON(inputs.matrix)}", ["3.12", "3.13"]),
    ("${= coalesce(inputs.flag, inputs.missing, inputs.n)}", 3),
    ("${= coalesce(inputs.flag)}", None),
    # paths, projections, statuses
    ("${= steps.a.output.labels[*].name}", ["bug", "ui", None]),
    ("${= steps.a.output.labels.*.name}", ["bug", "ui", None]),
    ("${= join(steps.a.output.labels[*].name, '+')}", "bug+ui+"),
    ("${= inputs.words[*]}", ["a", "B"]),
    ("${= inputs.env[*].x}", None),
    ("${= steps.f.status == 'failed' && steps.f.error}", "boom"),
    ("${= steps.f.output.anything || 'none'}", "none"),
    # embedded in text, and escaping
    ("tag ${= endsWith(inputs.ref, '2')} for ${inputs.env}", "tag true for prod"),
    ("price: $$${inputs.n}", "price: $3"),
    ("literal $${inputs.n}", "literal ${inputs.n}"),
    ("two $$$$ and ${inputs.n}", "two $$ and 3"),
    ("no reference, $$ kept", "no reference, $$ kept"),
    ("a lone $ before ${inputs.n}", "a lone $ before 3"),
    ("${= format('{0}}}', 'x')}", "x}"),
    ("${= toJSON(toJSON(toJSON('q')))}", json.dumps(json.dumps(json.dumps("q")))),
])
def test_values(text: str, expected: Any) -> None:
    assert value(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("${= }", "the expression is empty"),
    ("${= inputs.n", "expected '}' to close the expression"),
    ("${= nope(1)}", "unknown name 'nope'"),
    ("${= length()}", "length() takes 1 argument(s), not 0"),
    ("${= join(1, 2, 3)}", "join() takes 1 to 2 argument(s), not 3"),
    ("${= format()}", "format() takes at least 1 argument(s), not 0"),
    ("${= inputs.a[*].b[*]}", "only one projection [*] per path"),
    ("${inputs.a[*].b}", "a projection [*] works in expressions only"),
    ("${= inputs.n = 3}", "use '=='"),
    ("${= success() && 1}", "always(), success() and failure() only work in 'when'"),
])
def test_syntax_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(PlanValidationError, match=re.escape(message)) as caught:
        compile_template(text, "$.steps[0].args.x")
    assert [issue.path for issue in caught.value.issues] == ["$.steps[0].args.x"]


@pytest.mark.parametrize(("text", "message"), [
    ("${= fromJSON('{nope')}", "fromJSON(): not JSON"),
    ("${= fromJSON(3)}", "fromJSON() takes a string"),
    ("${= length(3)}", "length() takes a string, a list or an object, not int"),
    ("${= format('{1}', 'a')}", "names no argument (there are 1)"),
    ("${= format('a } b')}", "a lone '}'"),
    ("${= format(3)}", "format() takes a string first"),
])
def test_evaluation_errors_are_expression_errors(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)) as caught:
        value(text)
    assert caught.value.json_path == "$.x"


# -- limits -------------------------------------------------------------------------------


def test_expression_length_at_the_limit_and_past_it() -> None:
    padding = MAX_EXPRESSION_LENGTH - len("'' ")
    at_limit = "'" + "x" * padding + "' "
    assert len(at_limit) == MAX_EXPRESSION_LENGTH
    assert value("${=" + at_limit + "}") == "x" * padding
    with pytest.raises(PlanValidationError, match="more than the limit of 4,000"):
        compile_template("${=" + at_limit + " }")
    with pytest.raises(PlanValidationError, match="more than the limit of 4,000"):
        compile_expression("1 == 1" + " " * MAX_EXPRESSION_LENGTH)


def test_nesting_at_the_limit_and_past_it() -> None:
    assert value("${=" + "(" * MAX_NESTING + "1" + ")" * MAX_NESTING + "}") == 1
    assert value("${=" + "coalesce(" * MAX_NESTING + "'x'" + ")" * MAX_NESTING + "}") == "x"
    for deep in ("(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1),
                 "coalesce(" * (MAX_NESTING + 1) + "'x'" + ")" * (MAX_NESTING + 1),
                 "!" * (MAX_NESTING + 1) + "true"):
        with pytest.raises(PlanValidationError, match="nested more than 50 levels"):
            compile_template("${=" + deep + "}")


def scope_with(text: str) -> Scope:
    return Scope(inputs={"text": text, "list": [text]}, steps={})


@pytest.mark.parametrize(("expression", "size_of"), [
    ("format('{0}', inputs.text)", lambda n: n),
    ("format('{0}{0}', inputs.text)", lambda n: 2 * n),
    ("join(inputs.list, '')", lambda n: n),
    ("toJSON(inputs.text)", lambda n: n + 2),
])
def test_built_strings_at_the_limit_and_past_it(expression: str, size_of: Any) -> None:
    size = next(n for n in range(MAX_TEXT, 0, -1) if size_of(n) <= MAX_TEXT)
    template = compile_template("${= " + expression + "}")
    assert len(template.evaluate(scope_with("x" * size))) == size_of(size) <= MAX_TEXT
    with pytest.raises(ExpressionError, match="more than the limit of 100,000"):
        template.evaluate(scope_with("x" * (size + 1)))


def test_from_json_reads_at_most_the_limit() -> None:
    template = compile_template("${= fromJSON(inputs.text)}")
    text = '"' + "x" * (MAX_TEXT - 2) + '"'
    assert template.evaluate(scope_with(text)) == "x" * (MAX_TEXT - 2)
    with pytest.raises(ExpressionError, match="fromJSON\\(\\)'s text would be 100,001"):
        template.evaluate(scope_with(text + " "))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        template.evaluate(scope_with("[" * 50_000 + "]" * 50_000))


# -- the property: nothing but our errors, and work linear in the expression ------------------

ATOMS = ["inputs.n", "inputs.flag", "inputs.words", "inputs.ref", "steps.a.output.labels",
         "steps.a.output.labels[*].name", "steps.f.status", "'x'", '"y"', "1", "-2.5", "true",
         "null", "[", "]", "(", ")", ",", "&&", "||", "!", "and", "or", "not", "in", "==",
         "!=", "<", ">=", "startsWith(", "endsWith(", "contains(", "format(", "join(",
         "length(", "toJSON(", "fromJSON(", "coalesce(", "success()", "'{0}'", "'[1]'",
         "${inputs.n}", "}", "'", "=", "@", "inputs.", "[*]", "steps.zz.output"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=40))
def test_random_expressions_raise_only_our_errors_in_linear_work(atoms: list[str]) -> None:
    text = " ".join(atoms)
    work = [0]

    def tick() -> None:
        work[0] += 1

    try:
        expression = compile_expression(text, "$.x", count=tick)
    except PlanValidationError:
        return
    with contextlib.suppress(ExpressionError):
        expression.evaluate(SCOPE)
    assert work[0] <= len(atoms), (text, work[0])  # each part evaluated at most once


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="${}=ab .", max_size=30))
def test_every_literal_string_can_be_written(text: str) -> None:
    """The rule of the schema: double every literal '$' (a string without '${' may also be
    written as it is); then a '$' and a reference can follow."""
    doubled = text.replace("$", "$$")
    assert compile_template(doubled if "${" in doubled else text).evaluate(SCOPE) == text
    if "${" not in text:
        assert compile_template(text).evaluate(SCOPE) == text
    assert compile_template(doubled + "$$${inputs.n}").evaluate(SCOPE) == text + "$3"


# -- validation against the tools' schemas --------------------------------------------------


class Label(TypedDict):
    name: str


class Scaled(TypedDict):
    replicas: int
    labels: list[Label]


@tool
def scale(replicas: int, region: str = "eu") -> Scaled:
    """Scale the service."""
    return {"replicas": replicas, "labels": [{"name": region}]}


def plan(**second: Any) -> dict[str, Any]:
    return {"name": "p", "inputs": {"type": "object", "properties": {
        "n": {"type": ["integer", "null"]}, "env": {"type": "string"}}},
        "steps": [{"id": "a", "tool": "scale", "args": {"replicas": 1}},
                  {"id": "b", "tool": "scale", **second}]}


@pytest.mark.parametrize(("second", "path", "message"), [
    ({"args": {"replicas": "${= startsWith(inputs.env, 'p')}"}}, "$.steps[1].args.replicas",
     "argument 'replicas' of tool 'scale' expects an integer, but "
     "${= startsWith(inputs.env, 'p')} is a boolean"),
    ({"args": {"replicas": "${= format('{0}', inputs.n)}"}}, "$.steps[1].args.replicas",
     "expects an integer, but ${= format('{0}', inputs.n)} is a string"),
    ({"args": {"replicas": "${= steps.a.output.nope || 1}"}}, "$.steps[1].args.replicas",
     "steps.a.output has no field 'nope'"),
    ({"args": {"replicas": 1, "region": "${= join(steps.a.output.labels[*].nam)}"}},
     "$.steps[1].args.region", "has no field 'nam'"),
    ({"args": {"replicas": "${= length(steps.a.output.replicas[*].x)}"}},
     "$.steps[1].args.replicas", "is an integer, so [*] has no items to project"),
    ({"args": {"replicas": 1}, "foreach": "${= join(['a'])}"}, "$.steps[1].foreach",
     "foreach needs a list, but ${= join(['a'])} is a string"),
    ({"args": {"replicas": 1}, "timeout": "${= inputs.env}"}, "$.steps[1].timeout",
     "timeout needs a number of seconds, but ${= inputs.env} is a string"),
    ({"args": {"replicas": 1}, "timeout": "soon"}, "$.steps[1].timeout",
     "timeout must be a number of seconds, or one '${...}' reference"),
    ({"args": {"replicas": 1}, "continue_on_error": "${= steps.zz.status}"},
     "$.steps[1].continue_on_error", "unknown step 'zz'"),
])
def test_validation_type_checks_expressions(second: dict[str, Any], path: str,
                                            message: str) -> None:
    with pytest.raises(PlanValidationError) as caught:
        compile_plan(plan(**second), {"scale": scale})
    [issue] = caught.value.issues
    assert issue.path == path and message in issue.message, issue


def test_well_typed_expressions_pass_validation() -> None:
    compiled = compile_plan(plan(
        args={"replicas": "${= inputs.n || steps.a.output.replicas}",
              "region": "${= join(steps.a.output.labels[*].name, '-')}"},
        foreach="${= fromJSON('[1, 2]')}", timeout="${= inputs.n && 30 || 60}",
        continue_on_error="${= inputs.env == 'dev'}"), {"scale": scale})
    assert compiled.steps["b"].dependencies == {"a"}


# -- in runs ---------------------------------------------------------------------------------


def test_the_computed_release_example_runs(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    example = ROOT / "plans" / "computed_release.json"
    store = str(tmp_path / "runs.db")
    branch = execute_plan(example, tools=DEMO_TOOLS, store=store)
    assert branch.status == "completed", branch.error
    assert branch.outputs["environment"] == "staging"
    assert branch.outputs["tested"] == ["3.12", "3.13"]
    assert branch.outputs["bug_budget"] == "open bugs cost $5k"
    assert "open bugs: bug: " in branch.steps["notify"].output["sent"]
    tag = execute_plan(example, tools=DEMO_TOOLS, store=store, inputs={
        "ref": "refs/tags/v2", "matrix": '["3.11"]', "slow": True})
    assert tag.outputs["environment"] == "production" and tag.outputs["tested"] == ["3.11"]


def test_computed_timeout_and_continue_on_error_take_effect(tmp_path: Path) -> None:
    release = threading.Event()

    @tool
    def hang() -> str:
        release.wait(60)
        return "late"

    @tool
    def after(text: str) -> str:
        return text

    try:
        result = execute_plan({"name": "t", "inputs": {"type": "object", "properties": {
            "quick": {"type": "boolean"}}},
            "steps": [{"id": "slow", "tool": "hang", "timeout": "${= inputs.quick && 0.2 || 600}",
                       "continue_on_error": "${= inputs.quick}"},
                      {"id": "next", "tool": "after", "after": ["slow"],
                       "args": {"text": "${= steps.slow.status}"}}]},
            tools=[hang, after], inputs={"quick": True}, store=str(tmp_path / "runs.db"))
    finally:
        release.set()
    assert result.status == "completed", result.error
    assert result.steps["slow"].status == "failed"
    assert "took longer than 0.2s" in (result.steps["slow"].error or "")
    assert result.steps["next"].output == "failed"


def test_a_timeout_expression_that_gives_no_number_fails_the_step(tmp_path: Path) -> None:
    @tool
    def quick() -> int:
        return 1

    result = execute_plan({"name": "t", "inputs": {"type": "object", "properties": {
        "t": {}}}, "steps": [{"id": "a", "tool": "quick", "timeout": "${= inputs.t}"}]},
        tools=[quick], inputs={"t": -5}, store=str(tmp_path / "runs.db"))
    assert result.status == "failed"
    assert "timeout must be a number of seconds" in str(result.error)
    assert json.loads(json.dumps(result.steps["a"].error)) is not None


def test_a_condition_that_cannot_evaluate_fails_its_step(tmp_path: Path) -> None:
    @tool
    def give() -> str:
        return "{not json"

    result = execute_plan({"name": "c", "steps": [
        {"id": "a", "tool": "give"},
        {"id": "b", "tool": "give", "when": "fromJSON(steps.a.output) == 1"}]},
        tools=[give], store=str(tmp_path / "runs.db"))
    assert result.status == "failed"
    assert result.steps["a"].status == "succeeded"
    assert result.steps["b"].status == "failed"
    assert "$.steps[1].when: cannot evaluate" in (result.steps["b"].error or "")
    assert "fromJSON(): not JSON" in (result.steps["b"].error or "")


def test_wait_until_takes_an_expression(tmp_path: Path) -> None:
    result = execute_plan({"name": "w", "inputs": {"type": "object", "properties": {
        "deadline": {"type": ["string", "null"]}}},
        "steps": [{"id": "wait", "wait_until":
                   "${= coalesce(inputs.deadline, '2000-01-01T00:00:00Z')}"}]},
        inputs={"deadline": None}, store=str(tmp_path / "runs.db"))
    assert result.status == "completed", result.error
    assert result.steps["wait"].status == "succeeded"
