"""`run_agent`: plan, execute, and replan after a failure or a rejected approval, durably.

The loop is made of durable runs and replays like a code plan. Attempt `k` is two runs:

- `<run_id>:plan:<k>`, a one-step graph run whose tool asks the model for a plan
  (`plan_for`, repairs included). Its journaled output is the plan, so a replay or a resume
  never asks the model again once the plan was recorded;
- `<run_id>:run:<k>`, the execution of that plan, with every tool call journaled.

`run_agent` is deterministic given those runs: called again with the same arguments (after
a crash, or after an approval was decided) it walks the same attempts, finds each finished
run in the store, continues the first unfinished one, and only then asks for anything new.
No model call and no tool call that completed is repeated; one that was in flight at a
crash runs again, as everywhere in agentflow.

Completed results are reused, not redone, in two ways. The replan prompt lists every
completed step with its output, and the new plan receives them as inputs
(`${inputs.previous.<step id>}`, or `inputs["previous"][...]` in Python), its input schema
saying which exist. And a tool with side effects that the new plan calls again with the same
arguments as a call completed in an earlier attempt gets the recorded result instead of
running again (read-only tools, `side_effects=False`, run again for fresh data).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

import openai

from agentflow.engine import Engine, RunResult
from agentflow.engine.api import engine_for
from agentflow.executors.journal import CallRecord, canonical_json, fold
from agentflow.llm.planner import plan_for
from agentflow.llm.prompts import PlanKind
from agentflow.plan.code import CodePlan
from agentflow.plan.models import APPROVAL_OUTPUT_SCHEMA
from agentflow.store import Store
from agentflow.tools import Tool, to_json_value, tool_registry

PLANNER_TOOL = "agentflow_planner"
PLANNING_PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "agent_planning",
    "inputs": {"type": "object", "properties": {
        "request": {"type": "string"}, "inputs_schema": {"type": "object"}},
        "required": ["request", "inputs_schema"]},
    "steps": [{"id": "plan", "tool": PLANNER_TOOL,
               "args": {"request": "${inputs.request}",
                        "inputs_schema": "${inputs.inputs_schema}"},
               "retry": {"max_attempts": 4, "initial_delay": 1.0,
                         "retry_on": ["RateLimitError", "InternalServerError",
                                      "APIConnectionError"]}}],
    "outputs": {"plan": "${steps.plan.output}"},
}
"""The planning run of each attempt; transient endpoint errors are retried with backoff."""
NO_INPUTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
"""The inputs schema of a first attempt's plan: the goal says everything."""
OUTPUT_PREVIEW = 2000
"""Characters of each completed output shown in the replan prompt (inputs hold it whole)."""


def run_agent(goal: str, *, tools: Iterable[Tool | Callable[..., Any]],
              client: openai.OpenAI | None = None, model: str, run_id: str,
              store: str | Store | None = None, kind: PlanKind = "graph",
              max_replans: int = 2, engine: Engine | None = None,
              tenant: str = "default") -> RunResult:
    """Reach `goal` with `tools`: plan, execute, replan (at most `max_replans` times).

    Returns the latest attempt's run (`<run_id>:run:<k>`): completed, failed after the last
    replan, or waiting (decide its pending approval, then call `run_agent` again with the
    same arguments to continue). A planning run that failed (no valid plan, the endpoint
    down after retries) is returned as it is, `error.type` saying why.
    """
    if max_replans < 0:
        raise ValueError(f"max_replans must be >= 0, not {max_replans!r}")
    engine = engine or engine_for(store)
    registry = tool_registry(tools)
    planner = _planner_tool(registry, client, model, kind)
    reused: dict[tuple[str, str], Any] = {}
    previous: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    report = ""
    attempt = 0
    while True:
        inputs_schema = _previous_schema(schemas) if previous else NO_INPUTS
        planning = engine.execute(
            PLANNING_PLAN, tools=[planner], run_id=f"{run_id}:plan:{attempt}", tenant=tenant,
            inputs={"request": goal + report, "inputs_schema": inputs_schema})
        if planning.status != "completed":
            return planning
        plan = _plan_from(planning.outputs["plan"])
        result = engine.execute(
            plan, tools=_reusing(registry, reused), run_id=f"{run_id}:run:{attempt}",
            tenant=tenant, inputs={"previous": previous} if previous else {})
        reason = _replan_reason(result)
        if reason is None or attempt == max_replans:
            return result
        records = fold(engine.store.read_journal(result.tenant_id, result.run_id))
        names = _step_tools(plan, records)
        for step_id, step in result.steps.items():
            if step.status == "succeeded":
                previous[step_id] = step.output
                schemas[step_id] = _output_schema(plan, step_id, names.get(step_id), registry)
        reused.update(_completed_calls(records))
        report += _report(attempt, names, result, reason, previous)
        attempt += 1


def _planner_tool(registry: dict[str, Tool], client: openai.OpenAI | None, model: str,
                  kind: PlanKind) -> Tool:
    """The tool of the planning runs: one `plan_for` call, its plan as the result."""

    def agentflow_planner(request: str, inputs_schema: dict[str, Any]) -> dict[str, Any]:
        plan = plan_for(request, tools=registry.values(), client=client, model=model,
                        kind=kind, inputs_schema=inputs_schema)
        if isinstance(plan, CodePlan):
            return {"kind": "python", "source": plan.source, "name": plan.name}
        return {"kind": "graph", "plan": plan}

    return Tool(agentflow_planner, name=PLANNER_TOOL, side_effects=False)


def _plan_from(recorded: dict[str, Any]) -> dict[str, Any] | CodePlan:
    if recorded["kind"] == "python":
        return CodePlan(source=recorded["source"], name=recorded["name"])
    plan: dict[str, Any] = recorded["plan"]
    return plan


def _replan_reason(result: RunResult) -> str | None:
    """Why the attempt did not reach the goal, or None when it did (or must wait)."""
    if result.status == "failed":
        return f"it failed: {result.error}"
    if result.status != "completed":
        return None
    rejected = [f"step {sid!r} was rejected: {_rejection(step.output, step.error)}"
                for sid, step in result.steps.items() if step.status == "rejected"]
    return "; ".join(rejected) or None


def _rejection(output: Any, error: str | None) -> str:
    if isinstance(output, dict) and "by" in output:
        return f"{output.get('by')} said {output.get('reason') or 'no reason'!r}"
    return error or "no reason given"


def _step_tools(plan: dict[str, Any] | CodePlan,
                records: dict[str, CallRecord]) -> dict[str, str]:
    """The tool (or "approval") behind each step id of a run: from the plan for a graph,
    from the journal for the calls of a code plan."""
    names = {key: record.tool for key, record in records.items() if record.tool}
    if not isinstance(plan, CodePlan):
        for step in plan.get("steps", []):
            names[step["id"]] = step.get("tool") or ("approval" if "approval" in step else "")
    return names


def _report(attempt: int, names: dict[str, str], result: RunResult, reason: str,
            previous: dict[str, Any]) -> str:
    """What the replan request adds to the goal: what happened, and what is kept."""
    lines = []
    for sid, step in result.steps.items():
        what = f" ({names[sid]})" if names.get(sid) else ""
        if step.status == "succeeded":
            detail = f", output {_preview(step.output)}"
        elif step.status == "rejected":
            detail = f": {_rejection(step.output, step.error)}"
        else:
            detail = f": {step.error}" if step.error else ""
        lines.append(f"- {sid}{what}: {step.status}{detail}")
    return (f"\n\n# Attempt {attempt + 1} did not reach the goal\n"
            f"Its run {result.run_id!r} ended {result.status}; {reason}.\nSteps:\n"
            + "\n".join(lines)
            + "\n\nCompleted results are kept: do not call those steps again. Use their "
            "outputs from the inputs instead, \"${inputs.previous.<step id>...}\" in a JSON "
            "plan or inputs[\"previous\"][\"<step id>\"] in Python; available: "
            f"{', '.join(sorted(previous))}.\nWrite a new plan for what remains of the goal, "
            "taking the reason above into account.")


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= OUTPUT_PREVIEW else text[:OUTPUT_PREVIEW] + "...(cut)"


def _output_schema(plan: dict[str, Any] | CodePlan, step_id: str, name: str | None,
                   registry: dict[str, Tool]) -> dict[str, Any]:
    """The schema of a completed step's output, when known and self-contained."""
    if name == "approval":
        return APPROVAL_OUTPUT_SCHEMA
    tool = registry.get(name or "")
    schema = tool.output_schema if tool is not None else None
    if not schema or "$ref" in json.dumps(schema):
        return {}
    foreach = not isinstance(plan, CodePlan) and any(
        step.get("id") == step_id and "foreach" in step for step in plan.get("steps", []))
    return {"type": "array", "items": schema} if foreach else schema


def _previous_schema(schemas: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["previous"], "properties": {"previous": {
        "type": "object", "properties": schemas, "required": sorted(schemas),
        "additionalProperties": False,
        "description": "Outputs of the steps completed in earlier attempts, by step id."}}}


def _completed_calls(records: dict[str, CallRecord]) -> dict[tuple[str, str], Any]:
    """(tool, canonical args) -> recorded output, for each call the run completed."""
    return {(record.tool, canonical_json(record.args)): record.output
            for record in records.values()
            if record.status == "succeeded" and record.tool is not None}


def _reusing(registry: dict[str, Tool], reused: dict[tuple[str, str], Any]) -> list[Tool]:
    """The tools, those with side effects answering repeated calls from `reused`."""
    if not reused:
        return list(registry.values())
    return [_reusing_tool(tool, reused) if tool.side_effects else tool
            for tool in registry.values()]


def _reusing_tool(tool: Tool, reused: dict[tuple[str, str], Any]) -> Tool:
    def key(kwargs: dict[str, Any]) -> tuple[str, str]:
        args = {name: value for name, value in kwargs.items() if name != tool.context_param}
        return tool.name, canonical_json(to_json_value(args))

    if tool.is_async:
        async def reuse_async(**kwargs: Any) -> Any:
            found = key(kwargs)
            return reused[found] if found in reused else await tool.fn(**kwargs)

        return dataclasses.replace(tool, fn=reuse_async)

    def reuse(**kwargs: Any) -> Any:
        found = key(kwargs)
        return reused[found] if found in reused else tool.fn(**kwargs)

    return dataclasses.replace(tool, fn=reuse)

