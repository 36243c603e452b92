"""Contract 7 under fuzzing: whatever junk reaches `execute_plan(..., store=...)`, the answer
is a `PlanValidationError` with issues, no tool runs and the store gets no run, plan or
journal row. (`test_plan_fuzz.py` fuzzes the plan layer alone; this goes through the engine
and its store.)

One store file serves every example of a test, so a single stray write by any example
fails the test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow import PlanValidationError, ToolContext, execute_plan, tool
from tests.support.store_rows import row_counts

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EMPTY = {"runs": 0, "plans": 0, "journal": 0}
CALLS: list[str] = []


@tool
def fetch(url: str, retries: int = 0, ctx: ToolContext | None = None) -> dict[str, Any]:
    CALLS.append("fetch")
    return {"body": url, "links": [url]}


@tool
def summarize(texts: list[str]) -> str:
    CALLS.append("summarize")
    return " ".join(texts)


TOOLS = [fetch, summarize]
VALID: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "research",
    "inputs": {"type": "object", "properties": {"url": {"type": "string"}},
               "required": ["url"]},
    "steps": [
        {"id": "first", "tool": "fetch", "args": {"url": "${inputs.url}"}},
        {"id": "more", "tool": "fetch", "foreach": "${steps.first.output.links}",
         "args": {"url": "${item}"}, "max_parallel": 2, "retry": {"max_attempts": 2}},
        {"id": "sum", "tool": "summarize", "args": {"texts": ["${steps.first.output.body}"]},
         "after": ["more"], "when": "steps.more.status == 'succeeded'"},
    ],
    "outputs": {"summary": "${steps.sum.output}"},
}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
plan_keys = st.sampled_from(["format", "name", "steps", "inputs", "outputs", "id", "tool",
                             "args", "after", "when", "foreach", "retry", "timeout"])
junk_plans = st.one_of(
    json_values,
    json_values.map(json.dumps),
    st.dictionaries(plan_keys, json_values, max_size=6),
    st.fixed_dictionaries({"steps": st.lists(
        st.dictionaries(plan_keys, json_values | st.sampled_from(["fetch", "summarize"]),
                        max_size=5), max_size=4)}),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fuzz") / "runs.db"
    yield path
    assert row_counts(path) == EMPTY


def check_rejected(plan: Any, store: Path, inputs: Any = None) -> None:
    with pytest.raises(PlanValidationError) as raised:
        execute_plan(plan, tools=TOOLS, inputs=inputs, run_id="fuzz", store=str(store))
    assert raised.value.issues
    assert all(issue.path.startswith("$") and issue.message for issue in raised.value.issues)
    assert not CALLS
    assert row_counts(store) == EMPTY


def test_the_valid_plan_is_valid(tmp_path: Path) -> None:
    result = execute_plan(VALID, tools=TOOLS, inputs={"url": "u"}, store=str(tmp_path / "r.db"))
    assert (result.status, result.outputs) == ("completed", {"summary": "u"})
    CALLS.clear()


@FUZZ
@given(plan=junk_plans)
def test_junk_plans_are_rejected_and_write_nothing(store: Path, plan: Any) -> None:
    check_rejected(plan, store, inputs={"url": "u"})


def _mutations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """(kind, argument) pairs, each of which alone makes VALID invalid."""
    junk = draw(st.text(min_size=1, max_size=6))
    index = draw(st.integers(0, 2))
    options: list[tuple[str, Any]] = [
        ("unknown_tool", (index, "zz_" + junk)),
        ("bad_id", (index, "9" + junk)),
        ("missing_ref", (index, "${steps.nowhere_" + str(len(junk)) + ".output}")),
        ("cycle", None),
        ("duplicate", index),
        ("unknown_field", (index, "x_" + junk)),
        ("bad_retry", draw(st.sampled_from([0, -1, "three", 101, None, [1]]))),
        ("bad_timeout", draw(st.sampled_from([0, -5, "soon", [], {}]))),
        ("bad_format", "agentflow/v" + junk),
        ("steps_not_list", draw(json_scalars | st.dictionaries(st.text(max_size=3),
                                                                json_scalars))),
        ("bad_when", "steps.first.output ==" + draw(st.sampled_from(["", " ==", " (", " and"]))),
        ("extra_arg", (index, "unknown_arg_" + junk)),
    ]
    return draw(st.lists(st.sampled_from(options), min_size=1, max_size=3))


def _apply(plan: dict[str, Any], kind: str, arg: Any) -> None:
    steps = plan["steps"]
    if kind == "unknown_tool":
        steps[arg[0]]["tool"] = arg[1]
    elif kind == "bad_id":
        steps[arg[0]]["id"] = arg[1]
    elif kind == "missing_ref":
        steps[arg[0]]["args"]["url" if arg[0] < 2 else "texts"] = arg[1]
    elif kind == "cycle":
        steps[0]["after"] = ["sum"]
    elif kind == "duplicate":
        steps.append(copy.deepcopy(steps[arg]))
    elif kind == "unknown_field":
        steps[arg[0]][arg[1]] = True
    elif kind == "bad_retry":
        steps[1]["retry"] = {"max_attempts": arg}
    elif kind == "bad_timeout":
        steps[2]["timeout"] = arg
    elif kind == "bad_format":
        plan["format"] = arg
    elif kind == "steps_not_list":
        plan["steps"] = arg
    elif kind == "bad_when":
        steps[2]["when"] = arg
    elif kind == "extra_arg":
        steps[arg[0]]["args"][arg[1]] = 1


@st.composite
def mutated_plans(draw: st.DrawFn) -> dict[str, Any]:
    plan = copy.deepcopy(VALID)
    mutations = _mutations(draw)
    # replacing `steps` wholesale goes last, so the other mutations still find steps
    mutations.sort(key=lambda m: m[0] == "steps_not_list")
    for kind, arg in mutations:
        _apply(plan, kind, arg)
    return plan


@FUZZ
@given(plan=mutated_plans())
def test_mutated_valid_plans_are_rejected_and_write_nothing(store: Path, plan: Any) -> None:
    check_rejected(plan, store, inputs={"url": "u"})


@FUZZ
@given(inputs=st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)),
    st.dictionaries(st.just("url"), json_scalars.filter(lambda v: not isinstance(v, str)),
                    min_size=1),
    st.dictionaries(st.text(max_size=6).filter(lambda k: k != "url"), json_values,
                    max_size=3),
))
def test_bad_inputs_are_rejected_and_write_nothing(store: Path, inputs: Any) -> None:
    check_rejected(VALID, store, inputs=inputs)
