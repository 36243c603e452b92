"""What a SQL store keeps for tenants as a platform: each tenant's plan registry, and the
retention that deletes finished runs.

Registry. A tenant's plan name has versions; a version is the hash of a plan the `plans`
table keeps (the hash runs are pinned by). Versions are numbered in the order they were
put, and the highest number is the current one; putting an older content again makes it
current again. A version is deleted only while no unfinished run is pinned to it; the plan
itself stays while any run (finished or not) or another name refers to it.

Policies and charges. A tenant's policy is one JSON document. A charge is what one call
attempt reported spending (`ctx.charge`), kept as that attempt's running total, so writing
it again is idempotent and a run's spending is the sum of its rows.

Retention. `prune_runs` deletes finished runs with their journal, waits and events in
batches of bounded size, each one short write transaction, so other writers wait at most
one batch; a plan goes with the last run and registry entry that referred to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from agentflow.errors import PlanInUse, PlanNotFound
from agentflow.store import queries as q
from agentflow.store.base import FINISHED_STATUSES, PlanName, RunRecord, StoredPlan
from agentflow.store.queue import (
    _LEASED_COUNT,
    GET_POLICY,
    Connection,
    RunQueue,
    policy_of,
    retried,
)
from agentflow.store.rows import RUN_COLUMNS, dumps, run_from_row

_CURRENT = (
    "SELECT plan_hash, version FROM plan_versions WHERE tenant_id = ? AND name = ?"
    " ORDER BY version DESC, created_at DESC LIMIT 1"
)
_PUT_VERSION = (
    "INSERT INTO plan_versions (tenant_id, name, plan_hash, version, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name, plan_hash) DO UPDATE"
    " SET version = excluded.version, created_at = excluded.created_at"
)
_VERSIONS = (
    "SELECT plan_hash, created_at FROM plan_versions WHERE tenant_id = ? AND name = ?"
    " ORDER BY version DESC, created_at DESC"
)
_HAS_VERSION = (
    "SELECT 1 FROM plan_versions WHERE tenant_id = ? AND name = ? AND plan_hash = ?"
)
_NAMES = (
    "SELECT p.name, p.plan_hash, p.created_at, (SELECT COUNT(*) FROM plan_versions AS c"
    " WHERE c.tenant_id = p.tenant_id AND c.name = p.name) FROM plan_versions AS p"
    " WHERE p.tenant_id = ? AND p.version = (SELECT MAX(version) FROM plan_versions AS m"
    " WHERE m.tenant_id = p.tenant_id AND m.name = p.name) ORDER BY p.name"
)
_UNFINISHED_RUN_OF_PLAN = (
    "SELECT run_id FROM runs WHERE tenant_id = ? AND plan_hash = ?"
    " AND status NOT IN ('completed', 'failed', 'cancelled') LIMIT 1"
)
_DELETE_VERSION = "DELETE FROM plan_versions WHERE tenant_id = ? AND name = ? AND plan_hash = ?"
# A plan no run and no registry entry refers to any more.
_DELETE_UNREFERENCED_PLAN = (
    "DELETE FROM plans WHERE tenant_id = ? AND plan_hash = ?"
    " AND NOT EXISTS (SELECT 1 FROM runs WHERE tenant_id = ? AND plan_hash = ?)"
    " AND NOT EXISTS (SELECT 1 FROM plan_versions WHERE tenant_id = ? AND plan_hash = ?)"
)
_DELETE_RUN_ROWS = tuple(
    f"DELETE FROM {table} WHERE tenant_id = ? AND run_id = ?"
    for table in ("journal", "waits", "events", "charges", "traces", "runs")
)
_PUT_POLICY = (
    "INSERT INTO policies (tenant_id, body, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (tenant_id) DO UPDATE SET body = excluded.body,"
    " updated_at = excluded.updated_at"
)
# The run (NULLs when there is none) beside its tenant's policy (NULL when unset).
_RUN_AND_POLICY = (
    f"SELECT (SELECT body FROM policies WHERE tenant_id = ?), r.* FROM (SELECT 1) AS one"
    f" LEFT JOIN (SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND run_id = ?) AS r"
    " ON 1 = 1"
)
_PUT_CHARGE = (
    "INSERT INTO charges (tenant_id, run_id, key, attempt, tokens, cost_usd, at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, run_id, key, attempt) DO UPDATE"
    " SET tokens = excluded.tokens, cost_usd = excluded.cost_usd, at = excluded.at"
)
_SUM_CHARGES = (
    "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0) FROM charges"
    " WHERE tenant_id = ? AND run_id = ?"
)


class TenantTables(RunQueue):
    """The plan registry and retention, over the hooks a SQL backend supplies."""

    # --- plan registry ---------------------------------------------------------------------

    @retried
    def put_plan_version(self, tenant_id: str, name: str, plan: StoredPlan) -> bool:
        """In one write transaction: keep `plan` (unless the tenant has it) and make it the
        current version of `name`. False, and nothing changed, if it already is."""
        if plan.tenant_id != tenant_id:
            raise ValueError(f"plan {name!r} of tenant {tenant_id!r} cannot be a plan of "
                             f"tenant {plan.tenant_id!r}")
        now = time.time()
        with self._transaction() as conn:
            current = conn.execute(_CURRENT, (tenant_id, name)).fetchone()
            if current is not None and current[0] == plan.plan_hash:
                return False
            conn.execute(q.PUT_PLAN, (tenant_id, plan.plan_hash, plan.kind, plan.body,
                                      plan.created_at or now))
            number = 1 if current is None else current[1] + 1
            conn.execute(_PUT_VERSION, (tenant_id, name, plan.plan_hash, number, now))
        return True

    def current_plan_version(self, tenant_id: str, name: str) -> str | None:
        """The hash of the current version of the tenant's plan `name`, or None."""
        rows = self._fetch(_CURRENT, (tenant_id, name))
        return str(rows[0][0]) if rows else None

    def has_plan_version(self, tenant_id: str, name: str, plan_hash: str) -> bool:
        """Whether `plan_hash` is a version of the tenant's plan `name`."""
        return bool(self._fetch(_HAS_VERSION, (tenant_id, name, plan_hash)))

    def plan_versions(self, tenant_id: str, name: str) -> list[tuple[str, float]]:
        """(hash, created_at) of each version of the tenant's plan `name`, newest first."""
        return [(str(h), float(at)) for h, at in self._fetch(_VERSIONS, (tenant_id, name))]

    def plan_names(self, tenant_id: str) -> list[PlanName]:
        """The tenant's registered plan names, in name order, with their current version."""
        return [PlanName(str(n), str(h), float(at), int(c))
                for n, h, at, c in self._fetch(_NAMES, (tenant_id,))]

    @retried
    def delete_plan_version(self, tenant_id: str, name: str, plan_hash: str) -> None:
        """In one write transaction: remove `plan_hash` from the versions of `name`, and the
        plan too if nothing refers to it any more. `PlanNotFound` if it is no version of
        `name`; `PlanInUse` (nothing changed) while an unfinished run is pinned to it."""
        with self._transaction() as conn:
            if conn.execute(_HAS_VERSION, (tenant_id, name, plan_hash)).fetchone() is None:
                raise PlanNotFound(name, tenant_id, plan_hash)
            row = conn.execute(_UNFINISHED_RUN_OF_PLAN + self.row_lock,
                               (tenant_id, plan_hash)).fetchone()
            if row is not None:
                raise PlanInUse(name, plan_hash, str(row[0]))
            conn.execute(_DELETE_VERSION, (tenant_id, name, plan_hash))
            self._drop_unreferenced_plans(conn, tenant_id, [plan_hash])

    def _drop_unreferenced_plans(self, conn: Connection, tenant_id: str,
                                 hashes: Iterable[str]) -> None:
        for plan_hash in set(hashes):
            conn.execute(_DELETE_UNREFERENCED_PLAN, (tenant_id, plan_hash) * 3)

    # --- policies and charges ---------------------------------------------------------------

    def put_policy(self, tenant_id: str, policy: dict[str, Any]) -> None:
        """Set the tenant's policy (one statement; the last write wins)."""
        self._update(_PUT_POLICY, (tenant_id, dumps(policy, "the policy"), time.time()))

    def get_policy(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's policy, or None if it never set one."""
        rows = self._fetch(GET_POLICY, (tenant_id,))
        return policy_of(rows[0][0] if rows else None)

    def get_run_and_policy(
        self, tenant_id: str, run_id: str,
    ) -> tuple[RunRecord | None, dict[str, Any] | None]:
        """(the tenant's run or None, its policy or None), in one statement."""
        policy, *run = self._fetch(_RUN_AND_POLICY, (tenant_id, tenant_id, run_id))[0]
        return (None if run[0] is None else run_from_row(tuple(run)),
                policy_of(policy))

    def put_charge(self, tenant_id: str, run_id: str, key: str, attempt: int, tokens: int,
                   cost_usd: float) -> None:
        """Record the running total one call attempt spent (one statement, idempotent)."""
        self._update(_PUT_CHARGE, (tenant_id, run_id, key, attempt, tokens, cost_usd,
                                   time.time()))

    def charged(self, tenant_id: str, run_id: str) -> tuple[int, float]:
        """(tokens, cost in USD) the run's calls reported spending."""
        tokens, cost = self._fetch(_SUM_CHARGES, (tenant_id, run_id))[0]
        return int(tokens), float(cost)

    def count_leased(self, tenant_id: str) -> int:
        """How many of the tenant's runs hold a lease (see `claim_run`'s cap)."""
        count: int = self._fetch(_LEASED_COUNT, (tenant_id,))[0][0]
        return count

    # --- retention -------------------------------------------------------------------------

    @retried
    def prune_runs(self, finished_before: float, statuses: Iterable[str], *, limit: int = 500,
                   tenant_id: str | None = None, dry_run: bool = False,
                   ) -> list[tuple[str, str]]:
        """In one write transaction: delete at most `limit` runs (oldest first) whose status
        is one of `statuses` (finished ones only) and that last changed before
        `finished_before`, with their journal, waits and events, and the plans no run or
        registry entry refers to any more; of one tenant or of all. Returns the (tenant,
        run id) of each; `dry_run` returns them and deletes nothing."""
        chosen = tuple(sorted(set(statuses)))
        if not chosen or not set(chosen) <= FINISHED_STATUSES:
            raise ValueError(f"prune deletes finished runs: statuses must be among "
                             f"{', '.join(sorted(FINISHED_STATUSES))}, not {list(chosen)}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, not {limit!r}")
        marks = ", ".join("?" for _ in chosen)
        sql = (f"SELECT tenant_id, run_id, plan_hash FROM runs WHERE status IN ({marks})"
               " AND updated_at < ?")
        params: tuple[object, ...] = (*chosen, finished_before)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params += (tenant_id,)
        sql += f" ORDER BY updated_at LIMIT {limit}"
        if dry_run:
            return [(str(t), str(r)) for t, r, _ in self._fetch(sql, params)]
        with self._transaction() as conn:
            found = conn.execute(sql + self.skip_locked, params).fetchall()
            # in (tenant, run) order, as group commits lock runs and their tenant's counter
            for tenant, run_id, _ in sorted(found):
                for statement in _DELETE_RUN_ROWS:
                    conn.execute(statement, (tenant, run_id))
            by_tenant: dict[str, list[str]] = {}
            for tenant, _, plan_hash in found:
                by_tenant.setdefault(tenant, []).append(plan_hash)
            for tenant, hashes in by_tenant.items():
                self._drop_unreferenced_plans(conn, tenant, hashes)
        self._forget_runs([(str(t), str(r)) for t, r, _ in found])
        return [(str(t), str(r)) for t, r, _ in found]

    def _forget_runs(self, runs: list[tuple[str, str]]) -> None:
        """Drop what the store object remembers about deleted runs (a backend's caches)."""
