"""JSON plans that amplify, nest, recurse or reach for the host (issue 9, finding 9, and
beyond): references repeated into huge arguments and outputs, foreach over huge lists,
`${= ...}` expressions that build text or parse JSON, plan-supplied JSON Schemas with
catastrophic or unsafe regexes, recursive or remote `$ref`s, deep nesting everywhere, and
fields whose values the engine must refuse (NaN, ids with `/` or NUL, unknown tools).

Each is refused before anything runs, or its run fails at the step that went too far, with
the limit named; the call before it ran once.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import Engine
from agentflow.executors.limits import Limits
from tests.attacks.harness import attack, calls, cases

FIRST = {"id": "first", "tool": "side_effect", "args": {"label": "before"}}


def plan(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"format": "agentflow/v1", "steps": [FIRST, *steps], **fields}


def nested(depth: int, key: str = "items") -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {key: value}
    return value


def text_step(n: int) -> dict[str, Any]:
    return {"id": "a", "tool": "text", "args": {"n": n}}


def list_step(n: int, size: int) -> dict[str, Any]:
    return {"id": "a", "tool": "produce", "args": {"n": n, "size": size}}


def echo(value: Any, **fields: Any) -> dict[str, Any]:
    return {"id": "b", "tool": "echo", "args": {"value": value}, **fields}


def inputs_schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


REDOS = "^(a+)+$"
EVIL = "a" * 40 + "!"

REFUSED = {  # refused before anything runs
    "expression-too-long": plan(echo("${= " + "1 or " * 5000 + "1 }")),
    "expression-deep-parentheses": plan(echo("${= " + "(" * 3000 + "1" + ")" * 3000 + " }")),
    "expression-deep-not": plan(echo("${= " + "not " * 1000 + "true }")),
    "expression-deep-list": plan(echo("${= " + "[" * 60 + "]" * 60 + " }")),
    "expression-deep-calls": plan(echo("${= " + "length(" * 60 + "1" + ")" * 60 + " }")),
    "expression-unknown-function": plan(echo("${= __import__('os') }")),
    "expression-eval": plan(echo("${= eval('1') }")),
    "condition-deep": plan(echo(1, when="(" * 3000 + "true" + ")" * 3000)),
    "condition-call": plan(echo(1, when="__import__('os').system('id')")),
    "condition-attribute": plan(echo(1, when="inputs.__class__.__mro__ == 1 and exec('1')")),
    "reference-to-dunder": plan(echo("${steps.first.__class__}")),
    "reference-through-dunder": plan(echo("${steps.first.output.__class__.__mro__}")),
    "reference-huge-index": plan(echo("${steps.first.output[99999999999999999999999]}")),
    "reference-to-itself": plan(echo("${steps.b.output}")),
    "reference-cycle": plan(echo("${steps.c.output}"),
                            {"id": "c", "tool": "echo", "args": {"value": "${steps.b.output}"}}),
    "reference-unknown-step": plan(echo("${steps.nope.output}")),
    "reference-in-key": plan({"id": "b", "tool": "echo", "args": {"${inputs.x}": 1}}),
    "arguments-deep": plan(echo(nested(900))),
    "arguments-deeper-than-the-recursion-limit": plan(echo(nested(3000))),
    "outputs-deeper-than-the-recursion-limit": plan(outputs={"x": nested(3000)}),
    "approval-deeper-than-the-recursion-limit": plan({"id": "z", "approval": {
        "prompt": "x", "approvers": [nested(3000)]}}),
    "inputs-schema-deeper-than-the-recursion-limit": plan(inputs=inputs_schema(
        x=nested(3000))),
    "inputs-schema-deep": plan(inputs=inputs_schema(x=nested(900))),
    "schema-backreference": plan(inputs=inputs_schema(x={"type": "string",
                                                         "pattern": "(a)\\1"})),
    "schema-lookahead": plan(inputs=inputs_schema(x={"type": "string", "pattern": "(?=a)a"})),
    "schema-bad-regex": plan(inputs=inputs_schema(x={"type": "string", "pattern": "(?P<x"})),
    "schema-pattern-properties-backreference": plan(inputs={
        "type": "object", "patternProperties": {"(a)\\1": {}}}),
    "sleep-nan": plan({"id": "z", "sleep": "${= fromJSON('NaN') }"}),
    "sleep-forever": plan({"id": "z", "sleep": 1e308}),
    "sleep-negative": plan({"id": "z", "sleep": -1}),
    "wait-until-invalid": plan({"id": "z", "wait_until": "9999-99-99"}),
    "wait-until-far-year": plan({"id": "z", "wait_until": "+999999999-01-01"}),
    "retry-without-end": plan(echo(1, retry={"max_attempts": 10**9, "initial_delay": 0,
                                             "backoff": 1e308})),
    "timeout-nan": plan(echo(1, timeout=float("nan"))),
    "max-parallel-huge": plan(list_step(5, 1), echo("${item}", foreach="${steps.a.output}",
                                                    max_parallel=10**9)),
    "sub-plan-unknown": plan({"id": "b", "plan": "self"}),
    "step-id-with-slash": plan({"id": "a/../b", "tool": "echo", "args": {"value": 1}}),
    "step-id-with-nul": plan({"id": "a\u0000", "tool": "echo", "args": {"value": 1}}),
    "step-id-huge": plan({"id": "a" * 100000, "tool": "echo", "args": {"value": 1}}),
    "step-id-past-its-limit": plan({"id": "a" * 101, "tool": "echo", "args": {"value": 1}}),
    "tool-name-injection": plan({"id": "a", "tool": "echo; rm -rf /", "args": {"value": 1}}),
    "tool-name-dunder": plan({"id": "a", "tool": "__class__", "args": {}}),
    "tool-argument-unknown": plan({"id": "a", "tool": "echo", "args": {"value": 1,
                                                                       "shell": "id"}}),
    "field-unknown": plan({"id": "a", "tool": "echo", "args": {"value": 1}, "__proto__": {}}),
    "format-unknown": {"format": "agentflow/v999", "steps": [FIRST]},
    "not-json": "x" * 100000,
    "json-deeper-than-the-recursion-limit": "[" * 100000 + "]" * 100000,
    "plan-with-nan": plan(echo(float("nan"))),
    "literal-argument-huge": plan(echo("a" * (2 << 20))),
    "plan-past-its-size-limit": plan(echo("${= format('{0}{0}', 'ab') }" * 100000)),
    "plan-of-many-steps-past-its-size-limit": plan(*[
        {"id": f"s{i}", "tool": "echo", "args": {"value": i}} for i in range(40000)]),
}

INPUTS_REFUSED = {  # (plan, inputs): the inputs schema the plan brings is applied safely
    "schema-catastrophic-regex-default": (plan(inputs=inputs_schema(
        x={"type": "string", "pattern": REDOS, "default": EVIL})), {}),
    "schema-catastrophic-regex": (plan(inputs=inputs_schema(
        x={"type": "string", "pattern": REDOS})), {"x": EVIL}),
    "schema-catastrophic-alternation": (plan(inputs=inputs_schema(
        x={"type": "string", "pattern": "^(a|a)*$"})), {"x": EVIL}),
    "schema-catastrophic-property-names": (plan(inputs={
        "type": "object", "propertyNames": {"pattern": REDOS}}), {EVIL: 1}),
    "schema-ref-to-itself": (plan(inputs={"$defs": {"n": {"$ref": "#/$defs/n"}},
                                          "$ref": "#/$defs/n"}), {}),
    "schema-ref-cycle": (plan(inputs={"$defs": {"a": {"$ref": "#/$defs/b"},
                                                "b": {"$ref": "#/$defs/a"}},
                                      **inputs_schema(x={"$ref": "#/$defs/a"})}), {"x": 1}),
    "schema-dynamic-ref-to-itself": (plan(inputs={"$dynamicAnchor": "a",
                                                  "$dynamicRef": "#a"}), {}),
    "schema-ref-over-http": (plan(inputs=inputs_schema(
        x={"$ref": "http://127.0.0.1:9/x.json"})), {"x": 1}),
    "schema-ref-to-a-file": (plan(inputs=inputs_schema(
        x={"$ref": "file:///etc/passwd"})), {"x": 1}),
    "schema-tiny-multiple": (plan(inputs=inputs_schema(x={"multipleOf": 1e-308})),
                             {"x": 1e308}),
    "inputs-deeper-than-the-recursion-limit": (plan(), nested(3000, "a")),
    "inputs-with-nan": (plan(), {"x": float("nan")}),
}

STOPPED = {  # valid plans whose run fails at the step that goes too far
    "reference-repeated-in-text": plan(text_step(35), echo("${steps.a.output}" * 1000),
                                       {"id": "c", "tool": "echo",
                                        "args": {"value": "${steps.b.output}" * 1000}}),
    "reference-repeated-in-list": plan(text_step(1000), echo(["${steps.a.output}"] * 2000)),
    "reference-repeated-in-keys": plan(text_step(1000), echo(
        {f"k{i}": "${steps.a.output}" for i in range(2000)})),
    "reference-repeated-in-outputs": plan(text_step(100000), outputs={
        f"o{i}": "${steps.a.output}" for i in range(200)}),
    "reference-repeated-in-prompt": plan(text_step(900000), {"id": "d", "tool": "deploy",
                                         "args": {"target": "x"}, "approval": {
                                             "prompt": "${steps.a.output}${steps.a.output}"}}),
    "foreach-over-twenty-thousand": plan(list_step(20000, 1), {
        "id": "b", "tool": "side_effect", "foreach": "${steps.a.output}",
        "args": {"label": "${item}"}}),
    "foreach-over-a-projection": plan(list_step(100000, 1), echo(
        "${item}", foreach="${= steps.a.output[*] }")),
    "expression-format-repeats": plan(text_step(1000), echo(
        "${= format('" + "{0}" * 101 + "', steps.a.output) }")),
    "expression-join": plan(list_step(1000, 1000), echo("${= join(steps.a.output, '') }")),
    "expression-join-separator": plan(list_step(1000, 1), {"id": "t", "tool": "text",
                                                           "args": {"n": 1000}},
                                      echo("${= join(steps.a.output, steps.t.output) }")),
    "expression-fromjson-deep-literal": plan(echo("${= fromJSON('" + "[" * 1500 + "]" * 1500
                                                  + "') }")),
    "expression-tojson": plan(list_step(1000, 1000), echo("${= toJSON(steps.a.output) }")),
    "expression-fromjson-deep": plan({"id": "a", "tool": "echo", "args": {
        "value": "[" * 50000 + "]" * 50000}}, echo("${= fromJSON(steps.a.output) }")),
    "expression-fromjson-long": plan(text_step(200000), echo(
        "${= fromJSON(steps.a.output) }")),
    "expression-projection-repeated": plan(list_step(1000, 1000), echo(
        ["${= steps.a.output[*] }"] * 100)),
    "result-huge": plan(text_step(2 << 20)),
    "result-deep": plan({"id": "a", "tool": "echo", "args": {"value": nested(62, "a")}},
                        echo("${steps.a.output}", foreach="${= [1, 2, 3] }"),
                        outputs={"x": {"y": {"z": "${steps.a.output}"}}}),
}

BIG_BUT_BOUNDED = {  # linear work on large inputs: the engine stays responsive
    "schema-catastrophic-pattern-properties": (plan(inputs={
        "type": "object", "patternProperties": {REDOS: {"type": "integer"}}}), {EVIL: "x"}),
    "schema-catastrophic-pattern-on-a-long-text": (plan(inputs=inputs_schema(
        x={"type": "string", "pattern": REDOS})), {"x": "a" * 100000}),
    "schema-huge-enum": (plan(inputs=inputs_schema(x={"enum": list(range(50000))})),
                         {"x": 49999}),
    "schema-unique-items": (plan(inputs=inputs_schema(x={"type": "array",
                                                         "uniqueItems": True})),
                            {"x": [[i] for i in range(20000)]}),
}


@pytest.mark.parametrize("attack_plan", cases(REFUSED))
def test_a_hostile_json_plan_is_refused(engine: Engine, attack_plan: Any) -> None:
    outcome = attack(engine, attack_plan, limits=None)
    assert outcome.error_type == "PlanValidationError", outcome.message


@pytest.mark.parametrize(("attack_plan", "inputs"), [
    pytest.param(*case, id=name) for name, case in INPUTS_REFUSED.items()])
def test_a_hostile_inputs_schema_is_applied_safely(engine: Engine, attack_plan: Any,
                                                   inputs: Any) -> None:
    outcome = attack(engine, attack_plan, limits=None, inputs=inputs)
    assert outcome.error_type == "PlanValidationError", outcome.message
    assert "maximum recursion depth" not in outcome.message  # said in the plan's words


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attack_plan", cases(STOPPED))
def test_an_amplifying_json_plan_fails_at_its_limit(engine: Engine, attack_plan: Any) -> None:
    outcome = attack(engine, attack_plan, limits=None)
    assert outcome.error_type in ("LimitExceeded", "ExpressionError"), outcome.message
    assert "limit" in outcome.message or "too deeply" in outcome.message


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("attack_plan", "inputs"), [
    pytest.param(*case, id=name) for name, case in BIG_BUT_BOUNDED.items()])
def test_a_large_schema_is_checked_in_linear_time(engine: Engine, attack_plan: Any,
                                                  inputs: Any) -> None:
    # No clock: a backtracking match of EVIL would take 2**40 steps and the test would time
    # out; the speed of the rest is bench/'s to measure.
    calls.clear()
    result = engine.execute(attack_plan, inputs=inputs)
    assert result.status == "completed", result.error
    assert calls.labels["before"] == 1


def test_a_journal_quota_stops_a_foreach_that_repeats_a_result(engine: Engine) -> None:
    tenant = engine.tenant("quota", limits=Limits(max_run_journal_bytes=200_000))
    calls.clear()
    result = tenant.execute(plan(list_step(100, 100), echo(
        "${steps.a.output}", foreach="${steps.a.output}")))
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "LimitExceeded"
    assert "max_run_journal_bytes=200000" in result.error.message
    assert 0 < len(calls.keys) < 40  # the calls before the quota ran, once each
    calls.none_twice()
