"""The `${...}` reference language: parsing, templates and run-time resolution."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agentflow.errors import PlanValidationError, ReferenceResolutionError, ValidationIssue
from agentflow.plan import Scope, StepView, compile_template, compile_text
from agentflow.plan.references import MAX_DEPTH, _compile_string, _simple_whole

OUTPUT = {"sha": "abc123", "files": [{"path": "a.py", "lines": [3, 7]}], "n": 4, "ok": True}
SCOPE = Scope(
    inputs={"ref": "main", "list": [{"x": 1}, {"x": 2}], "a b": "spaced", "opt": None},
    steps={
        "checkout": StepView("succeeded", OUTPUT),
        "my-step": StepView("succeeded", {"a": [{"b": "deep"}]}),
        "broken": StepView("failed", None, "boom"),
        "skipped": StepView("skipped"),
    },
)


def evaluate(value: Any, scope: Scope = SCOPE) -> Any:
    return compile_template(value, "$.args").evaluate(scope)


def test_a_whole_reference_keeps_the_type() -> None:
    assert evaluate("${steps.checkout.output.n}") == 4
    assert evaluate("${steps.checkout.output.ok}") is True
    assert evaluate("${steps.checkout.output.files}") == OUTPUT["files"]
    assert evaluate("${inputs.opt}") is None


def test_paths_with_indexes_dashes_and_quoted_keys() -> None:
    assert evaluate("${inputs.list[1].x}") == 2
    assert evaluate('${inputs["a b"]}') == "spaced"
    assert evaluate("${inputs['a b']}") == "spaced"
    assert evaluate("${steps.my-step.output.a[0].b}") == "deep"
    assert evaluate("${steps.checkout.output.files[0].lines[-1]}") == 7
    assert evaluate("${ inputs.ref }") == "main"


def test_interpolation_writes_strings_as_is_and_other_values_as_compact_json() -> None:
    assert evaluate("ref ${inputs.ref}, n=${steps.checkout.output.n}") == "ref main, n=4"
    assert evaluate("${steps.checkout.output.ok}!") == "true!"
    assert evaluate("opt=${inputs.opt}") == "opt=null"
    assert evaluate("${inputs.list[0]}${inputs.ref}") == '{"x":1}main'


def test_step_status_and_error() -> None:
    assert evaluate("${steps.broken.status}") == "failed"
    assert evaluate("${steps.broken.error}") == "boom"
    assert evaluate("${steps.checkout.error}") is None
    assert evaluate("deploy ${steps.skipped.status}") == "deploy skipped"


def test_the_output_of_a_step_that_did_not_succeed_reads_as_none() -> None:
    assert evaluate("${steps.broken.output.anything[3].deep}") is None
    assert evaluate("${steps.skipped.output}") is None


def test_dollar_dollar_brace_is_a_literal() -> None:
    template = compile_template("cost: $${price} for ${inputs.ref}", "$.x")
    assert template.evaluate(SCOPE) == "cost: ${price} for main"
    static = compile_template("$${inputs.ref}", "$.x")
    assert static.is_static and static.evaluate(SCOPE) == "${inputs.ref}"


def test_nested_values_resolve_recursively() -> None:
    value = {"a": [1, "${inputs.ref}", {"b": "x-${steps.checkout.output.sha}"}], "k": "v"}
    assert evaluate(value) == {"a": [1, "main", {"b": "x-abc123"}], "k": "v"}


def test_dict_keys_are_not_templated() -> None:
    assert evaluate({"${inputs.ref}": 1}) == {"${inputs.ref}": 1}


def test_a_value_without_references_is_returned_itself() -> None:
    value = {"a": [1, {"b": "text"}], "c": None}
    template = compile_template(value, "$.args")
    assert template.is_static and template.references == ()
    assert template.evaluate(SCOPE) is value


def test_a_dynamic_template_shares_its_static_parts() -> None:
    static_part = {"big": list(range(5))}
    result = evaluate({"s": static_part, "r": "${inputs.ref}"})
    assert result["s"] is static_part


def test_references_carry_their_json_path_and_shape() -> None:
    template = compile_template(
        {"a": ["x ${inputs.b}", "${steps.s.output.c[0]}"], "i": "${item.name}"}, "$.steps[2].args")
    found = [(r.json_path, r.root, r.step, r.field, r.path, r.whole) for r in template.references]
    assert found == [
        ("$.steps[2].args.a[0]", "inputs", None, None, ("b",), False),
        ("$.steps[2].args.a[1]", "steps", "s", "output", ("c", 0), True),
        ("$.steps[2].args.i", "item", None, None, ("name",), True),
    ]
    assert template.whole_reference is None
    assert compile_template("${index}", "$").whole_reference is not None


def test_item_and_index_inside_a_foreach() -> None:
    scope = Scope(inputs={}, steps={}, item={"tags": ["x", "y"]}, index=3)
    assert evaluate("${item.tags[1]}#${index}", scope) == "y#3"
    assert evaluate("${item}", Scope(inputs={}, steps={}, item=None, index=0)) is None


def test_item_outside_a_foreach_raises() -> None:
    with pytest.raises(ReferenceResolutionError, match="only exists inside a foreach"):
        evaluate("${item}")


def test_a_missing_key_raises_naming_the_reference_and_the_key() -> None:
    with pytest.raises(ReferenceResolutionError) as caught:
        compile_template({"x": "${steps.checkout.output.shaa}"}, "$.steps[1].args").evaluate(
            SCOPE)
    error = caught.value
    assert error.reference == "steps.checkout.output.shaa"
    assert error.json_path == "$.steps[1].args.x"
    assert "steps.checkout.output has no key 'shaa' (keys: sha, files, n, ok)" in str(error)


def test_an_index_out_of_range_raises() -> None:
    with pytest.raises(ReferenceResolutionError,
                       match=re.escape("index 5 is out of range: "
                                       "steps.checkout.output.files has 1 item")):
        evaluate("${steps.checkout.output.files[5].path}")


def test_the_wrong_container_raises() -> None:
    with pytest.raises(ReferenceResolutionError,
                       match=re.escape("steps.checkout.output.sha is a string, not a list")):
        evaluate("${steps.checkout.output.sha[0]}")
    with pytest.raises(ReferenceResolutionError,
                       match=re.escape("inputs.list is a list, not an object")):
        evaluate("${inputs.list.x}")


def test_a_missing_input_raises_in_interpolation_too() -> None:
    with pytest.raises(ReferenceResolutionError, match="inputs has no key 'nope'"):
        evaluate("value: ${inputs.nope}")


def test_a_step_without_a_result_raises() -> None:
    with pytest.raises(ReferenceResolutionError, match="step 'later' has no result yet"):
        evaluate("${steps.later.output}")


@pytest.mark.parametrize(("text", "message"), [
    ("${steps.a}", "expected .output, .status or .error after steps.a"),
    ("${steps.a.outputs}", "expected .output, .status or .error"),
    ("${foo.bar}", "unknown name 'foo'"),
    ("${inputs.x", "expected '}'"),
    ("${index.x}", "index is a number"),
    ("${steps.a.status.x}", "steps.<id>.status is a string"),
    ("${inputs.items.0}", "write [0] for a list item"),
    ("${inputs[x]}", "expected a list index or a quoted key"),
    ("${inputs['x}", "unterminated string"),
    ("${}", "expected a path"),
])
def test_malformed_references_are_reported(text: str, message: str) -> None:
    with pytest.raises(PlanValidationError, match=re.escape(message)) as caught:
        compile_template(text, "$.steps[0].args.x")
    assert [issue.path for issue in caught.value.issues] == ["$.steps[0].args.x"]


def test_every_malformed_reference_in_a_value_is_reported() -> None:
    with pytest.raises(PlanValidationError) as caught:
        compile_template({"a": "${nope}", "b": ["ok ${inputs.x}", "${steps.}"]}, "$.args")
    assert [issue.path for issue in caught.value.issues] == ["$.args.a", "$.args.b[1]"]


def test_nesting_deeper_than_the_limit_is_an_issue() -> None:
    value: Any = "leaf"
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(PlanValidationError, match="nested more than"):
        compile_template(value, "$")


DECISION = {"approved": False, "by": "bob", "comment": None, "reason": "freeze week"}


def test_a_rejected_approval_step_exposes_its_decision() -> None:
    scope = Scope(inputs={}, steps={"ok": StepView("rejected", DECISION),
                                    "gated": StepView("rejected")})
    assert evaluate("${steps.ok.output.reason}", scope) == "freeze week"
    assert evaluate("${steps.ok.output}", scope) == DECISION
    assert evaluate("${steps.ok.status}", scope) == "rejected"
    assert evaluate("${steps.gated.output.anything}", scope) is None  # a gated tool: no output


def test_a_text_template_interpolates_even_a_whole_reference() -> None:
    template = compile_text("${steps.checkout.output.files[0]}", "$.steps[0].approval.prompt")
    assert template.whole_reference is None
    assert [ref.whole for ref in template.references] == [False]
    assert template.evaluate(SCOPE) == '{"path":"a.py","lines":[3,7]}'
    assert compile_text("${inputs.opt}").evaluate(SCOPE) == "null"
    assert compile_text("Deploy ${inputs.ref}?").evaluate(SCOPE) == "Deploy main?"
    assert compile_text("no references").is_static
    with pytest.raises(PlanValidationError, match="expected a path"):
        compile_text("${}")


SPACES = st.sampled_from(["", "", " ", "\t", "\n "])
VALID_HEADS = ["steps.s-1.output", "steps._x.status", "steps.a.error", "inputs", "item",
               "index"]
HEADS = st.sampled_from(VALID_HEADS) | st.sampled_from(
    ["steps.a", "steps.a.outputs", "steps.1.output", "inputsx", "steps..output"])
VALID_SEGMENTS = [".a", ".b-c", "._", "[0]", "[-3]", "[007]", "[-0]", "[123456789012345678]"]
SEGMENTS = st.lists(st.sampled_from(VALID_SEGMENTS) | st.sampled_from(
    ["[1234567890123456789]", "['k']", "[ 0 ]", ".0", ".", "[", "x", "-"]), max_size=3)


@settings(max_examples=500, deadline=None)
@given(st.tuples(st.just("${") | st.sampled_from(["$${", "x${"]), SPACES, HEADS,
                 SEGMENTS.map("".join), SPACES,
                 st.just("}") | st.sampled_from(["", "}x", "}}"])).map("".join))
def test_the_fast_path_for_a_whole_reference_agrees_with_the_parser(text: str) -> None:
    fast = _simple_whole(text, "$.x")
    issues: list[ValidationIssue] = []
    slow = _compile_string(text, "$.x", issues)
    if fast is None:
        event("general parser only")
        return
    event("fast path")
    assert not issues
    assert fast.whole_reference is not None
    assert fast.whole_reference == slow.whole_reference
    assert fast.references == slow.references


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_HEADS), st.lists(st.sampled_from(VALID_SEGMENTS), max_size=3),
       SPACES, SPACES)
def test_simple_whole_references_take_the_fast_path(head: str, segments: list[str],
                                                    before: str, after: str) -> None:
    text = f"${{{before}{head}{''.join(segments)}{after}}}"
    fast = _simple_whole(text, "$.x")
    issues: list[ValidationIssue] = []
    slow = _compile_string(text, "$.x", issues)
    if segments and head.split(".")[-1] in ("index", "status", "error"):
        assert fast is None and issues  # no path goes on from a number or a string
        return
    assert fast is not None and not issues
    assert fast.references == slow.references and fast.whole_reference == slow.whole_reference
