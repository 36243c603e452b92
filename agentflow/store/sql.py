"""`SQLStore`: the `Store` protocol written once for SQL databases.

A backend subclass supplies the connection and its locking (`_transaction`, `_fetch`,
`_update`, `_append_in`) and the spelling of a row lock; the logic of every method, its
checks and the order of its statements live here, so SQLite and PostgreSQL cannot drift.
`SQLStore` is built in layers: `RunQueue` (store.queue), `TenantTables` (store.tenancy),
`WaitTables` (store.waiting: waits and events), then runs, leases and the journal here.

Atomicity. A method of several statements runs them in one `_transaction`: a `BEGIN
IMMEDIATE` on SQLite (the whole file is locked), a transaction on PostgreSQL whose first
statement locks the run's row (`SELECT ... FOR UPDATE`), so a lease check and the writes it
guards cannot interleave with a take-over, a decision or a cancellation of the same run. A
single-statement write (a lease compare-and-set) is atomic on its own on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Self

from agentflow.errors import LeaseLost, RunFinished, StoreError
from agentflow.store import queries as q
from agentflow.store.base import (
    FINISHED_STATUSES,
    GroupWrite,
    JournalAppend,
    JournalEntry,
    NewRun,
    RunEnd,
    RunRecord,
    RunStatus,
    StoredPlan,
    TokenRecord,
)
from agentflow.store.queue import SETTLED_CHANNEL, WORK_CHANNEL, Connection, new_run_values, retried
from agentflow.store.rows import (
    RUN_COLUMNS,
    RUN_STATUSES,
    dumps,
    dumps_optional,
    journal_from_row,
    journal_rows,
    run_from_row,
)
from agentflow.store.waiting import WaitTables


class SQLStore(WaitTables):
    """The shared part of the SQL stores; see the module docstring."""

    # --- what a backend supplies (and see `RunQueue`) --------------------------------------

    def _append_in(self, conn: Connection, run: tuple[str, str], owner: str,
                   rows: list[tuple[Any, ...]]) -> int:
        """Inside a transaction: append `rows` with the run's next seq numbers if `owner`
        holds its lease; the number of rows written (0 without the lease)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plans ---------------------------------------------------------------------------

    def put_plan(self, plan: StoredPlan) -> None:
        """Insert the plan unless this tenant already has one with this hash (the first body
        stays; `created_at` 0 means now). One statement."""
        self._update(q.PUT_PLAN, (plan.tenant_id, plan.plan_hash, plan.kind, plan.body,
                                  plan.created_at or time.time()))

    def get_plan(self, tenant_id: str, plan_hash: str) -> StoredPlan | None:
        """The tenant's plan with this hash, or None."""
        rows = self._fetch(q.GET_PLAN, (tenant_id, plan_hash))
        return StoredPlan(*rows[0]) if rows else None

    # --- runs ----------------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, plan: StoredPlan, owner: str, lease_seconds: float, *,
        cap: int | None = None,
    ) -> tuple[RunRecord, bool]:
        """In one write transaction: insert the run leased to `owner` until `created_at +
        lease_seconds` and pin its plan, unless the tenant has a run with this id. Returns
        (the stored run, created); an existing run is returned unchanged and not leased.
        `created_at`/`updated_at` of 0 mean now. With `cap`: `TooManyRuns` instead of a
        new run while the tenant has `cap` runs under a lease (counted atomically with the
        insert, across every process of the store)."""
        return self._insert_run(run, plan, owner, lease_seconds, cap)

    @retried
    def repin_plan(self, tenant_id: str, run_id: str, owner: str, plan: StoredPlan) -> None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`,
        nothing written): insert `plan` unless the tenant has one with its hash, and set it
        as the plan of the run and of the run's waits. `ValueError` for another tenant's."""
        if plan.tenant_id != tenant_id:
            raise ValueError(f"run {run_id!r} of tenant {tenant_id!r} cannot be pinned to a "
                             f"plan of tenant {plan.tenant_id!r}")
        now = time.time()
        with self._transaction() as conn:
            self._check_lease(conn, tenant_id, run_id, owner)
            conn.execute(q.PUT_PLAN, (tenant_id, plan.plan_hash, plan.kind, plan.body,
                                      plan.created_at or now))
            conn.execute(q.REPIN_RUN, (plan.plan_hash, now, tenant_id, run_id))
            conn.execute(q.REPIN_WAITS, (plan.plan_hash, tenant_id, run_id))

    def get_run(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """The tenant's run, or None."""
        rows = self._fetch(q.GET_RUN, (tenant_id, run_id))
        return run_from_row(rows[0]) if rows else None

    def list_runs(
        self, tenant_id: str, status: str | None = None, plan_hash: str | None = None,
        limit: int = 100, before: tuple[float, str] | None = None,
        plan_name: str | None = None,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first (ties by run id, descending), optionally filtered
        by status, plan hash and the registered plan name it was started by, and only those
        after `before` (created_at, run_id) in that
        order (a page cursor); at most `limit`."""
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND run_id < ?))")
            params.extend((before[0], before[0], before[1]))
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if plan_hash is not None:
            where.append("plan_hash = ?")
            params.append(plan_hash)
        if plan_name is not None:
            where.append("plan_name = ?")
            params.append(plan_name)
        params.append(limit)
        rows = self._fetch(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, run_id DESC LIMIT ?",
            tuple(params),
        )
        return [run_from_row(row) for row in rows]

    def due_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Waiting runs whose `wake_at` is at or before `now`, earliest first, at most
        `limit`; of one tenant, or of all tenants for a scheduler (`tenant_id=None`). An
        index range scan (`runs_due`): its cost does not grow with the runs waiting later."""
        if tenant_id is None:
            rows = self._fetch(q.DUE_RUNS, (now, limit))
        else:
            rows = self._fetch(q.DUE_RUNS_OF_TENANT, (now, tenant_id, limit))
        return [run_from_row(row) for row in rows]

    def orphaned_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Runs still "running" whose worker is gone: no lease, or a lease that expired
        before `now` (its worker crashed or hung), unless a failed execution put their
        next try (`wake_at`) after `now`. A range over the running runs only, by the
        `runs_due` index's status prefix."""
        sql = q.ORPHANED_RUNS
        params: tuple[Any, ...] = (now, now)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params += (tenant_id,)
        return [run_from_row(row) for row in self._fetch(f"{sql} LIMIT ?", (*params, limit))]

    # --- leases --------------------------------------------------------------------------

    def acquire_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float,
        now: float, take_over_from: str | None = None,
    ) -> bool:
        """Lease the unfinished run to `owner` until `now + lease_seconds` if it is free,
        expired before `now`, already `owner`'s, or held by `take_over_from`, and mark it
        "running". One compare-and-set UPDATE; True if `owner` holds the lease now."""
        return self._update(q.ACQUIRE, {
            "owner": owner, "now": now, "seconds": lease_seconds, "tenant": tenant_id,
            "run": run_id, "take_over_from": take_over_from,
        }) == 1

    def renew_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Move `owner`'s lease expiry to `now + lease_seconds`; False (and no change) if
        `owner` does not hold it. Fencing is by identity: an expired lease nobody took yet
        is still `owner`'s to renew. One UPDATE."""
        return self._update(q.RENEW, (now, lease_seconds, tenant_id, run_id, owner)) == 1

    def renew_leases(
        self, leases: list[tuple[str, str, str]], lease_seconds: float, now: float
    ) -> set[tuple[str, str, str]]:
        """`renew_lease` for each `(tenant_id, run_id, owner)`, one UPDATE per
        `q.RENEW_MANY_CHUNK` leases; the leases still held (now renewed). Statements are
        padded to a power of two leases with NULLs (which match no run), so a handful of
        statement texts serve every count and stay prepared."""
        held: set[tuple[str, str, str]] = set()
        for start in range(0, len(leases), q.RENEW_MANY_CHUNK):
            chunk = leases[start:start + q.RENEW_MANY_CHUNK]
            size = 1 << (len(chunk) - 1).bit_length()
            params = [now, lease_seconds, *(value for lease in chunk for value in lease),
                      *([None] * (3 * (size - len(chunk))))]
            with self._transaction() as conn:
                rows = conn.execute(q.renew_many(size), params).fetchall()
            held.update((tenant, run, owner) for tenant, run, owner in rows)
        return held

    # --- journal -------------------------------------------------------------------------

    @retried
    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` in order with the run's next `seq` numbers (1, 2, ... per run),
        committed when this returns, only if `owner` holds the lease; else `LeaseLost` and
        nothing written. One transaction."""
        if not entries:
            return
        rows = journal_rows(run_id, entries)
        with self._transaction() as conn:
            if self._append_in(conn, (tenant_id, run_id), owner, rows) != len(rows):
                raise LeaseLost(run_id, owner)

    @retried
    def write_group(self, writes: list[GroupWrite]) -> list[Any]:
        """Several runs' writes in one transaction (see `Store.write_group`). Each write's
        values are encoded first (one that is not JSON is answered with its `StoreError`
        and left out); runs are then locked in (tenant, run) order, so two groups cannot
        deadlock on PostgreSQL's row locks."""
        answers: list[Any] = [None] * len(writes)
        prepared: list[tuple[tuple[str, str], int, Any]] = []
        for index, write in enumerate(writes):
            try:
                prepared.append((_run_of(write), index, _encoded(write)))
            except (StoreError, ValueError) as error:
                answers[index] = error
        prepared.sort(key=lambda item: (item[0], item[1]))
        with self._transaction() as conn:
            self._write_all(conn, [(index, writes[index], values)
                                   for _, index, values in prepared], answers)
        return answers

    def _write_all(self, conn: Connection, writes: list[tuple[int, GroupWrite, Any]],
                   answers: list[Any]) -> None:
        """Inside `write_group`'s transaction: each (index, write, encoded values) in turn,
        its answer (or `LeaseLost`) put at `answers[index]`."""
        for index, write, values in writes:
            try:
                answers[index] = self._write_in(conn, write, values)
            except LeaseLost as lost:
                answers[index] = lost

    def _write_in(self, conn: Connection, write: GroupWrite, values: Any) -> Any:
        """One write of a group, inside its transaction; `LeaseLost` before writing
        anything without the lease."""
        if isinstance(write, NewRun):
            return self._insert_run_in(conn, write.run, write.plan, values)
        run = (write.tenant_id, write.run_id)
        rows = values if isinstance(write, JournalAppend) else values[0]
        if rows and self._append_in(conn, run, write.owner, rows) != len(rows):
            raise LeaseLost(write.run_id, write.owner)
        if isinstance(write, RunEnd):
            self._end_in(conn, write, values[1])
        return None

    def read_journal(self, tenant_id: str, run_id: str) -> list[JournalEntry]:
        """All entries of the tenant's run in `seq` order (empty for an unknown run)."""
        return [journal_from_row(row, run_id)
                for row in self._fetch(q.READ_JOURNAL, (tenant_id, run_id))]

    def read_journal_page(self, tenant_id: str, run_id: str, after_seq: int,
                          limit: int) -> list[JournalEntry]:
        """At most `limit` entries of the run with `seq > after_seq`, in `seq` order (a
        primary-key range)."""
        return [journal_from_row(row, run_id) for row in
                self._fetch(q.READ_JOURNAL_PAGE, (tenant_id, run_id, after_seq, limit))]

    def journal_bytes(self, tenant_id: str, run_id: str | None = None) -> int:
        """Characters of journal data stored for the run (summed), or for all the tenant's
        runs (its counter rows, kept with every journal write and delete)."""
        if run_id is None:
            rows = self._fetch(q.TENANT_JOURNAL_BYTES, (tenant_id,))
        else:
            rows = self._fetch(q.RUN_JOURNAL_BYTES, (tenant_id, run_id))
        return int(rows[0][0])

    @retried
    def finish_run(
        self, tenant_id: str, run_id: str, owner: str, status: RunStatus,
        outputs: Any = None, error: dict[str, Any] | None = None,
        wake_at: float | None = None, entries: list[JournalEntry] | None = None,
    ) -> None:
        """In one write transaction: append `entries`, set status, outputs, error and
        `wake_at`, and release the lease, only if `owner` holds it; else `LeaseLost` and
        nothing written. A "waiting" run that already has an unconsumed outcome or a matching
        unconsumed event gets `wake_at = min(wake_at, now)` in the same transaction."""
        end = RunEnd(tenant_id, run_id, owner, status, outputs, error, wake_at, entries or [])
        values = _encoded(end)
        with self._transaction() as conn:
            self._write_in(conn, end, values)

    def _end_in(self, conn: Connection, end: RunEnd, update: tuple[Any, ...]) -> None:
        """`finish_run`'s update inside a transaction, once its entries are appended."""
        if conn.execute(q.FINISH, update).rowcount != 1:
            raise LeaseLost(end.run_id, end.owner)
        if end.status == "waiting":
            conn.execute(q.WAKE_IF_ARRIVED, {"now": update[4], "tenant": end.tenant_id,
                                             "run": end.run_id})
        self._notify(conn, *_finished(end.tenant_id, end.run_id, end.status))

    # --- cancellation --------------------------------------------------------------------

    @retried
    def cancel_run(self, tenant_id: str, run_id: str, reason: str, now: float) -> RunRecord:
        """In one write transaction: set the run "cancelled" with error `{"type":
        "Cancelled", "message": reason}`, clear its wake-up and its lease (the holder's next
        fenced write raises `LeaseLost`), and mark its pending waits "cancelled" with
        decision `{"reason": reason}`. `RunNotFound`; `RunFinished` (nothing changed)."""
        error = dumps({"type": "Cancelled", "message": reason}, "the cancellation reason")
        decision = dumps({"reason": reason}, "the cancellation reason")
        with self._transaction() as conn:
            run_status = self._run_status(conn, tenant_id, run_id)
            if run_status in FINISHED_STATUSES:
                raise RunFinished(run_id, run_status)
            conn.execute(q.CANCEL, (error, now, tenant_id, run_id))
            conn.execute(q.CANCEL_WAITS, (decision, now, tenant_id, run_id))
            self._notify(conn, *_finished(tenant_id, run_id, "cancelled"))
            row = conn.execute(q.GET_RUN, (tenant_id, run_id)).fetchone()
        return run_from_row(row)



    # --- API tokens and secrets ------------------------------------------------------------

    def put_token(self, token: TokenRecord) -> None:
        """Insert a new token record (its hash; the token itself is never stored)."""
        self._update(q.PUT_TOKEN, (token.token_hash, token.token_id, token.tenant_id,
                                   token.role, token.name, token.created_at, token.revoked_at))

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, revoked or not, or None."""
        rows = self._fetch(q.FIND_TOKEN, (token_hash,))
        return TokenRecord(*rows[0]) if rows else None

    def list_tokens(self, tenant_id: str | None = None) -> list[TokenRecord]:
        """The tokens of one tenant (or of all), oldest first."""
        rows = (self._fetch(q.ALL_TOKENS, ()) if tenant_id is None
                else self._fetch(q.TENANT_TOKENS, (tenant_id,)))
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Mark the token revoked (one statement); False if no live token has this id."""
        return self._update(q.REVOKE_TOKEN, (now, token_id)) == 1

    def secret(self, tenant_id: str, name: str, make: Callable[[], str]) -> str:
        """The tenant's secret `name`, stored from `make()` by the first call; an insert that
        loses a race to another process's changes nothing, and both read the stored value."""
        self._update(q.PUT_SECRET, (tenant_id, name, make(), time.time()))
        value: str = self._fetch(q.GET_SECRET, (tenant_id, name))[0][0]
        return value

    # --- traces ----------------------------------------------------------------------------

    def get_trace(self, tenant_id: str, run_id: str) -> str | None:
        """The W3C traceparent of the run's latest traced execution, or None."""
        rows = self._fetch(q.GET_TRACE, (tenant_id, run_id))
        return str(rows[0][0]) if rows else None

    def put_trace(self, tenant_id: str, run_id: str, traceparent: str) -> None:
        """Keep `traceparent` as the run's latest traced execution (one statement)."""
        self._update(q.PUT_TRACE, (tenant_id, run_id, traceparent, time.time()))


def _run_of(write: GroupWrite) -> tuple[str, str]:
    if isinstance(write, NewRun):
        return write.run.tenant_id, write.run.run_id
    return write.tenant_id, write.run_id


def _encoded(write: GroupWrite) -> Any:
    """What a write stores, encoded before its transaction: the new run's row, the journal
    rows, or (for a `RunEnd`) the journal rows and the FINISH parameters."""
    if isinstance(write, NewRun):
        return new_run_values(write.run, write.plan, write.owner, write.lease_seconds)
    rows = journal_rows(write.run_id, write.entries)
    if isinstance(write, JournalAppend):
        return rows
    if write.status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {write.status!r}")
    return rows, (write.status, dumps(write.outputs, "run outputs"),
                  dumps_optional(write.error, "run error"), write.wake_at, time.time(),
                  write.tenant_id, write.run_id, write.owner)


def _finished(tenant_id: str, run_id: str, status: str) -> tuple[str, str]:
    """The notification of a run that stopped executing with `status`: a released
    ("running") run is work for another worker; any other status settles it."""
    if status == "running":
        return WORK_CHANNEL, tenant_id
    return SETTLED_CHANNEL, json.dumps([tenant_id, run_id])
