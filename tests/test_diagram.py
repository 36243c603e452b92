"""Plan diagrams: Mermaid and DOT text name every step and every dependency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentflow.demo import TOOLS
from agentflow.errors import PlanValidationError
from agentflow.plan import compile_plan
from agentflow.plan.diagram import plan_graph, to_dot, to_mermaid

ROOT = Path(__file__).resolve().parent.parent


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "plans" / name).read_text())
    return data


def test_the_graph_of_plan_data_matches_the_compiled_plan() -> None:
    for name in ("ci_pipeline.json", "research.json", "release_with_approval.json"):
        data = load(name)
        compiled = compile_plan(data, {tool.name: tool for tool in TOOLS})
        assert plan_graph(data) == plan_graph(compiled)
        assert to_mermaid(data) == to_mermaid(compiled)


def test_release_plan_graph() -> None:
    graph = plan_graph(load("release_with_approval.json"))
    assert graph.name == "release_with_approval"
    assert [(node.id, node.shape, node.lines, node.conditional) for node in graph.nodes] == [
        ("checkout", "tool", ("checkout", "tool: checkout"), False),
        ("test", "tool", ("test", "tool: run_tests (for each item)"), False),
        ("build", "tool", ("build", "tool: build"), False),
        ("deploy", "tool", ("deploy", "tool: deploy (approval)"), False),
        ("notify", "tool", ("notify", "tool: notify", "when: always()"), True)]
    assert graph.edges == (("checkout", "test"), ("checkout", "build"), ("test", "build"),
                           ("checkout", "deploy"), ("build", "deploy"),
                           ("checkout", "notify"), ("deploy", "notify"))


WAITS: dict[str, Any] = {"name": "waits", "steps": [
    {"id": "ok", "approval": {"prompt": "Go?"}},
    {"id": "nap", "sleep": 90, "after": ["ok"]},
    {"id": "until", "wait_until": "2030-01-01T00:00:00Z", "after": ["nap"]},
    {"id": "paid", "wait_for_event": "payment.received",
     "when": "steps.ok.output.comment == \"a <b> & #c\""},
]}


def test_mermaid_shapes_conditions_and_escapes() -> None:
    assert to_mermaid(WAITS) == (
        "flowchart TD\n"
        '    ok{{"ok<br/>approval"}}\n'
        '    nap(["nap<br/>sleep 90s"])\n'
        '    until(["until<br/>wait until 2030-01-01T00:00:00Z"])\n'
        '    paid(["paid<br/>event: payment.received<br/>when: steps.ok.output.comment == '
        '#quot;a #lt;b#gt; #amp; #35;c#quot;"])\n'
        "    ok --> nap\n"
        "    nap --> until\n"
        "    ok --> paid\n"
        "    classDef conditional stroke-dasharray: 5 5\n"
        "    class paid conditional\n")


def test_dot_shapes_conditions_and_escapes() -> None:
    assert to_dot(WAITS) == (
        'digraph "waits" {\n'
        "    rankdir=TB;\n"
        '    node [shape=box, fontname="Helvetica"];\n'
        '    "ok" [label="ok\\napproval", shape=hexagon];\n'
        '    "nap" [label="nap\\nsleep 90s", shape=oval];\n'
        '    "until" [label="until\\nwait until 2030-01-01T00:00:00Z", shape=oval];\n'
        '    "paid" [label="paid\\nevent: payment.received\\nwhen: steps.ok.output.comment == '
        '\\"a <b> & #c\\"", shape=oval, style=dashed];\n'
        '    "ok" -> "nap";\n'
        '    "nap" -> "until";\n'
        '    "ok" -> "paid";\n'
        "}\n")


def test_step_ids_mermaid_cannot_read_get_safe_unique_node_ids() -> None:
    plan = {"name": "ids", "steps": [
        {"id": "end", "tool": "notify", "args": {"text": "x"}},
        {"id": "step_end", "tool": "notify", "args": {"text": "${steps.end.output}"}},
        {"id": "build-docs", "tool": "notify", "args": {"text": "${steps.step_end.output}"}},
    ]}
    lines = to_mermaid(plan).splitlines()
    assert lines[1:] == [
        '    step_end_2["end<br/>tool: notify"]',
        '    step_end["step_end<br/>tool: notify"]',
        '    step_build_docs["build-docs<br/>tool: notify"]',
        "    step_end_2 --> step_end",
        "    step_end --> step_build_docs"]


def test_a_malformed_condition_still_draws_the_after_edges() -> None:
    plan = {"name": "p", "steps": [
        {"id": "a", "sleep": 1},
        {"id": "b", "sleep": 1, "after": ["a"], "when": "steps.a.status =="}]}
    assert plan_graph(plan).edges == (("a", "b"),)


def test_a_plan_with_a_broken_structure_is_rejected_with_its_issues() -> None:
    with pytest.raises(PlanValidationError) as caught:
        to_mermaid({"name": "p", "steps": [{"id": "a", "tool": 3}]})
    assert [issue.path for issue in caught.value.issues] == ["$.steps[0].tool"]
