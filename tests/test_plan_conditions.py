"""The `when` expression language: our own parser, evaluated safely."""

from __future__ import annotations

import re

import pytest

from agentflow.errors import PlanValidationError
from agentflow.plan import Scope, StepView, compile_condition

SCOPE = Scope(
    inputs={"env": "prod", "count": 3, "tags": ["a", "b"], "flags": {"fast": True}},
    steps={
        "test-py3": StepView("succeeded", {"passed": True, "failures": 0, "names": ["x"]}),
        "lint": StepView("failed", None, "syntax error"),
        "gate": StepView("skipped"),
    },
)


def holds(text: str, scope: Scope = SCOPE) -> bool:
    return compile_condition(text, "$.steps[0].when").evaluate(scope)


@pytest.mark.parametrize(("text", "expected"), [
    ("inputs.env == 'prod'", True),
    ('inputs.env != "prod"', False),
    ("inputs.count > 2 and inputs.count <= 3", True),
    ("inputs.count >= 4 or inputs.count < 0", False),
    ("inputs.count == -3", False),
    ("-1.5e1 < inputs.count", True),
    ("1 == 1.0", True),
    ("'b' in inputs.tags", True),
    ("'c' not in inputs.tags", True),
    ("'ro' in inputs.env", True),
    ("'fast' in inputs.flags", True),
    ("inputs.tags == ['a', 'b']", True),
    ("inputs.env in ['prod', 'staging',]", True),
    ("[] == []", True),
    ("true and not false and null == None and True != False", True),
    ("not inputs.count == 3", False),
    ("not (inputs.count == 3 or false)", False),
    ("false and true or true", True),
    ("false and (true or true)", False),
    ("'it\\'s' == \"it's\"", True),
])
def test_expressions(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_paths_into_step_results_with_dashed_ids() -> None:
    assert holds("steps.test-py3.output.passed")
    assert holds("steps.test-py3.output.failures == 0 and steps.test-py3.output.names[0] == 'x'")
    assert holds("steps.lint.status == 'failed' and 'syntax' in steps.lint.error")
    assert holds("${steps.test-py3.output.passed} == true")


def test_a_path_value_is_tested_for_truth() -> None:
    assert not holds("steps.test-py3.output.failures")
    assert holds("inputs.tags")
    assert not holds("steps.gate.output")


def test_a_missing_path_reads_as_null_instead_of_raising() -> None:
    assert holds("inputs.nope == null")
    assert holds("steps.lint.output.passed == null")
    assert holds("steps.never-ran.status == null")
    assert not holds("inputs.tags[9].x > 1")
    assert not holds("item == 1")


@pytest.mark.parametrize("text", [
    "null < 3", "'a' < 3", "inputs.tags > 1", "true > false", "inputs.nope >= 0",
    "true == 1", "0 == false", "1 in 'abc'", "'a' in 5", "[1] in inputs.flags",
])
def test_incompatible_comparisons_are_false_not_errors(text: str) -> None:
    assert holds(text) is False


def test_status_functions_read_the_scope() -> None:
    failed = Scope(inputs={}, steps={}, upstream_success=False, upstream_failure=True)
    assert holds("always()", failed)
    assert holds("failure()", failed) and not holds("success()", failed)
    assert holds("success() and not failure()")
    assert holds("failure() or inputs.env == 'prod'")


def test_uses_status_function_tells_the_executor_whether_to_add_success() -> None:
    assert compile_condition("always()").uses_status_function
    assert compile_condition("not failure() and inputs.x").uses_status_function
    assert not compile_condition("inputs.x == 'success()'").uses_status_function


def test_references_are_listed_with_the_json_path_of_the_condition() -> None:
    condition = compile_condition("steps.a.output.x > 1 and inputs.y", "$.steps[4].when")
    assert [(r.root, r.step, r.path, r.json_path) for r in condition.references] == [
        ("steps", "a", ("x",), "$.steps[4].when"),
        ("inputs", None, ("y",), "$.steps[4].when"),
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("inputs.x ==", "expected a value, a path or '(', found the end at the end"),
    ("inputs.x & inputs.y", "unexpected character '&' at column 10"),
    ("inputs.x = 1", "use '==' at column 10"),
    ("(inputs.x", "expected ')' to close '(', found the end"),
    ("1 < inputs.x < 3", "comparisons cannot be chained; combine them with 'and' at column 14"),
    ("success(1)", "expected ')' (success() takes no arguments), found 1 at column 9"),
    ("foo()", "unknown name 'foo'"),
    ("steps.a", "expected .output, .status or .error after steps.a"),
    ("inputs.x inputs.y", "expected 'and', 'or' or the end, found 'inputs.y' at column 10"),
    ("'open", "unterminated string at column 1"),
    ("   ", "the condition is empty"),
    ("__import__('os').system('x')", "unknown name '__import__'"),
    ("[1, 2", "expected ']' to close the list"),
])
def test_syntax_errors_point_at_the_column(text: str, message: str) -> None:
    with pytest.raises(PlanValidationError, match=re.escape(message)) as caught:
        compile_condition(text, "$.steps[2].when")
    assert [(issue.path, issue.code) for issue in caught.value.issues] == [
        ("$.steps[2].when", "syntax")]


def test_nesting_is_bounded() -> None:
    with pytest.raises(PlanValidationError, match="nested more than"):
        compile_condition("(" * 500 + "true" + ")" * 500)
    with pytest.raises(PlanValidationError, match="nested more than"):
        compile_condition("not " * 500 + "true")
    assert holds("(" * 20 + "true" + ")" * 20)


def test_a_rejected_approval_is_data_for_conditions() -> None:
    decision = {"approved": False, "by": "bob", "comment": None, "reason": "freeze week"}
    scope = Scope(inputs={}, steps={"ok": StepView("rejected", decision)})
    assert holds("steps.ok.status == 'rejected'", scope)
    assert holds("not steps.ok.output.approved and steps.ok.output.reason == 'freeze week'",
                 scope)
    assert not holds("steps.ok.output.approved", scope)
