"""What a run waits for and what wakes it, in a SQL store: its waits (approvals, timers,
events, sub-plans) and the events sent to it. A part of `SQLStore` (see `store.sql` for the
atomicity every method keeps).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from agentflow.errors import LeaseLost, PendingNotFound, RunFinished, RunNotFound, WaitConflict
from agentflow.store import queries as q
from agentflow.store.base import (
    FINISHED_STATUSES,
    WAIT_OUTCOMES,
    EventRecord,
    WaitKind,
    WaitRecord,
    WaitStatus,
)
from agentflow.store.queue import WORK_CHANNEL, Connection, retried
from agentflow.store.rows import (
    WAIT_COLUMNS,
    dumps,
    dumps_optional,
    event_from_row,
    loads_optional,
    refuse_decision,
    wait_from_row,
    wait_row,
)
from agentflow.store.tenancy import TenantTables


class WaitTables(TenantTables):
    """The waits and events of runs, and the row-locked checks the writes of `SQLStore`
    make."""

    # The column that orders rows inserted with equal timestamps, in insertion order.
    insertion_order = "rowid"

    # --- helpers -------------------------------------------------------------------------

    def _run_status(self, conn: Connection, tenant_id: str, run_id: str) -> str:
        """The status of the tenant's run, its row locked; `RunNotFound` if it has none."""
        row = conn.execute(q.RUN_STATUS + self.row_lock, (tenant_id, run_id)).fetchone()
        if row is None:
            raise RunNotFound(run_id, tenant_id)
        status: str = row[0]
        return status

    def _check_lease(self, conn: Connection, tenant_id: str, run_id: str, owner: str) -> None:
        """`LeaseLost` unless `owner` holds the run's lease (its row locked until commit)."""
        if conn.execute(q.LEASED + self.row_lock, (tenant_id, run_id, owner)).fetchone() is None:
            raise LeaseLost(run_id, owner)

    # --- waits ---------------------------------------------------------------------------

    @retried
    def put_waits(
        self, tenant_id: str, run_id: str, owner: str, waits: list[WaitRecord]
    ) -> None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`,
        nothing written): insert new waits (`created_at` 0 means now) and update the status,
        decision, consumed, decided_at and expires_at of existing ones. An existing wait that
        is no longer pending only takes its own status again or "stale"; anything else raises
        `WaitConflict` and writes nothing. `ValueError` for a wait of another run."""
        now = time.time()
        rows = [wait_row(tenant_id, run_id, wait, now) for wait in waits]
        if not rows:
            return
        with self._transaction() as conn:
            self._check_lease(conn, tenant_id, run_id, owner)
            for wait, row in zip(waits, rows, strict=True):
                if conn.execute(q.PUT_WAIT, row).rowcount != 1:
                    stored = conn.execute(q.GET_WAIT, (tenant_id, run_id, wait.wait_id))
                    raise WaitConflict(run_id, wait.wait_id,
                                       wait_from_row(stored.fetchone()).status, wait.status)

    def list_waits(
        self, tenant_id: str, run_id: str | None = None, status: str | None = None,
        limit: int = 1000,
    ) -> list[WaitRecord]:
        """The tenant's waits, oldest first (ties in insertion order), optionally of one run
        and one status; at most `limit`. By status alone, a `waits_by_status` range scan."""
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if status is not None:  # of one run: its rows by primary key (see queries)
            where.append("status || '' = ?" if run_id is not None else "status = ?")
            params.append(status)
        params.append(limit)
        rows = self._fetch(
            f"SELECT {WAIT_COLUMNS} FROM waits WHERE {' AND '.join(where)}"
            f" ORDER BY created_at, {self.insertion_order} LIMIT ?",
            tuple(params),
        )
        return [wait_from_row(row) for row in rows]

    @retried
    def decide_wait(
        self, tenant_id: str, run_id: str, wait_id: str, status: WaitStatus,
        decision: dict[str, Any] | None, now: float,
        *, kinds: tuple[WaitKind, ...] = ("approval",),
    ) -> WaitRecord:
        """In one write transaction: check the run and the wait (see `Store.decide_wait` for
        each refusal; nothing changes on one), set the wait's status, decision and
        `decided_at = now`, and make a waiting run due at `now`. Returns the updated wait.
        `ValueError` for a status outside `WAIT_OUTCOMES`."""
        if status not in WAIT_OUTCOMES:
            raise ValueError(
                f"a decision sets one of {', '.join(sorted(WAIT_OUTCOMES))}, not {status!r}"
            )
        decision_json = dumps_optional(decision, f"the decision on {wait_id!r}")
        with self._transaction() as conn:
            run_status = self._run_status(conn, tenant_id, run_id)
            row = conn.execute(q.GET_WAIT, (tenant_id, run_id, wait_id)).fetchone()
            wait = None if row is None else wait_from_row(row)
            if wait is None or wait.kind not in kinds:
                raise PendingNotFound(run_id, wait_id, kinds, wait.kind if wait else None)
            refuse_decision(wait, run_status, now)
            conn.execute(q.DECIDE, (status, decision_json, now, tenant_id, run_id, wait_id))
            conn.execute(q.WAKE_IF_ARRIVED, {"now": now, "tenant": tenant_id, "run": run_id})
            self._notify(conn, WORK_CHANNEL, tenant_id)
        return replace(wait, status=status, decision=loads_optional(decision_json),
                       decided_at=now)

    # --- events --------------------------------------------------------------------------

    @retried
    def send_event(
        self, tenant_id: str, run_id: str, name: str, payload: Any, now: float
    ) -> int:
        """In one write transaction: append the event with the run's next `seq` and make a
        waiting run with a pending wait for `name` due at `now`. `RunNotFound`, `RunFinished`
        (nothing written); `StoreError` if the payload is not JSON."""
        payload_json = dumps(payload, f"the payload of event {name!r}")
        with self._transaction() as conn:
            run_status = self._run_status(conn, tenant_id, run_id)
            if run_status in FINISHED_STATUSES:
                raise RunFinished(run_id, run_status)
            seq: int = 1 + conn.execute(q.MAX_EVENT_SEQ, (tenant_id, run_id)).fetchone()[0]
            conn.execute(q.SEND_EVENT, (tenant_id, run_id, seq, name, payload_json, now))
            conn.execute(q.WAKE_IF_ARRIVED, {"now": now, "tenant": tenant_id, "run": run_id})
            self._notify(conn, WORK_CHANNEL, tenant_id)
        return seq

    @retried
    def take_event(
        self, tenant_id: str, run_id: str, owner: str, name: str, key: str, now: float
    ) -> EventRecord | None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`): the
        event `key` consumed already, else the oldest unconsumed `name` event, now consumed
        by `key`; else None."""
        with self._transaction() as conn:
            self._check_lease(conn, tenant_id, run_id, owner)
            row = conn.execute(q.EVENT_TAKEN_BY, (tenant_id, run_id, key)).fetchone()
            if row is None:
                row = conn.execute(q.OLDEST_EVENT, (tenant_id, run_id, name)).fetchone()
                if row is None:
                    return None
                conn.execute(q.TAKE_EVENT, (key, now, tenant_id, run_id, row[0]))
                row = (*row[:4], key, now)
        return event_from_row(row)

    def list_events(self, tenant_id: str, run_id: str) -> list[EventRecord]:
        """All events of the tenant's run in `seq` order (empty for an unknown run)."""
        return [event_from_row(row) for row in self._fetch(q.LIST_EVENTS, (tenant_id, run_id))]
