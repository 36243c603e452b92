"""Forks: a new run of a run's plan and inputs that reuses part of its journal, with some
results edited, and executes the rest.

What the fork reuses is what does not depend on the fork point (`at_step`) or on an edited
result:

- A step graph's dependencies are its references and `after` lists: the fork keeps the
  journal of every step that depends (directly or not) neither on `at_step` nor on a step
  of `results`, takes `results` as those steps' outputs (a foreach step's is the list of
  its items' outputs, by item; a plan step's is the child's outputs), and executes the rest.
- A code plan's data flow is not known before it runs, so each call depends on every call
  the plan made before it. The fork keeps the journal of the positions the run reached
  before `at_step` (in the order it first journaled them), takes `results` as the outputs
  of some of those (tool calls and `run_plan` calls; `at_step` itself may be one, and is
  then kept too), and executes `at_step` and every position after it anew. A kept call is
  replayed as on a resume: it must be made the same way, or the fork fails with
  `NonDeterminismError`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agentflow.engine.leases import new_worker_id
from agentflow.engine.loading import plan_data
from agentflow.engine.replay import call_step
from agentflow.errors import PlanMismatch, RunNotFound
from agentflow.executors.journal import fold
from agentflow.plan import CompiledPlan
from agentflow.store import JournalEntry, RunRecord

if TYPE_CHECKING:
    from agentflow.engine.tenant import Tenant


def fork(tenant: Tenant, run_id: str, *, at_step: str, results: Mapping[str, Any],
         new_run_id: str | None) -> str:
    """Start the fork of `run_id` (see the module docstring) as a run that is due now and
    return its id."""
    engine = tenant.engine
    run = engine.store.get_run(tenant.id, run_id)
    if run is None:
        raise RunNotFound(run_id, tenant.id)
    stored = engine.store.get_plan(tenant.id, run.plan_hash)
    if stored is None:
        raise PlanMismatch(f"run {run_id!r}: its pinned plan {run.plan_hash[:12]} is missing")
    entries = engine.store.read_journal(tenant.id, run_id)
    compiled = tenant.compile(plan_data(stored))
    journal = (_graph_journal(compiled, run_id, entries, at_step, results)
               if isinstance(compiled, CompiledPlan)
               else _code_journal(run_id, entries, at_step, results))
    fork_id = new_run_id or f"{run_id}-fork-{uuid.uuid4().hex[:8]}"
    owner = new_worker_id()
    now = time.time()
    record = RunRecord(tenant_id=tenant.id, run_id=fork_id, plan_hash=run.plan_hash,
                       status="running", inputs=run.inputs, created_at=now, updated_at=now,
                       options={k: v for k, v in run.options.items() if k != "parent"},
                       plan_name=run.plan_name)  # a fork of a sub-plan's run has no parent
    created_run, created = engine.store.create_run(record, stored, owner, engine.lease_seconds)
    if not created:
        raise PlanMismatch(f"run {fork_id!r} exists already; choose another id for the fork")
    engine.store.append_journal(tenant.id, fork_id, owner,
                                [dataclasses.replace(e, seq=0) for e in journal])
    engine.store.finish_run(tenant.id, fork_id, owner, "running")
    return created_run.run_id


def _graph_journal(compiled: CompiledPlan, run_id: str, entries: list[JournalEntry],
                   at_step: str, results: Mapping[str, Any]) -> list[JournalEntry]:
    for sid in (at_step, *results):
        if sid not in compiled.steps:
            raise ValueError(f"run {run_id!r} has no step {sid!r}; its steps: "
                             f"{', '.join(compiled.steps)}")
    edited: list[JournalEntry] = []
    for sid, value in results.items():
        step = compiled.steps[sid]
        if step.kind not in ("tool", "plan"):
            raise ValueError(f"step {sid!r}: fork edits the result of a tool or plan step, "
                             f"not of a {step.kind} step")
        tool = step.step.tool or "plan"
        if step.step.foreach is None:
            edited.append(JournalEntry(key=sid, kind="result", data=value, attempt=1,
                                       tool=tool))
            continue
        if not isinstance(value, list):
            raise ValueError(f"step {sid!r} runs for each item: its edited result is the "
                             f"list of the items' outputs, not {type(value).__name__}")
        edited += [JournalEntry(key=f"{sid}[{i}]", kind="result", data=item, attempt=1,
                                tool=tool) for i, item in enumerate(value)]
        edited.append(JournalEntry(key=sid, kind="settled", attempt=0, tool=None,
                                   data={"status": "succeeded", "items": len(value)}))
    redo = _below(compiled, {at_step, *results}) - set(results)
    kept = [e for e in entries if call_step(e.key) not in redo and call_step(e.key) not in results]
    return kept + edited


def _code_journal(run_id: str, entries: list[JournalEntry], at_step: str,
                  results: Mapping[str, Any]) -> list[JournalEntry]:
    order = list(dict.fromkeys(call_step(e.key) for e in entries))
    if at_step not in order:
        raise ValueError(f"run {run_id!r} made no call at position {at_step!r}; its "
                         f"positions: {', '.join(order) or 'none'}")
    before = set(order[:order.index(at_step)])
    records = fold(entries)
    edited: list[JournalEntry] = []
    for position, value in results.items():
        record = records.get(position)
        if position not in before | {at_step} or record is None \
                or (record.attempts == 0 and record.tool != "run_plan"):
            raise ValueError(f"position {position!r}: fork edits the result of a tool or "
                             f"run_plan call made before {at_step!r} (or at it)")
        edited.append(JournalEntry(key=position, kind="result", data=value,
                                   attempt=record.attempts, tool=record.tool))
    kept = before | set(results)
    return [e for e in entries if call_step(e.key) in kept] + edited


def _below(compiled: CompiledPlan, roots: set[str]) -> set[str]:
    """`roots` and every step that depends on one of them, directly or not."""
    found = set(roots)
    stack = list(roots)
    while stack:
        for dependent in compiled.steps[stack.pop()].dependents:
            if dependent not in found:
                found.add(dependent)
                stack.append(dependent)
    return found
