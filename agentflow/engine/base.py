"""What every part of `Engine` builds on: the store, tools, limits and tenants' views it
is made with, the per-call options, and reading runs back from the store.

`Engine` is made of this base and the parts in `running`, `queueing` and `deciding`; each
part is a base class of `Engine` only, so where a function wants the `Engine` itself the
parts pass `cast("Engine", self)`."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, cast

from agentflow.engine.compiling import CompiledPlans
from agentflow.engine.failures import FailurePolicy
from agentflow.engine.leases import LeaseKeeper
from agentflow.engine.loading import Compiled, plan_data
from agentflow.engine.options import (
    DEFAULT_TENANT,
    Claimed,
    ToolsArg,
    _Execution,
    check_id,
)
from agentflow.engine.policy import Policy
from agentflow.engine.results import RunResult, build_result, pending_from_wait, remember_origin
from agentflow.engine.streaming import STREAMING_KIND
from agentflow.engine.subplans import pending_below, plan_tools
from agentflow.engine.tenant import Tenant
from agentflow.errors import CorruptRow, PlanMismatch, RunNotFound
from agentflow.executors.commits import GroupCommitter
from agentflow.executors.journal import CallRecord, fold
from agentflow.executors.limits import Limits
from agentflow.executors.progress import Observer
from agentflow.sandbox import IsolatePool, Isolation
from agentflow.store import JournalEntry, RunRecord, Store, StoredPlan, open_store
from agentflow.store.base import iter_journal
from agentflow.tools import Tool, tool_registry

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine

STEP_ID_LISTS_KEPT = 1024
"""Plans whose step list an engine keeps for building results (see `_step_ids`)."""


class EngineBase:
    """The state of an `Engine` and its reading methods (see `Engine`)."""

    def __init__(self, store: str | Store | None = None, *, tools: ToolsArg = None,
                 max_concurrency: int = 16, lease_seconds: float = 30.0,
                 max_inline_wait: float = 1.0,
                 failure_policy: FailurePolicy | None = None, isolation: Isolation = "process",
                 isolates: IsolatePool | None = None,
                 group_commit_window: float = 0.002, limits: Limits | None = None) -> None:
        if isolation not in ("process", "none"):
            raise ValueError(f"isolation must be 'process' or 'none', not {isolation!r}")
        self.isolation: Isolation = isolation
        self.isolates = isolates
        self.store = open_store(store)
        self.tools = tool_registry(tools)
        self.max_concurrency = max_concurrency
        self.lease_seconds = lease_seconds
        self.max_inline_wait = max_inline_wait
        self.failure_policy = failure_policy or FailurePolicy()
        self.commits = GroupCommitter(self.store, window=group_commit_window)
        self.leases = LeaseKeeper(self.store)
        self._plans = CompiledPlans()
        self.limits = limits or Limits()
        self._tenants: dict[str, Tenant] = {}
        self._tenant_limits: dict[str, Limits] = {}
        self._step_id_lists: dict[str, tuple[list[tuple[str, bool]] | None]] = {}

    def __repr__(self) -> str:
        return f"Engine({self.store.url!r})"

    def tenant(self, tenant_id: str, *, tools: ToolsArg = None,
               limits: Limits | None = None) -> Tenant:
        """This engine bound to one tenant: its runs only, its tools plus the shared ones.
        The same id gives the same view, so tools registered on it stay registered.
        `limits` replace the engine's `Limits` for this tenant's runs."""
        view = self._tenants.get(tenant_id)
        if view is None:
            check_id(tenant_id, "tenant")
            view = self._tenants[tenant_id] = Tenant(cast("Engine", self), tenant_id)
        if tools is not None:
            view.register(*tools)
        if limits is not None:
            self._tenant_limits[tenant_id] = limits
        return view

    def limits_for(self, tenant_id: str) -> Limits:
        """The `Limits` a tenant's runs execute under."""
        return self._tenant_limits.get(tenant_id, self.limits)

    def _execution(self, tools: ToolsArg, max_concurrency: int | None,
                   observer: Observer | None, tenant: str) -> _Execution:
        """Check the per-call options before anything is written; the tenant's policy
        narrows the tools and sets the limits."""
        return self._run_and_execution(tools, max_concurrency, observer, tenant, None)[1]

    def _run_and_execution(self, tools: ToolsArg, max_concurrency: int | None,
                           observer: Observer | None, tenant: str,
                           run_id: str | None, claim: Claimed | None = None,
                           ) -> tuple[RunRecord | None, _Execution]:
        """`_execution`, and the tenant's run `run_id` (None without one): read with the
        policy in one statement, or taken from `claim`, which read both in the claim's
        transaction. The policy is read afresh each time, never cached, so a run never
        executes under a policy the host has since made stricter."""
        check_id(tenant, "tenant")
        if max_concurrency is not None and (
                not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                or max_concurrency < 1):
            raise ValueError(f"max_concurrency must be a whole number >= 1, "
                             f"not {max_concurrency!r}")
        if claim is not None:
            run, stored = claim.run, claim.policy
        elif run_id is None:
            run, stored = None, self.store.get_policy(tenant)
        else:
            run, stored = self.store.get_run_and_policy(tenant, run_id)
        policy = Policy.from_json(stored)
        return run, _Execution(policy.tools({**self.tools, **tool_registry(tools)}),
                               max_concurrency or self.max_concurrency, observer, policy)

    # -- reading ----------------------------------------------------------------------

    def get_run(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> RunResult:
        """The run's current state, from the store alone. A journal with a corrupt row
        gives the run without its steps (the run's error names the row)."""
        run = self._run(tenant, run_id)
        try:
            records = self._records(run)
        except CorruptRow:
            records = {}
        return remember_origin(self._result(run, records), self, None)

    def _records(self, run: RunRecord) -> dict[str, CallRecord]:
        """The run's journal folded page by page: only each call position's latest record
        is kept, never the whole journal."""
        return fold(iter_journal(self.store, run.tenant_id, run.run_id))

    def _result(self, run: RunRecord,
                entries: list[JournalEntry] | dict[str, CallRecord]) -> RunResult:
        if run.status == "completed":
            pending = []
        else:
            own = self.store.list_waits(run.tenant_id, run.run_id, status="pending")
            pending = [pending_from_wait(w)
                       for w in [*own, *pending_below(self.store, run, own)]]
        return build_result(run, self._step_ids(run), entries, pending)

    def list_runs(self, *, tenant: str = DEFAULT_TENANT, status: str | None = None,
                  plan_hash: str | None = None, limit: int = 100,
                  before: tuple[float, str] | None = None,
                  plan_name: str | None = None) -> list[RunRecord]:
        """The tenant's runs, newest first; `before` (created_at, run_id of the last run of
        the previous page) continues a listing; `plan_name`: runs started by that
        registered name (an index look-up in the store)."""
        return self.store.list_runs(tenant, status=status, plan_hash=plan_hash, limit=limit,
                                    before=before, plan_name=plan_name)

    def journal(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> list[JournalEntry]:
        """The run's journal: every intent, result, error, skip, wait and decision in order."""
        self._run(tenant, run_id)
        return self.store.read_journal(tenant, run_id)

    def plan_data_of(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> Any:
        """The plan a run is pinned to, as plan data (a dict, or a `CodePlan`)."""
        run = self._run(tenant, run_id)
        stored = self.store.get_plan(tenant, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run_id!r}: its pinned plan is missing from the store")
        return plan_data(stored)

    def plan_of(self, run_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """The plan a run is pinned to, as JSON data."""
        run = self._run(tenant, run_id)
        stored = self.store.get_plan(tenant, run.plan_hash)
        if stored is None:
            raise PlanMismatch(f"run {run_id!r}: its pinned plan is missing from the store")
        body: dict[str, Any] = json.loads(stored.body)
        return body

    def _run(self, tenant: str, run_id: str) -> RunRecord:
        run = self.store.get_run(tenant, run_id)
        if run is None:
            raise RunNotFound(run_id, tenant)
        return run

    def _step_ids(self, run: RunRecord) -> list[tuple[str, bool]] | None:
        """The graph plan's (step id, is foreach) list; None for a code plan, whose steps
        are its calls as the journal records them, or a plan row that cannot be read.
        Kept per plan hash (a hash names one plan body): a thousand runs of one plan read
        and parse it once."""
        known = self._step_id_lists.get(run.plan_hash)
        if known is not None:
            return known[0]
        stored = self.store.get_plan(run.tenant_id, run.plan_hash)
        return None if stored is None else self._keep_step_ids(stored, None)

    def _keep_step_ids(self, stored: StoredPlan,
                       data: Any) -> list[tuple[str, bool]] | None:
        """`_step_ids` of a plan row just read (`data`: its body already parsed, or None),
        kept, so the run's result does not read the plan again."""
        try:
            step_ids = None if stored.kind != "graph" else [
                (step["id"], "foreach" in step) for step in
                (json.loads(stored.body) if data is None else data).get("steps", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # a corrupt plans row: the run's own error says so
        if len(self._step_id_lists) >= STEP_ID_LISTS_KEPT:
            with contextlib.suppress(RuntimeError, StopIteration):  # another thread's turn
                self._step_id_lists.pop(next(iter(self._step_id_lists)), None)
        self._step_id_lists[stored.plan_hash] = (step_ids,)
        return step_ids

    def _pinned_plan(self, run: RunRecord, registry: dict[str, Tool],
                     claim: Claimed | None = None) -> Compiled:
        """The run's pinned plan, compiled with `registry`: read from the store, or the one
        `claim` read with the run."""
        stored = self.store.get_plan(run.tenant_id, run.plan_hash) if claim is None \
            else claim.plan
        if stored is None:
            raise PlanMismatch(f"run {run.run_id!r}: its pinned plan {run.plan_hash[:12]} is "
                               "missing from the store")
        if stored.kind == STREAMING_KIND:
            raise PlanMismatch(f"run {run.run_id!r}: the plan was still streaming when the "
                               "run stopped, so there is no whole plan to resume; run it "
                               "again with execute_stream and the same run_id")
        compiled, data = self._plans.compile_stored(
            stored, registry, lambda data: plan_tools(cast("Engine", self), run.tenant_id,
                                                      data))
        if compiled.plan_hash != run.plan_hash:
            raise PlanMismatch(f"run {run.run_id!r}: pinned plan hash changed on reload")
        if stored.plan_hash not in self._step_id_lists:
            self._keep_step_ids(stored, data)
        return compiled
    def close(self) -> None:
        self.leases.close()
        self.commits.close()
        self.store.close()
