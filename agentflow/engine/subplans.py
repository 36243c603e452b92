"""Sub-plans: a `plan` step runs another of the tenant's registered plans as a child run.

The child is a run of its own (id `PARENT/STEP`, pinned to the version current when it
starts, or to `name@version`), created "waiting" and due at once, so `tenant.execute` /
`tenant.resume` or any worker runs it; it is durable like any run. The parent's step
waits for the event `subplan:CHILD`, which the engine sends when the child ends, with the
child's status, outputs and error; a child that did not complete fails the step. The
child's pending waits show on the parent's `pending`, and deciding them through the parent
routes to the child. Cancelling the parent cancels its unfinished children. A plan whose
sub-plans lead back to itself is refused when it is validated or put.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from agentflow.engine.leases import new_worker_id
from agentflow.engine.loading import compile_any, stored_plan
from agentflow.engine.registry import parse_reference
from agentflow.errors import (
    AgentflowError,
    PlanNotFound,
    PlanValidationError,
    RunFinished,
    RunNotFound,
    ValidationIssue,
)
from agentflow.executors.children import SubPlans
from agentflow.plan import SUBPLAN_TOOL_PREFIX, CompiledPlan, Plan, validate_inputs
from agentflow.plan.code import CodePlan
from agentflow.plan.outputs import outputs_schema
from agentflow.sandbox.outline import plan_references
from agentflow.store import FINISHED_STATUSES, RunRecord, Store, WaitRecord
from agentflow.tools import Tool

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine

EVENT_PREFIX = "subplan:"
MAX_DEPTH = 8
"""Most levels of sub-plans below a run (a guard; cycles are refused at validation)."""


def references(data: Any) -> list[str]:
    """The plans a plan runs by name: a step graph's `plan` steps, a code plan's `run_plan`
    calls with a literal name."""
    if isinstance(data, CodePlan):
        return plan_references(data)
    if isinstance(data, Plan):
        return [step.plan for step in data.steps if step.plan is not None]
    if not isinstance(data, Mapping) or not isinstance(data.get("steps"), list):
        return []
    return [step["plan"] for step in data["steps"]
            if isinstance(step, Mapping) and isinstance(step.get("plan"), str)]


def _never(**_: Any) -> Any:
    raise AgentflowError("a plan step is run by the executor, not called as a tool")


def plan_tools(engine: Engine, tenant_id: str, data: Any) -> dict[str, Tool]:
    """The tools "plan:REF" that let validation check a plan step's inputs against the
    child plan's inputs schema, and references to its output against the child's
    `outputs` (a code plan's are unknown); a reference to no registered plan gets none (an
    issue)."""
    found: dict[str, Tool] = {}
    for reference in references(data):
        child = _child_data(engine, tenant_id, reference)
        if child is None:
            continue
        schema: dict[str, Any] = {"type": "object"}
        returns = None
        if isinstance(child, Mapping):  # a step graph (a code plan's outputs are unknown)
            schema = dict(child.get("inputs") or schema)
            outputs = child.get("outputs") or {}
            returns = outputs_schema(outputs) if isinstance(outputs, Mapping) else None
        name = f"{SUBPLAN_TOOL_PREFIX}{reference}"
        found[name] = Tool(fn=_never, name=name, input_schema=schema, output_schema=returns,
                           description=f"run plan {reference!r} as a child run")
    return found


def _child_data(engine: Engine, tenant_id: str, reference: str) -> Any:
    parsed = parse_reference(reference)
    if parsed is None:
        return None
    try:
        return engine.tenant(tenant_id).plans.get(*parsed)
    except PlanNotFound:
        return None


def check_cycles(engine: Engine, tenant_id: str, name: str | None, data: Any) -> None:
    """`PlanValidationError` if the plan's sub-plans lead back to it (a -> b -> a), by the
    versions they would run now."""
    def walk(current: Any, trail: list[str]) -> None:
        for reference in references(current):
            child = parse_reference(reference)
            if child is None:
                continue
            if child[0] in trail:
                loop = " -> ".join([*trail, child[0]])
                raise PlanValidationError([ValidationIssue(
                    "$.steps", f"sub-plans form a cycle: {loop}", code="cycle")])
            if len(trail) > MAX_DEPTH:
                raise PlanValidationError([ValidationIssue(
                    "$.steps", f"sub-plans nest deeper than {MAX_DEPTH} levels", code="depth")])
            walk(_child_data(engine, tenant_id, reference), [*trail, child[0]])
    walk(data, [name or "(this plan)"])


def starter(engine: Engine, run: RunRecord, tools: dict[str, Tool]
            ) -> SubPlans:
    """The executor's hook for a sub-plan call of `run`: create the child run unless it
    exists (its inputs checked against the child's schema; due after `delay` seconds), and
    name the event of its end."""
    store = engine.store
    tenant_id = run.tenant_id

    def start(key: str, reference: str, inputs: dict[str, Any], delay: float) -> str:
        child_id = f"{run.run_id}/{key}"
        existing = store.get_run(tenant_id, child_id)
        if existing is None:
            _create_child(engine, run, key, child_id, reference, inputs, tools, delay)
        elif existing.status in FINISHED_STATUSES:
            _notify_once(store, existing)
        return f"{EVENT_PREFIX}{child_id}"
    return start


def _create_child(engine: Engine, parent: RunRecord, key: str, child_id: str, reference: str,
                  inputs: dict[str, Any], tools: dict[str, Tool], delay: float) -> None:
    parsed = parse_reference(reference)
    data = _child_data(engine, parent.tenant_id, reference)
    if parsed is None or data is None:
        raise PlanNotFound(reference, parent.tenant_id)
    _check_ancestry(engine.store, parent, parsed[0])
    registry = {**tools, **plan_tools(engine, parent.tenant_id, data)}
    compiled = compile_any(data, registry)
    checked = (validate_inputs(compiled, inputs) if isinstance(compiled, CompiledPlan)
               else json.loads(json.dumps(inputs)))
    now = time.time()
    owner = new_worker_id()
    record = RunRecord(tenant_id=parent.tenant_id, run_id=child_id,
                       plan_hash=compiled.plan_hash, status="waiting", inputs=checked,
                       created_at=now, updated_at=now, wake_at=now + delay,
                       plan_name=parsed[0],
                       options={**parent.options,
                                "parent": {"run_id": parent.run_id, "key": key}})
    _, created = engine.store.create_run(record, stored_plan(parent.tenant_id, compiled, now),
                                         owner, engine.lease_seconds)
    if created:
        engine.store.finish_run(parent.tenant_id, child_id, owner, "waiting",
                                wake_at=now + delay)


def _check_ancestry(store: Store, parent: RunRecord, name: str) -> None:
    """Refuse a child that would run a plan its parent or an ancestor runs (a cycle that
    validation could not see: a name computed at run time), or that would nest deeper than
    MAX_DEPTH. The root counts by its name only when it runs a registered version of it."""
    trail: list[str] = []
    run: RunRecord | None = parent
    while run is not None:
        link = run.options.get("parent")
        if not isinstance(link, Mapping):
            if run.plan_name is not None and store.has_plan_version(
                    run.tenant_id, run.plan_name, run.plan_hash):
                trail.insert(0, run.plan_name)
            break
        trail.insert(0, run.plan_name or "?")
        if len(trail) >= MAX_DEPTH:
            raise PlanValidationError([ValidationIssue(
                "$", f"run {parent.run_id!r}: sub-plans nest deeper than {MAX_DEPTH} levels",
                code="depth")])
        run = store.get_run(run.tenant_id, str(link["run_id"]))
    if name in trail:
        loop = " -> ".join([*trail[trail.index(name):], name])
        raise PlanValidationError([ValidationIssue(
            "$", f"run {parent.run_id!r}: sub-plans form a cycle: {loop}", code="cycle")])


def notify_parent(store: Store, run: RunRecord, status: str, outputs: Any,
                  error: dict[str, Any] | None) -> None:
    """Tell a child's parent that the child ended (an event the parent's step waits for)."""
    parent = run.options.get("parent")
    if not isinstance(parent, Mapping) or status not in FINISHED_STATUSES:
        return
    payload = {"run_id": run.run_id, "status": status, "outputs": outputs, "error": error}
    with suppress(RunNotFound, RunFinished):
        store.send_event(run.tenant_id, str(parent["run_id"]), f"{EVENT_PREFIX}{run.run_id}",
                         payload, time.time())


def _notify_once(store: Store, child: RunRecord) -> None:
    """Send a finished child's end event unless its parent has it (the process may have
    died between the child's end and the event)."""
    parent = child.options.get("parent")
    if not isinstance(parent, Mapping):
        return
    name = f"{EVENT_PREFIX}{child.run_id}"
    if not any(e.name == name for e in store.list_events(child.tenant_id, str(parent["run_id"]))):
        notify_parent(store, child, child.status, child.outputs, child.error)


def children(store: Store, tenant_id: str, run_id: str,
             pending: list[WaitRecord] | None = None) -> list[RunRecord]:
    """The child runs a run is waiting for (its pending sub-plan waits; `pending`: the
    run's pending waits when the caller has just read them)."""
    found = []
    if pending is None:
        pending = store.list_waits(tenant_id, run_id, status="pending")
    for wait in pending:
        if wait.kind == "event" and (wait.event_name or "").startswith(EVENT_PREFIX):
            child = store.get_run(tenant_id, (wait.event_name or "")[len(EVENT_PREFIX):])
            if child is not None:
                found.append(child)
    return found


def pending_below(store: Store, run: RunRecord,
                  pending: list[WaitRecord] | None = None) -> list[WaitRecord]:
    """The pending waits of a run's children, grandchildren, ... (depth first); `pending`:
    the run's own, when the caller has them (each run's waits are read once)."""
    found: list[WaitRecord] = []
    for child in children(store, run.tenant_id, run.run_id, pending):
        below = store.list_waits(run.tenant_id, child.run_id, status="pending")
        found += below
        found += pending_below(store, child, below)
    return found


def owner_of_wait(store: Store, tenant_id: str, run_id: str, wait_id: str) -> str | None:
    """The run (the given one, or a descendant it waits for) that has wait `wait_id`."""
    if any(w.wait_id == wait_id for w in store.list_waits(tenant_id, run_id)):
        return run_id
    for child in children(store, tenant_id, run_id):
        owner = owner_of_wait(store, tenant_id, child.run_id, wait_id)
        if owner is not None:
            return owner
    return None


