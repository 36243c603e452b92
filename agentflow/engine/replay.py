"""Replaying a run's journal under another plan: dry runs, and migrating a waiting run to a
new version of its plan (forks, which replay it with edited results, are in `forks`).

A dry run copies the run's journal into a scratch SQLite store that lives only for the dry
run, and executes the new plan there with every tool replaced by a stand-in that refuses to
run. So no tool is ever called and the real store is only read: a call the journal answers
is replayed, a call the journal cannot answer reaches a stand-in (it "would run"), and a
call that differs from its journaled one stops the replay with the first mismatch, exactly
as a resume would.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.engine import subplans
from agentflow.engine.leases import new_worker_id
from agentflow.engine.loading import stored_plan
from agentflow.engine.registry import parse_reference
from agentflow.engine.results import RunResult
from agentflow.errors import (
    AgentflowError,
    NonDeterminismError,
    PlanMismatch,
    PlanNotFound,
    RunLeased,
    RunNotFound,
)
from agentflow.executors.journal import args_hash
from agentflow.plan import CompiledPlan
from agentflow.plan.references import Scope, StepView
from agentflow.store import FINISHED_STATUSES, JournalEntry, RunRecord, SQLiteStore, Store
from agentflow.tools import Tool

if TYPE_CHECKING:
    from agentflow.engine.tenant import Tenant


class WouldRun(AgentflowError):
    """Raised by a dry run's stand-in tools: the call is not in the journal."""


def call_step(key: str) -> str:
    """The step a journal key belongs to: `test[3]` -> `test`, `deploy@approval` -> `deploy`
    (a code plan's position: `c3@plan` -> `c3`)."""
    return key.split("[", 1)[0].split("@", 1)[0]


@dataclass(frozen=True)
class DryRun:
    """What executing `plan` against a run's journal would do, without calling any tool.

    `replayed`: call positions answered from the journal. `would_run`: the first calls the
    journal cannot answer (those after them are not known until they ran). `waiting`: the
    waits it would stop at. `mismatch`: the first recorded call that the plan no longer makes
    the same way (None if the plan replays the journal), which a resume would refuse with
    `NonDeterminismError`; `unreplayed`: completed calls of the journal the plan never
    reached (its steps were removed or renamed)."""

    run_id: str
    plan_hash: str
    replayed: list[str]
    would_run: list[str]
    waiting: list[str]
    mismatch: str | None
    unreplayed: list[str]

    @property
    def matches(self) -> bool:
        """True if the plan's completed prefix is the journal's: a resume would replay it."""
        return self.mismatch is None and not self.unreplayed


def _stand_in(tool: Tool) -> Tool:
    """The tool with the same schemas, whose call raises `WouldRun` instead of running."""
    def refuse(**_: Any) -> Any:
        raise WouldRun(f"tool {tool.name!r} is not called in a dry run")
    return dataclasses.replace(tool, fn=refuse, retry=None)


def _completed(entries: list[JournalEntry]) -> list[str]:
    """The call positions the journal has an outcome for, in journal order."""
    keys = [e.key for e in entries if e.kind in ("result", "decision", "rejected", "skipped")]
    return list(dict.fromkeys(keys))


def _run(tenant: Tenant, run_id: str) -> RunRecord:
    run = tenant.engine.store.get_run(tenant.id, run_id)
    if run is None:
        raise RunNotFound(run_id, tenant.id)
    return run


def dry_run(tenant: Tenant, plan: Any, against: str) -> DryRun:
    """See `DryRun`. `plan` is plan data, a path, or a registered name (`NAME@VERSION`)."""
    from agentflow.engine.engine import Engine

    engine = tenant.engine
    run = _run(tenant, against)
    registry = tenant.registry()
    data = tenant.resolve(plan)
    compiled = tenant.compile(data)
    entries = engine.store.read_journal(tenant.id, against)
    mismatch: str | None = None
    mismatch_at: str | None = None  # a code plan's position that differs
    with tempfile.TemporaryDirectory(prefix="agentflow-dry-run-") as scratch_dir:
        scratch = SQLiteStore(str(Path(scratch_dir) / "dry.db"), durability="normal")
        try:
            owner = new_worker_id()
            record = dataclasses.replace(run, plan_hash=compiled.plan_hash, status="running",
                                         wake_at=None, lease_owner=None, lease_expires_at=None,
                                         outputs=None, error=None)
            scratch.create_run(record, stored_plan(tenant.id, compiled, time.time()), owner,
                               60.0)
            scratch.append_journal(tenant.id, against, owner, [
                dataclasses.replace(entry, seq=0) for entry in entries])
            scratch.finish_run(tenant.id, against, owner, "running")
            _copy_registry(tenant, scratch, data)
            stand_ins = [_stand_in(tool) for tool in registry.values()]
            dry = Engine(scratch, max_inline_wait=0.0, isolation=engine.isolation,
                         isolates=engine.isolates)
            pending: list[str] = []
            try:
                result = dry.resume(against, tools=stand_ins, tenant=tenant.id)
                if result.error is not None and result.error.type == "NonDeterminismError":
                    mismatch, mismatch_at = result.error.message, result.error.step_id
                elif isinstance(compiled, CompiledPlan):
                    mismatch = _first_changed_call(compiled, run.inputs, result, entries)
                pending = [p.id for p in result.pending]
            except NonDeterminismError as error:
                mismatch, mismatch_at = str(error), error.position
            new = scratch.read_journal(tenant.id, against)[len(entries):]
        finally:
            scratch.close()
    recorded = _completed(entries)
    would_run = list(dict.fromkeys(e.key for e in new if e.kind == "intent"))
    if isinstance(compiled, CompiledPlan):  # a step's record is replayed if the step is kept
        replayed = [k for k in recorded if call_step(k) in compiled.steps and k not in would_run]
        unreplayed = [k for k in recorded if call_step(k) not in compiled.steps]
    else:  # a code plan re-runs from the top: it replays the positions before a mismatch
        order = list(dict.fromkeys(call_step(e.key) for e in entries))
        if mismatch is not None:
            at = call_step(mismatch_at or "")
            before = set(order[:order.index(at)] if at in order else ())
            recorded = [k for k in recorded if call_step(k) in before]
        replayed = [k for k in recorded if k not in would_run]
        unreplayed = []
    return DryRun(against, compiled.plan_hash, replayed, would_run, pending, mismatch,
                  unreplayed)


def _copy_registry(tenant: Tenant, scratch: Store, data: Any) -> None:
    """Give a dry run's scratch store the registered plans its sub-plan calls may run: the
    versions `data` names, then the current version of each of the tenant's names. A
    sub-plan call the journal does not answer then starts its child there, and waits."""
    store = tenant.engine.store
    wanted: list[tuple[str, str]] = []
    for reference in subplans.references(data):
        parsed = parse_reference(reference)
        if parsed is not None and parsed[1] is not None:
            with suppress(PlanNotFound):
                wanted.append((parsed[0], tenant.plans.version(*parsed)))
    wanted += [(named.name, named.version) for named in store.plan_names(tenant.id)]
    for name, version in wanted:
        stored = store.get_plan(tenant.id, version)
        if stored is not None:
            scratch.put_plan_version(tenant.id, name, stored)


def _first_changed_call(compiled: CompiledPlan, inputs: Mapping[str, Any],
                        result: RunResult, entries: list[JournalEntry]) -> str | None:
    """A graph replays a finished call by its step id alone; so the recorded call of each
    step is compared here with the call the plan makes now, given the recorded outputs
    (tool name and arguments hash), in dependency order. The first difference, or None."""
    recorded = {e.key: e for e in entries if e.kind == "intent"}
    views = {sid: StepView(status=step.status, output=step.output, error=step.error)
             for sid, step in result.steps.items()
             if step.status in ("succeeded", "failed", "skipped", "rejected")}
    for sid, step in compiled.steps.items():
        keys = [k for k in recorded if k == sid or k.startswith(f"{sid}[")]
        if step.kind != "tool" or not keys:
            continue
        scope = Scope(inputs=inputs, steps=views)
        try:
            items = None if step.foreach is None else step.foreach.evaluate(scope)
            calls = {sid: step.args.evaluate(scope)} if items is None else {
                f"{sid}[{i}]": step.args.evaluate(Scope(inputs=inputs, steps=views, item=item,
                                                        index=i))
                for i, item in enumerate(items if isinstance(items, list) else [])}
        except AgentflowError as error:
            return f"step {sid!r}: its recorded call cannot be made again: {error}"
        for key in keys:
            entry = recorded[key]
            now = calls.get(key)
            if now is None or entry.tool != step.step.tool \
                    or entry.args_hash != args_hash(now):
                made = "no such call" if now is None else \
                    f"{step.step.tool}(args hash {args_hash(now)[:12]})"
                return (f"call {key!r}: the journal recorded {entry.tool}(args hash "
                        f"{(entry.args_hash or '-')[:12]}), the plan now makes {made}")
    return None


def migrate(tenant: Tenant, run_id: str, to: str) -> DryRun:
    """Move a waiting run of a registered plan to version `to` of that plan, if a dry run of
    it against the journal matches; otherwise `PlanMismatch` naming the first mismatch,
    nothing changed."""
    engine = tenant.engine
    run = _run(tenant, run_id)
    if run.plan_name is None or not engine.store.plan_versions(tenant.id, run.plan_name):
        raise PlanMismatch(f"run {run_id!r} was not started from a registered plan; only such "
                           "runs move between versions")
    if run.status in FINISHED_STATUSES:
        raise PlanMismatch(f"run {run_id!r} is {run.status}; only unfinished runs migrate")
    version = tenant.plans.version(run.plan_name, to)
    report = dry_run(tenant, f"{run.plan_name}@{version}", run_id)
    if not report.matches:
        first = report.mismatch or (f"completed call {report.unreplayed[0]!r} is not in "
                                    f"version {version[:12]}")
        raise PlanMismatch(f"run {run_id!r} cannot move to version {version[:12]} of plan "
                           f"{run.plan_name!r}: {first}")
    compiled = tenant.compile(tenant.plans.get(run.plan_name, version))
    owner = new_worker_id()
    now = time.time()
    if not engine.store.acquire_lease(tenant.id, run_id, owner, engine.lease_seconds, now):
        raise RunLeased(run_id, run.lease_owner or "?", run.lease_expires_at or now)
    try:
        engine.store.repin_plan(tenant.id, run_id, owner, stored_plan(tenant.id, compiled, now))
    finally:
        engine.store.finish_run(tenant.id, run_id, owner, run.status, wake_at=run.wake_at)
    return report
