"""Plan diagrams: the step graph as Mermaid (`flowchart TD`) or Graphviz DOT text.

One node per step, labelled with its id and what it does (tool, approval, wait), one edge
`a --> b` per dependency (b references a's result or runs `after` it). A step with a `when`
condition shows the condition in its label and has a dashed outline. Pure: text in, text out.

A `CompiledPlan` gives the exact dependencies the executor uses. Plan data (a dict or a
`Plan`) needs no tools: its dependencies are read from the same references, so a plan can be
drawn before its tools exist; its structure must still be valid (`PlanValidationError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from agentflow.errors import PlanValidationError
from agentflow.plan.conditions import compile_condition
from agentflow.plan.models import Plan, Step
from agentflow.plan.references import Reference, compile_template_checked, compile_text_checked
from agentflow.plan.validation import CompiledPlan, parse_plan

_MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MERMAID_KEYWORDS = frozenset({
    "end", "graph", "flowchart", "subgraph", "direction", "style", "class", "classdef",
    "click", "linkstyle", "call", "href", "default"})
_MERMAID_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}
_MERMAID_SHAPES = {"tool": ('["', '"]'), "approval": ('{{"', '"}}'), "wait": ('(["', '"])'),
                   "plan": ('[["', '"]]')}
_DOT_SHAPES = {"tool": "box", "approval": "hexagon", "wait": "oval", "plan": "box3d"}


@dataclass(frozen=True)
class Node:
    """One step as drawn: `shape` is tool, approval, wait or plan; `lines` the label text."""

    id: str
    shape: str
    lines: tuple[str, ...]
    conditional: bool


@dataclass(frozen=True)
class PlanGraph:
    """The drawable graph of a plan: nodes in plan order, edges (dependency, dependent)."""

    name: str
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]


Drawable = CompiledPlan | Plan | Mapping[str, Any] | PlanGraph
"""What the drawing functions take: a graph plan in any form, or a graph built elsewhere
(a code plan's outline, see `agentflow.sandbox.outline`)."""


def plan_graph(plan: Drawable) -> PlanGraph:
    """The graph of a compiled plan, a `Plan` or plan data (validated for structure only)."""
    if isinstance(plan, PlanGraph):
        return plan
    if isinstance(plan, CompiledPlan):
        model = plan.plan
        dependencies = {sid: set(step.dependencies) for sid, step in plan.steps.items()}
    else:
        model = parse_plan(plan)
        known = {step.id for step in model.steps}
        dependencies = {step.id: _dependencies(step, known) for step in model.steps}
    position = {step.id: index for index, step in enumerate(model.steps)}
    nodes = tuple(_node(step) for step in model.steps)
    edges = tuple((dependency, step.id) for step in model.steps
                  for dependency in sorted(dependencies[step.id], key=position.__getitem__))
    return PlanGraph(model.name, nodes, edges)


def to_mermaid(plan: Drawable) -> str:
    """Mermaid `flowchart TD` text of the plan (paste into Markdown or mermaid.live)."""
    graph = plan_graph(plan)
    ids = _mermaid_ids([node.id for node in graph.nodes])
    lines = ["flowchart TD"]
    for node in graph.nodes:
        opening, closing = _MERMAID_SHAPES[node.shape]
        label = "<br/>".join(_mermaid_text(line) for line in node.lines)
        lines.append(f"    {ids[node.id]}{opening}{label}{closing}")
    lines.extend(f"    {ids[source]} --> {ids[target]}" for source, target in graph.edges)
    conditional = [ids[node.id] for node in graph.nodes if node.conditional]
    if conditional:
        lines.append("    classDef conditional stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(conditional)} conditional")
    return "\n".join(lines) + "\n"


def to_dot(plan: Drawable) -> str:
    """Graphviz DOT text of the plan (`dot -Tsvg` draws it)."""
    graph = plan_graph(plan)
    lines = [f"digraph {_dot_text(graph.name)} {{", "    rankdir=TB;",
             '    node [shape=box, fontname="Helvetica"];']
    for node in graph.nodes:
        label = "\\n".join(_dot_text(line)[1:-1] for line in node.lines)
        style = ", style=dashed" if node.conditional else ""
        lines.append(f'    {_dot_text(node.id)} [label="{label}", '
                     f"shape={_DOT_SHAPES[node.shape]}{style}];")
    lines.extend(f"    {_dot_text(source)} -> {_dot_text(target)};"
                 for source, target in graph.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node(step: Step) -> Node:
    if step.tool is not None:
        shape, what = "tool", f"tool: {step.tool}"
        if step.foreach is not None:
            what += " (for each item)"
        if step.approval is not None:
            what += " (approval)"
    elif step.approval is not None:
        shape, what = "approval", "approval"
    elif step.sleep is not None:
        shape, what = "wait", f"sleep {step.sleep:g}s"
    elif step.wait_until is not None:
        shape, what = "wait", f"wait until {step.wait_until}"
    elif step.wait_for_event is not None:
        shape, what = "wait", f"event: {step.wait_for_event}"
    else:
        shape, what = "plan", f"plan: {step.plan}"
    lines = (step.id, what) if step.when is None else (step.id, what, f"when: {step.when}")
    return Node(step.id, shape, lines, step.when is not None)


def _dependencies(step: Step, known: set[str]) -> set[str]:
    """The steps `step` references or runs after, as validation finds them."""
    references: list[Reference] = []
    for value in (step.args, step.foreach, step.wait_until):
        if value is not None:
            references.extend(compile_template_checked(value)[0].references)
    if step.approval is not None:
        references.extend(compile_text_checked(step.approval.prompt)[0].references)
    if step.when is not None:
        with suppress(PlanValidationError):
            references.extend(compile_condition(step.when).references)
    named = {ref.step for ref in references} | set(step.after)
    return {name for name in named if name in known and name != step.id}


def _mermaid_ids(step_ids: list[str]) -> dict[str, str]:
    """Mermaid node ids: the step id itself where Mermaid reads it as a plain id, else a
    letters-digits-underscore form that no other step uses."""
    taken = set(step_ids)
    ids: dict[str, str] = {}
    for step_id in step_ids:
        if _MERMAID_ID.fullmatch(step_id) and step_id.lower() not in _MERMAID_KEYWORDS:
            ids[step_id] = step_id
            continue
        base = f"step_{re.sub(r'[^A-Za-z0-9_]', '_', step_id)}"
        candidate, number = base, 1
        while candidate in taken:
            number += 1
            candidate = f"{base}_{number}"
        taken.add(candidate)
        ids[step_id] = candidate
    return ids


def _mermaid_text(text: str) -> str:
    return "".join(_MERMAID_ESCAPES.get(char, char) for char in text.replace("\n", " "))


def _dot_text(text: str) -> str:
    """A DOT quoted string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
