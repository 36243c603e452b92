"""How runs enter a SQL store and how workers take them: the run queue.

`RunQueue` is the lower half of `SQLStore`: it declares what a backend supplies (a
transaction, one-statement reads and writes, a row lock, `SKIP LOCKED`, a per-tenant lock
and notifications) and implements submitting, claiming and waiting on top of that.

A claim is one write transaction. Runs that continue come first, earliest first: a
waiting run that is due (its timer came, a decision or an event arrived) and a run whose
worker died (its lease expired). Then submitted ("queued") runs, tenant by tenant: the
first tenant after the caller's last one, in id order and wrapping around, gives its oldest
queued run, so a tenant with a long backlog takes one turn like any other.

Caps. A tenant's cap on runs executing at once is the `max_concurrent_runs` of its stored
policy, read with each candidate run, or the claimer's `tenant_cap`, whichever is lower. A
tenant at its cap is passed over. The count and the claim are serialised per tenant (the
tenant's lock on PostgreSQL, the write lock on SQLite), and so are the count and the insert
of a run created under a cap (`create_run(..., cap=)`), so the cap holds across every
worker and engine of the store. An expired lease still counts until another worker takes
the run over (its worker may be alive and renew it late), and taking a run over adds no
run to the count, so it needs no room.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

from agentflow.errors import RunNotFound, StoreError, TooManyRuns
from agentflow.store import queries as q
from agentflow.store.base import Claim, RunRecord, StoredPlan
from agentflow.store.rows import RUN_COLUMNS, run_from_row, run_values

log = logging.getLogger("agentflow.store")
Connection = Any  # a DB-API connection: `execute(sql, params)` returns a cursor

# Work notifications: something became runnable (payload: the tenant).
WORK_CHANNEL = "agentflow_work"
# A run stopped executing (waiting, completed, failed, cancelled); payload: tenant, run.
SETTLED_CHANNEL = "agentflow_settled"

# A candidate run's tenant policy (its JSON), read with the candidate: it may cap the tenant.
_POLICY = "(SELECT body FROM policies WHERE policies.tenant_id = runs.tenant_id)"
# Runs that continue: a waiting run that is due, or a run whose worker died (no lease, or
# an expired one) unless a failed execution's backoff (`wake_at`) is still running.
CONTINUING = (
    "((status = 'waiting' AND wake_at <= :now)"
    " OR (status = 'running' AND (wake_at IS NULL OR wake_at <= :now)))"
    " AND (lease_owner IS NULL OR lease_expires_at < :now)"
)
_CONTINUING = (
    f"SELECT tenant_id, run_id, lease_owner IS NOT NULL, {_POLICY} FROM runs WHERE {CONTINUING}")
# The oldest queued run of the first tenant after the cursor: one step of `runs_queue`.
_NEXT_QUEUED = (
    f"SELECT tenant_id, run_id, {_POLICY} FROM runs WHERE status = 'queued' AND tenant_id > ?"
    " ORDER BY tenant_id, wake_at LIMIT 1"
)
_OF_TENANT_QUEUED = (
    f"SELECT tenant_id, run_id, {_POLICY} FROM runs WHERE status = 'queued' AND tenant_id = ?"
    " ORDER BY wake_at LIMIT 1"
)
_START_QUEUED = (
    "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires_at = ?,"
    f" updated_at = ? WHERE tenant_id = ? AND run_id = ? AND status = 'queued'"
    f" RETURNING {RUN_COLUMNS}"
)
_TAKE_OVER = f"{q.ACQUIRE} RETURNING {RUN_COLUMNS}"
_LEASED_COUNT = (
    "SELECT COUNT(*) FROM runs WHERE tenant_id = ? AND lease_expires_at IS NOT NULL")
_NEXT_WAKE = "SELECT MIN(wake_at) FROM runs WHERE status = 'waiting'"
GET_POLICY = "SELECT body FROM policies WHERE tenant_id = ?"
P = ParamSpec("P")
R = TypeVar("R")
# Attempts of a transaction that failed before commit for a reason a retry can cure.
RETRIES = 5


class TransientStoreError(StoreError):
    """A transaction failed before it committed, for a reason a retry can cure: the
    connection dropped (a server restart), a serialization failure, a deadlock."""


def retried(method: Callable[P, R]) -> Callable[P, R]:
    """Run `method` again (up to `RETRIES` times, with a short growing pause) when it
    raises `TransientStoreError`: nothing it wrote was committed, so it can start over.
    The last failure is raised as a plain `StoreError`, which names the store."""
    @functools.wraps(method)
    def again(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(RETRIES):
            try:
                return method(*args, **kwargs)
            except TransientStoreError as error:
                if attempt == RETRIES - 1:
                    raise StoreError(f"{error} (gave up after {RETRIES} attempts)") from error
                log.info("%s: retrying (attempt %d of %d)", error, attempt + 2, RETRIES)
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError("unreachable")
    return again


def new_run_values(run: RunRecord, plan: StoredPlan, owner: str | None,
                   lease_seconds: float) -> tuple[Any, ...]:
    """The row of a new run (see `run_values`); `ValueError` if `plan` is not its plan."""
    if run.tenant_id != plan.tenant_id or run.plan_hash != plan.plan_hash:
        raise ValueError(
            f"run {run.run_id!r} (tenant {run.tenant_id!r}, plan {run.plan_hash!r}) does "
            f"not match plan {plan.plan_hash!r} of tenant {plan.tenant_id!r}"
        )
    return run_values(run, owner, lease_seconds)


# Candidates read per claim among runs that continue; the first with room is taken.
_CANDIDATES = 16
# Tenants with queued runs tried per claim before giving up (all may be at their cap).
_TENANT_TURNS = 32


def policy_of(body: str | None) -> dict[str, Any] | None:
    """A tenant's stored policy (its JSON text), as `get_policy` answers."""
    return None if body is None else dict(json.loads(body))


def _cap(policy: str | None, tenant_cap: int | None) -> int | None:
    """The lower of the tenant's stored `max_concurrent_runs` (its policy's JSON) and the
    claimer's `tenant_cap`; None when neither caps it."""
    stored = json.loads(policy).get("max_concurrent_runs") if policy else None
    caps = [cap for cap in (stored, tenant_cap) if isinstance(cap, int)]
    return min(caps) if caps else None


class RunQueue:
    """Submitting, claiming and waiting, over the hooks a SQL backend supplies."""

    url: str
    # Appended to a SELECT that checks a run before a write in the same transaction.
    row_lock = ""
    # Appended to a SELECT of candidate runs: rows another claim holds are passed over.
    skip_locked = ""

    # --- what a backend supplies -----------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction: committed if the block returns, rolled back if it raises."""
        raise NotImplementedError

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Rows of one read statement (a consistent snapshot)."""
        raise NotImplementedError

    def _update(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> int:
        """Run one write statement as its own transaction; the number of rows it changed."""
        raise NotImplementedError

    def _lock_tenant(self, conn: Connection, tenant_id: str) -> None:
        """Serialise, until commit, the claims of one tenant (its cap check and claim).
        Nothing to do where a write transaction locks the whole database."""

    def _notify(self, conn: Connection, channel: str, payload: str) -> None:
        """Tell listeners on `channel` once the transaction commits (PostgreSQL NOTIFY);
        nothing where nobody can listen."""

    # --- entering --------------------------------------------------------------------------

    @retried
    def _insert_run(self, run: RunRecord, plan: StoredPlan, owner: str | None,
                    lease_seconds: float, cap: int | None = None) -> tuple[RunRecord, bool]:
        """Insert `run` (leased to `owner`, or not leased) and pin its plan, unless the
        tenant has a run with its id; (the stored run, created). One transaction. With
        `cap`, a new run is refused (`TooManyRuns`, nothing written) while the tenant has
        `cap` runs under a lease: counted under the tenant's lock, with the insert."""
        values = new_run_values(run, plan, owner, lease_seconds)
        with self._transaction() as conn:
            if cap is not None and conn.execute(
                    q.GET_RUN, (run.tenant_id, run.run_id)).fetchone() is None:
                running = self._leased(conn, run.tenant_id)
                if running >= cap:
                    raise TooManyRuns(run.tenant_id, cap, running)
            return self._insert_run_in(conn, run, plan, values)

    def _insert_run_in(self, conn: Connection, run: RunRecord, plan: StoredPlan,
                       values: tuple[Any, ...]) -> tuple[RunRecord, bool]:
        """`_insert_run` inside a transaction, with `new_run_values`."""
        created = conn.execute(q.INSERT_RUN, values).rowcount == 1
        if created:
            conn.execute(q.PUT_PLAN, (plan.tenant_id, plan.plan_hash, plan.kind,
                                      plan.body, plan.created_at or values[7]))
            if run.status == "queued":
                self._notify(conn, WORK_CHANNEL, run.tenant_id)
        row = conn.execute(q.GET_RUN, (run.tenant_id, run.run_id)).fetchone()
        return run_from_row(row), created

    def submit_run(self, run: RunRecord, plan: StoredPlan) -> tuple[RunRecord, bool]:
        """In one write transaction: insert the run as "queued" (no lease, `wake_at` its
        submission time) and pin its plan, unless the tenant has a run with this id; wake
        idle workers. Returns (the stored run, created); an existing run is unchanged."""
        now = run.created_at or time.time()
        return self._insert_run(replace(run, status="queued", created_at=now, wake_at=now),
                                plan, None, 0.0)

    # --- claiming --------------------------------------------------------------------------

    def claim_run(
        self, owner: str, lease_seconds: float, now: float, *, tenant_id: str | None = None,
        after_tenant: str = "", tenant_cap: int | None = None,
    ) -> RunRecord | None:
        """Atomically lease to `owner` one runnable run (see the module docstring for the
        order), of `tenant_id` only if given; a queued run becomes "running". Returns the
        claimed run, or None when nothing is runnable (or every tenant is at its cap)."""
        claimed = self.claim(owner, lease_seconds, now, tenant_id=tenant_id,
                             after_tenant=after_tenant, tenant_cap=tenant_cap)
        return None if claimed is None else claimed.run

    @retried
    def claim(
        self, owner: str, lease_seconds: float, now: float, *, tenant_id: str | None = None,
        after_tenant: str = "", tenant_cap: int | None = None,
    ) -> Claim | None:
        """`claim_run`, with the run's plan and its tenant's policy read in the same
        transaction (see `Store.claim`)."""
        with self._transaction() as conn:
            claimed = self._claim_in(conn, owner, lease_seconds, now, tenant_id,
                                     after_tenant, tenant_cap)
            if claimed is None:
                return None
            run, started = claimed
            plan = conn.execute(q.GET_PLAN, (run.tenant_id, run.plan_hash)).fetchone()
            policy = conn.execute(GET_POLICY, (run.tenant_id,)).fetchone()
        return Claim(run, None if plan is None else StoredPlan(*plan),
                     policy_of(None if policy is None else policy[0]), started)

    def _claim_in(self, conn: Connection, owner: str, lease_seconds: float, now: float,
                  tenant_id: str | None, after_tenant: str,
                  tenant_cap: int | None) -> tuple[RunRecord, bool] | None:
        """`claim_run` inside a transaction: (the run, True if it was queued) or None."""
        sql, params = _CONTINUING, {"now": now, "tenant": tenant_id}
        if tenant_id is not None:
            sql += " AND tenant_id = :tenant"
        found = conn.execute(
            f"{sql} ORDER BY wake_at LIMIT {_CANDIDATES}{self.skip_locked}", params)
        for tenant, run_id, leased, policy in found.fetchall():
            if leased or self._has_room(conn, tenant, _cap(policy, tenant_cap)):
                row = conn.execute(_TAKE_OVER, {
                    "owner": owner, "now": now, "seconds": lease_seconds,
                    "tenant": tenant, "run": run_id, "take_over_from": None}).fetchone()
                if row is not None:
                    return run_from_row(row), False
        started = self._claim_queued(conn, owner, now + lease_seconds, now, tenant_id,
                                     after_tenant, tenant_cap)
        return None if started is None else (started, True)

    def _claim_queued(self, conn: Connection, owner: str, until: float, now: float,
                      tenant_id: str | None, after: str, cap: int | None) -> RunRecord | None:
        """Start the oldest queued run of the first tenant after `after` (wrapping around
        once) that has room under `cap`; at most `_TENANT_TURNS` tenants, one index step
        each."""
        cursor, wrapped = after, after == ""
        for _ in range(_TENANT_TURNS):
            if tenant_id is not None:
                row = conn.execute(_OF_TENANT_QUEUED + self.skip_locked, (tenant_id,)).fetchone()
            else:
                row = conn.execute(_NEXT_QUEUED + self.skip_locked, (cursor,)).fetchone()
            if row is None and not wrapped:
                cursor, wrapped = "", True
                continue
            if row is None or (wrapped and after and row[0] > after):
                return None
            if self._has_room(conn, row[0], _cap(row[2], cap)):
                started = conn.execute(_START_QUEUED, (owner, until, now, *row[:2])).fetchone()
                return None if started is None else run_from_row(started)
            if tenant_id is not None:
                return None
            cursor = row[0]
        return None

    def _has_room(self, conn: Connection, tenant_id: str, cap: int | None) -> bool:
        """True if fewer than `cap` of the tenant's runs hold a lease (no cap: True);
        holds the tenant's lock until commit."""
        return cap is None or self._leased(conn, tenant_id) < cap

    def _leased(self, conn: Connection, tenant_id: str) -> int:
        """The tenant's runs under a lease, counted under the tenant's lock (held until
        commit, so no other claim or capped creation of the tenant counts meanwhile)."""
        self._lock_tenant(conn, tenant_id)
        running: int = conn.execute(_LEASED_COUNT, (tenant_id,)).fetchone()[0]
        return running

    def next_wake_at(self) -> float | None:
        """The earliest `wake_at` of any waiting run (an index look-up), or None: how long
        an idle worker may sleep before a timer is due."""
        rows = self._fetch(_NEXT_WAKE, ())
        return rows[0][0] if rows else None

    # --- waiting ---------------------------------------------------------------------------

    def wait_for_run(self, tenant_id: str, run_id: str, statuses: frozenset[str],
                     timeout: float) -> RunRecord | None:
        """The run once its status is one of `statuses`, or None after `timeout` seconds.
        `RunNotFound` for an unknown run. This version looks again after 10 ms, doubling
        the pause up to 0.5 s; a backend that can be told about changes listens instead."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            run = self._settled_run(tenant_id, run_id, statuses)
            left = deadline - time.monotonic()
            if run is not None:
                return run
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def _settled_run(self, tenant_id: str, run_id: str,
                     statuses: frozenset[str]) -> RunRecord | None:
        """One look of `wait_for_run` (each backend waits its own way between looks): the
        run if its status is one of `statuses` and no worker holds it. `RunNotFound` for an
        unknown run."""
        rows = self._fetch(q.GET_RUN, (tenant_id, run_id))
        if not rows:
            raise RunNotFound(run_id, tenant_id)
        run = run_from_row(rows[0])
        return run if run.status in statuses and run.lease_owner is None else None

    def wait_for_work(self, timeout: float) -> bool:
        """Sleep until work may have arrived or `timeout` passes; True if told of new work.
        This version only sleeps (polling); PostgreSQL listens for notifications."""
        time.sleep(timeout)
        return False
