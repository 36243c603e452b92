"""Deciding and waking runs: approvals (also by signed link), events and cancelling."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, cast

import jsonschema

from agentflow.engine.base import EngineBase
from agentflow.engine.links import make_link
from agentflow.engine.options import DEFAULT_TENANT
from agentflow.engine.results import Pending, RunResult, pending_from_wait
from agentflow.engine.subplans import children, notify_parent, owner_of_wait
from agentflow.engine.telemetry import traced_decision
from agentflow.errors import NotAnApprover, PendingNotFound, RunFinished, ToolArgumentsError
from agentflow.executors.limits import value_size
from agentflow.plan.models import check_event_name
from agentflow.plan.references import excerpt
from agentflow.tools import to_json_value

if TYPE_CHECKING:
    from agentflow.engine.engine import Engine


class Deciding(EngineBase):
    """The part of `Engine` that decides approvals and delivers events."""

    def approve(self, run_id: str, pending_id: str, *, by: str, comment: str | None = None,
                args: dict[str, Any] | None = None, tenant: str = DEFAULT_TENANT) -> Pending:
        """Approve a pending approval, optionally with edited arguments (checked against the
        tool's input schema first). Refused with a clear error, changing nothing, when the
        run or approval is unknown, already decided, stale or expired."""
        decision = {"by": by, "comment": comment, "args": args}
        self._check_size(tenant, pending_id, "the decision", decision)
        run_id = self._wait_owner(tenant, run_id, pending_id)
        wait = self._pending_wait(tenant, run_id, pending_id, by=by)
        if args is not None:
            to_json_value(args, f"the edited arguments of {pending_id!r}")  # NotJsonData
        if args is not None and wait is not None:
            self._check_edited_args(run_id, pending_id, wait.tool, wait.args_schema, args)
        decided = self.store.decide_wait(tenant, run_id, pending_id, "approved", decision,
                                         time.time())
        traced_decision(self.store, decided)
        return pending_from_wait(decided)

    def reject(self, run_id: str, pending_id: str, *, by: str, reason: str | None = None,
               tenant: str = DEFAULT_TENANT) -> Pending:
        """Reject a pending approval; `reason` is data that later steps can read."""
        decision = {"by": by, "reason": reason}
        self._check_size(tenant, pending_id, "the decision", decision)
        run_id = self._wait_owner(tenant, run_id, pending_id)
        self._pending_wait(tenant, run_id, pending_id, by=by)
        decided = self.store.decide_wait(tenant, run_id, pending_id, "rejected", decision,
                                         time.time())
        traced_decision(self.store, decided)
        return pending_from_wait(decided)

    def _wait_owner(self, tenant: str, run_id: str, pending_id: str) -> str:
        """The run that has the wait: this one, or a sub-plan's child run it waits for (a
        decision made through the parent's handle goes to the child)."""
        self._run(tenant, run_id)
        return owner_of_wait(self.store, tenant, run_id, pending_id) or run_id

    def approval_link(self, run_id: str, pending_id: str, *, approver: str,
                      expires_in: float = 86400, tenant: str = DEFAULT_TENANT,
                      base_url: str | None = None) -> str:
        """A URL that lets `approver` approve or reject this pending approval from a browser
        (`agentflow serve`), signed over the tenant, run, approval, plan and arguments hashes,
        approver and expiry (see `agentflow.engine.links`)."""
        return make_link(cast("Engine", self), run_id, pending_id, approver=approver,
                         expires_in=expires_in, tenant=tenant, base_url=base_url)

    def send_event(self, run_id: str, name: str, payload: Any = None, *,
                   tenant: str = DEFAULT_TENANT) -> int:
        """Deliver an event to a run (kept until a `wait_for_event` takes it). The name
        follows the plan format's rule for event names (`ValueError` otherwise); the
        payload must be JSON data (`NotJsonData` otherwise)."""
        self._check_size(tenant, f"event {excerpt(str(name))!r}", "the payload", payload)
        to_json_value(payload, f"the payload of event {name!r}")
        check_event_name(name, "the rule wait_for_event names follow")
        return self.store.send_event(tenant, run_id, name, payload, time.time())

    def cancel(self, run_id: str, *, reason: str = "cancelled",
               tenant: str = DEFAULT_TENANT) -> RunResult:
        """Stop a run for good. A worker executing it starts no further call (it learns at
        its next lease renewal or journal write) and its caller gets the cancelled result."""
        below = children(self.store, tenant, run_id)
        cancelled = self.store.cancel_run(tenant, run_id, reason, time.time())
        notify_parent(self.store, cancelled, "cancelled", None, cancelled.error)
        for child in below:  # its sub-plans go with it
            with contextlib.suppress(RunFinished):
                self.cancel(child.run_id, reason=f"parent run {run_id!r}: {reason}",
                            tenant=tenant)
        return self.get_run(run_id, tenant=tenant)
    def _check_size(self, tenant: str, where: str, what: str, value: Any) -> None:
        """`LimitExceeded`, before anything is read or written, for a decision or an event
        payload larger or deeper than the tenant's runs may store as one value: a person's
        10 MB comment is no more welcome in the store than a tool's 10 MB result."""
        value_size(value, self.limits_for(tenant), excerpt(where), what)

    def _pending_wait(self, tenant: str, run_id: str, pending_id: str, by: Any) -> Any:
        """The approval to decide, once `by` may decide it: a decision always names who
        made it, and one who is not among an approval's approvers is refused."""
        self._run(tenant, run_id)
        waits = {w.wait_id: w for w in self.store.list_waits(tenant, run_id)}
        wait = waits.get(pending_id)
        if wait is None or wait.kind != "approval":
            raise PendingNotFound(run_id, pending_id, ("approval",),
                                  None if wait is None else wait.kind,
                                  [w.wait_id for w in waits.values()
                                   if w.kind == "approval" and w.status == "pending"])
        if not isinstance(by, str) or not by.strip():
            raise NotAnApprover(run_id, pending_id,
                                f"a decision on {pending_id!r} of run {run_id!r} must name who "
                                f"decides (by=...), not {by!r}")
        if wait.approvers and by not in wait.approvers:
            raise NotAnApprover(run_id, pending_id,
                                f"{by!r} may not decide {pending_id!r} of run {run_id!r}; "
                                f"approvers: {', '.join(wait.approvers)}")
        return wait

    @staticmethod
    def _check_edited_args(run_id: str, pending_id: str, tool: str | None,
                           schema: dict[str, Any] | None, args: dict[str, Any]) -> None:
        if not isinstance(args, dict):
            raise ToolArgumentsError(f"run {run_id!r}, approval {pending_id!r}: edited "
                                     "arguments must be a JSON object")
        if schema is None:
            return
        problems = sorted(jsonschema.Draft202012Validator(schema).iter_errors(args),
                          key=lambda e: list(e.path))
        if problems:
            detail = "; ".join(
                f"args{''.join(f'.{p}' for p in e.absolute_path)}: {e.message}"
                for e in problems)
            raise ToolArgumentsError(f"run {run_id!r}, approval {pending_id!r}: edited "
                                     f"arguments for tool {tool!r} are invalid: {detail}")

