"""What the HTTP API returns: runs, steps, waits, journal entries and plan graphs as JSON.

Pure functions from the engine's types to JSON data; the routes add nothing to them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from agentflow.engine.results import Pending, RunResult
from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.diagram import plan_graph
from agentflow.store import JournalEntry, RunRecord


def run_summary(run: RunRecord) -> dict[str, Any]:
    """One row of the runs table."""
    return {"run_id": run.run_id, "tenant": run.tenant_id, "status": run.status,
            "plan_hash": run.plan_hash, "plan_name": run.plan_name,
            "created_at": run.created_at,
            "updated_at": run.updated_at, "wake_at": run.wake_at, "error": run.error}


def run_detail(result: RunResult, plan: Mapping[str, Any] | None,
               inputs: dict[str, Any]) -> dict[str, Any]:
    """A run with its steps, pending waits, outputs and, for a graph plan, its graph."""
    return {
        "run_id": result.run_id, "tenant": result.tenant_id, "status": result.status,
        "plan_hash": result.plan_hash, "plan_name": (plan or {}).get("name"),
        "created_at": result.created_at, "updated_at": result.updated_at,
        "inputs": inputs, "outputs": result.outputs,
        "error": None if result.error is None else asdict(result.error),
        "steps": [asdict(step) for step in result.steps.values()],
        "pending": [pending_view(wait) for wait in result.pending],
        "graph": graph_view(plan) if plan is not None and "steps" in plan else None,
        "source": (plan or {}).get("source"),
    }


def pending_view(wait: Pending) -> dict[str, Any]:
    return asdict(wait)


def journal_view(entries: list[JournalEntry]) -> list[dict[str, Any]]:
    return [asdict(entry) for entry in entries]


def issues_view(error: PlanValidationError) -> list[dict[str, Any]]:
    """Every issue as the CLI's `validate --json` gives it."""
    return [issue_view(issue) for issue in error.issues]


def issue_view(issue: ValidationIssue) -> dict[str, Any]:
    return {"path": issue.path, "step": issue.step_id, "message": issue.message,
            "code": issue.code}


def graph_view(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's steps as nodes placed in layers (a step sits one layer below the deepest
    step it depends on) and its dependency edges, for the console to draw."""
    graph = plan_graph(plan)
    depends: dict[str, list[str]] = {node.id: [] for node in graph.nodes}
    for source, target in graph.edges:
        depends[target].append(source)
    layer: dict[str, int] = {}
    for node in graph.nodes:  # plan order need not be topological: resolve depth lazily
        _depth(node.id, depends, layer)
    counts: dict[int, int] = {}
    nodes = []
    for node in graph.nodes:
        depth = layer[node.id]
        nodes.append({"id": node.id, "shape": node.shape, "lines": list(node.lines),
                      "layer": depth, "slot": counts.get(depth, 0)})
        counts[depth] = counts.get(depth, 0) + 1
    return {"name": graph.name, "nodes": nodes, "edges": [list(edge) for edge in graph.edges]}


def _depth(step_id: str, depends: dict[str, list[str]], layer: dict[str, int]) -> int:
    if step_id not in layer:
        layer[step_id] = 0  # a valid plan has no cycle; this only guards the recursion
        layer[step_id] = 1 + max((_depth(d, depends, layer) for d in depends[step_id]),
                                 default=-1)
    return layer[step_id]


def encode_cursor(run: RunRecord) -> str:
    """An opaque page cursor: the last run's (created_at, run_id)."""
    return base64.urlsafe_b64encode(json.dumps([run.created_at, run.run_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """`ValueError` for a cursor this API did not make."""
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"cursor {cursor[:40]!r} is not one this API returned") from error
    if not isinstance(created_at, int | float) or not isinstance(run_id, str):
        raise ValueError(f"cursor {cursor[:40]!r} is not one this API returned")
    return float(created_at), run_id
