"""The pause machinery shared by both executors: approvals, timers and events.

A wait is answered from the journal first (a replay), then from the store's wait rows (a
decision or event that arrived while the run slept), and otherwise registered as pending:
the executor carries on with other work and, when nothing else can run, the run is saved as
"waiting" with a wake-up time. Nothing of a waiting run lives outside the store.

Journal keys: an approval gate on a tool call `deploy` (or `deploy[2]`) is journaled as
`deploy@approval`; a standalone approval, timer or event step under its step id. An
approval's wait id binds that key to the full hash of its arguments (`identities`), and a
decision is used only for exactly the arguments it was asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from agentflow.errors import NonDeterminismError, WaitConflict
from agentflow.executors.identities import (
    LEGACY_HASH_WIDTH,
    approval_wait_id,
    hash_matches,
    legacy_wait_id,
    same_args,
)
from agentflow.executors.journal import RunJournal
from agentflow.plan.models import ApprovalSpec
from agentflow.store.base import WAIT_OUTCOMES, Store, WaitRecord

GATE_SUFFIX = "@approval"


@dataclass(frozen=True)
class Decision:
    """A human's (or an expiry's) answer to an approval."""

    approved: bool
    by: str
    comment: str | None = None
    reason: str | None = None
    args: dict[str, Any] | None = None
    fail: bool = False  # expired with on_expiry="fail"

    def output(self) -> dict[str, Any]:
        """The approval step's output, as plans reference it."""
        return {"approved": self.approved, "by": self.by, "comment": self.comment,
                "reason": self.reason}

    def journal_data(self) -> dict[str, Any]:
        return {**self.output(), "args": self.args, "fail": self.fail}

    @classmethod
    def from_journal(cls, data: dict[str, Any]) -> Decision:
        return cls(approved=bool(data.get("approved")), by=str(data.get("by", "")),
                   comment=data.get("comment"), reason=data.get("reason"),
                   args=data.get("args"), fail=bool(data.get("fail")))


@dataclass(frozen=True)
class EventTimedOut:
    """A `wait_for_event` whose timeout passed before the event came."""

    name: str
    timeout: float


class WaitBook:
    """Resolves the waits of one execution of one run and remembers what is still pending."""

    def __init__(self, store: Store, journal: RunJournal, plan_hash: str, *,
                 new: bool = False) -> None:
        """`new`: the run was just created, so it has no waits to read."""
        self.store = store
        self.journal = journal
        self.plan_hash = plan_hash
        self.tenant_id = journal.tenant_id
        self.run_id = journal.run_id
        self.waits = {} if new else {
            w.wait_id: w for w in store.list_waits(self.tenant_id, self.run_id)}
        self.pending: dict[str, WaitRecord] = {}
        self._writes: dict[str, WaitRecord] = {}

    # -- approvals --------------------------------------------------------------------

    def approval(self, key: str, *, step_id: str, spec: ApprovalSpec, prompt: str,
                 tool: str | None, args: dict[str, Any] | None, hashed_args: str,
                 args_schema: dict[str, Any] | None,
                 marker: str = "approve") -> Decision | None:
        """The decision on this approval, or None while it is pending (then registered).
        `marker` names the call in the journal, so a replay can tell it from another."""
        recorded = self.journal.record(key)
        wait_id = self._wait_id(key, hashed_args, spec)
        if recorded is not None and recorded.status in ("succeeded", "rejected") \
                and hash_matches(recorded.args_hash, hashed_args):
            self._consume(self.waits.get(wait_id))
            return Decision.from_journal(recorded.decision or {})
        self._mark_stale(key, wait_id)
        wait = self.waits.get(wait_id)
        if wait is not None and args is not None and not same_args(wait.args, args):
            raise NonDeterminismError(self.run_id, key, f"an approval of {wait.args!r:.200}",
                                      f"a call with {args!r:.200}")
        if wait is None:
            expires = time.time() + spec.expires_in if spec.expires_in else None
            wait = WaitRecord(
                tenant_id=self.tenant_id, run_id=self.run_id, wait_id=wait_id, key=key,
                kind="approval", plan_hash=self.plan_hash, step_id=step_id, tool=tool,
                args=args, args_hash=hashed_args, prompt=prompt, approvers=spec.approvers,
                expires_at=expires, on_expiry=spec.on_expiry, args_schema=args_schema)
            self._write(wait)
            # the position is taken: a replay that calls something else here is caught
            self.journal.add(key, "wait", None, tool=marker, hashed_args=hashed_args)
        if wait.status == "pending" and wait.expires_at is not None \
                and wait.expires_at <= time.time():
            wait = self._expire(wait)
        if wait.status == "pending":
            self.pending[wait_id] = wait
            return None
        decision = self._decision_of(wait)
        self.journal.add(key, "decision", decision.journal_data(), tool=marker,
                         hashed_args=hashed_args)
        self._consume(wait)
        return decision

    def _wait_id(self, key: str, hashed_args: str, spec: ApprovalSpec) -> str:
        """This approval's wait id; or the id of the same approval asked for by an older
        version (see `identities`) while that one is known, bound to the same arguments and
        holding the policy asked for now (an older version let a plan weaken a host gate)."""
        wait_id = approval_wait_id(self.tenant_id, self.run_id, key, hashed_args)
        legacy = self.waits.get(legacy_wait_id(key, hashed_args))
        if wait_id in self.waits or legacy is None or legacy.key != key:
            return wait_id
        same_binding = legacy.args_hash is not None \
            and len(legacy.args_hash) == LEGACY_HASH_WIDTH \
            and hash_matches(legacy.args_hash, hashed_args)
        same_policy = legacy.approvers == spec.approvers \
            and (legacy.expires_at is None) == (spec.expires_in is None) \
            and (legacy.on_expiry or "reject") == spec.on_expiry
        if same_binding and same_policy:
            return legacy.wait_id
        if legacy.status in WAIT_OUTCOMES:
            self._consume(legacy)  # an outcome that no longer counts must not keep it due
        return wait_id

    def _decision_of(self, wait: WaitRecord) -> Decision:
        data = wait.decision or {}
        if wait.status == "expired":
            action = wait.on_expiry or "reject"
            return Decision(approved=action == "approve", by="expiry",
                            reason=f"approval expired (on_expiry={action})",
                            fail=action == "fail")
        return Decision(approved=wait.status == "approved", by=str(data.get("by", "")),
                        comment=data.get("comment"), reason=data.get("reason"),
                        args=data.get("args"))

    def _expire(self, wait: WaitRecord) -> WaitRecord:
        """Record the expiry; a decision that won the race against it is kept instead."""
        expired = replace(wait, status="expired", decided_at=time.time(),
                           decision={"by": "expiry", "on_expiry": wait.on_expiry})
        try:
            self.store.put_waits(self.tenant_id, self.run_id, self.journal.owner, [expired])
        except WaitConflict:
            fresh = {w.wait_id: w for w in self.store.list_waits(self.tenant_id, self.run_id)}
            self.waits.update(fresh)
            return fresh[wait.wait_id]
        self.waits[wait.wait_id] = expired
        return expired

    def _mark_stale(self, key: str, wait_id: str) -> None:
        """A pending approval of this call bound to other arguments can no longer be decided."""
        for other in list(self.waits.values()):
            if other.key == key and other.wait_id != wait_id and other.status == "pending":
                self._write(replace(other, status="stale"))

    # -- timers and events ------------------------------------------------------------

    def timer(self, key: str, *, step_id: str, due: float, marker: str = "sleep") -> bool:
        """True once the timer is due; the due time is journaled the first time, so a
        resume never restarts a sleep."""
        recorded = self.journal.record(key)
        if recorded is not None and recorded.status == "succeeded":
            return True
        if recorded is None or recorded.status != "waiting":
            self.journal.add(key, "wait", {"due": due}, tool=marker)
        else:
            due = float((recorded.output or {}).get("due", due))
        if due <= time.time():
            self.journal.add(key, "result", {"due": due}, tool=marker)
            wait = self.waits.get(key)
            if wait is not None and wait.status == "pending":
                self._write(replace(wait, status="fired", decided_at=time.time(),
                                     consumed=True))
            return True
        if key not in self.waits:
            self._write(WaitRecord(tenant_id=self.tenant_id, run_id=self.run_id, wait_id=key,
                                   key=key, kind="timer", plan_hash=self.plan_hash,
                                   step_id=step_id, expires_at=due))
        self.pending[key] = self.waits[key]
        return False

    def timer_due(self, key: str) -> float | None:
        recorded = self.journal.record(key)
        if recorded is not None and recorded.status == "waiting":
            return float((recorded.output or {}).get("due", 0.0))
        return None

    def event(self, key: str, *, step_id: str, name: str,
              timeout: float | None) -> tuple[bool, Any]:
        """(True, payload) once the event came, (True, EventTimedOut) after the timeout,
        (False, None) while waiting. Events sent before the wait are delivered too."""
        recorded = self.journal.record(key)
        if recorded is not None and recorded.status == "succeeded":
            return True, recorded.output
        event = self.store.take_event(self.tenant_id, self.run_id, self.journal.owner, name,
                                      key, time.time())
        if event is not None:
            self.journal.add(key, "result", event.payload, tool="wait_for_event")
            wait = self.waits.get(key)
            if wait is not None and wait.status == "pending":
                self._write(replace(wait, status="received", decided_at=time.time(),
                                     consumed=True))
            return True, event.payload
        if recorded is None or recorded.status != "waiting":
            due = time.time() + timeout if timeout else None
            self.journal.add(key, "wait", {"due": due, "event": name}, tool="wait_for_event")
        else:
            due = (recorded.output or {}).get("due")
        if due is not None and due <= time.time():
            wait = self.waits.get(key)
            if wait is not None and wait.status == "pending":
                self._write(replace(wait, status="expired", decided_at=time.time(),
                                    consumed=True, decision={"by": "timeout"}))
            return True, EventTimedOut(name, timeout or 0.0)
        if key not in self.waits:
            self._write(WaitRecord(tenant_id=self.tenant_id, run_id=self.run_id, wait_id=key,
                                   key=key, kind="event", plan_hash=self.plan_hash,
                                   step_id=step_id, event_name=name, expires_at=due))
        self.pending[key] = self.waits[key]
        return False, None

    # -- bookkeeping ------------------------------------------------------------------

    def _write(self, wait: WaitRecord) -> None:
        self.waits[wait.wait_id] = wait
        self._writes[wait.wait_id] = wait

    def _consume(self, wait: WaitRecord | None) -> None:
        if wait is not None and wait.status in WAIT_OUTCOMES and not wait.consumed:
            self._write(replace(wait, consumed=True))

    @property
    def unwritten(self) -> bool:
        """Whether waits are new or changed since the last flush."""
        return bool(self._writes)

    def flush(self) -> None:
        """Write new and changed waits (after the journal flush, which records outcomes)."""
        if self._writes:
            writes, self._writes = list(self._writes.values()), {}
            self.store.put_waits(self.tenant_id, self.run_id, self.journal.owner, writes)

    def refresh(self) -> bool:
        """Re-read the pending waits; True if any got an outcome (or an event arrived)."""
        if not self.pending:
            return False
        fresh = {w.wait_id: w for w in self.store.list_waits(self.tenant_id, self.run_id)}
        changed = any(fresh.get(wid, w).status != w.status for wid, w in self.pending.items())
        events = {w.event_name for w in self.pending.values() if w.kind == "event"}
        if events and not changed:
            changed = any(e.consumed_by is None and e.name in events
                          for e in self.store.list_events(self.tenant_id, self.run_id))
        self.waits.update(fresh)
        return changed

    def wake_at(self) -> float | None:
        """When the run must next be looked at by itself: the earliest expiry or due time."""
        times = [w.expires_at for w in self.pending.values() if w.expires_at is not None]
        return min(times) if times else None

    def begin_round(self) -> None:
        """Forget what was pending: every blocked call asks again in the next round."""
        self.pending.clear()
