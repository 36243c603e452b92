"""The statements only the PostgreSQL store sends: each does in one round trip what the
shared SQL (store.queries) does in several, with arrays, CTEs and row locks.
"""

from __future__ import annotations

import functools

from agentflow.store.queue import CONTINUING
from agentflow.store.rows import RUN_COLUMNS

# The one-statement write of `write_group`: the runs and their entries come as two JSON
# arrays of objects (`RUN_KEYS`, `ENTRY_KEYS`), so it is one statement whatever the sizes,
# prepared once per connection, and its parameters are two strings that `json.dumps`
# writes in C (psycopg's arrays of 20 Python lists cost more CPU than the rest of the
# write). A run that does not end has no `status` (NULL). Each run's row is share-locked,
# in (tenant, run) order, only if its owner holds the lease; its entries follow its last
# seq; a run that ends is updated as FINISH does and its listeners are notified (on
# commit). Returns (tenant, run) of each run held.
RUN_KEYS = ("number", "tenant_id", "run_id", "owner", "status", "outputs", "error", "wake_at",
            "at", "channel", "payload")
ENTRY_KEYS = ("number", "n", "key", "kind", "attempt", "tool", "args_hash", "data", "at")
WRITE_RUNS = (
    "WITH batch AS (SELECT * FROM json_to_recordset(?::json) AS b (number int,"
    " tenant_id text, run_id text, owner text, status text, outputs text, error text,"
    " wake_at float8, at float8, channel text, payload text)),"
    " held AS (SELECT batch.number, runs.tenant_id, runs.run_id FROM runs JOIN batch"
    " ON runs.tenant_id = batch.tenant_id AND runs.run_id = batch.run_id"
    " AND runs.lease_owner = batch.owner"
    " ORDER BY runs.tenant_id, runs.run_id FOR SHARE OF runs),"
    " last AS (SELECT held.*, (SELECT COALESCE(MAX(seq), 0) FROM journal"
    " WHERE journal.tenant_id = held.tenant_id AND journal.run_id = held.run_id) AS seq"
    " FROM held),"
    " added AS (INSERT INTO journal (tenant_id, run_id, seq, key, kind, attempt, tool,"
    " args_hash, data, at) SELECT last.tenant_id, last.run_id, last.seq + v.n, v.key, v.kind,"
    " v.attempt, v.tool, v.args_hash, v.data, v.at FROM last JOIN"
    " json_to_recordset(?::json) AS v (number int, n int, key text, kind text, attempt int,"
    " tool text, args_hash text, data text, at float8) ON v.number = last.number),"
    " ended AS (UPDATE runs SET status = batch.status, outputs = batch.outputs,"
    " error = batch.error, wake_at = batch.wake_at, updated_at = batch.at,"
    " lease_owner = NULL, lease_expires_at = NULL FROM held JOIN batch USING (number)"
    " WHERE runs.tenant_id = held.tenant_id AND runs.run_id = held.run_id"
    " AND batch.status IS NOT NULL RETURNING pg_notify(batch.channel, batch.payload))"
    " SELECT tenant_id, run_id FROM held"
)


# Runnable runs in claim order (see store.queue): a continuing one, else the oldest queued
# run of the first tenant after :after, else (wrapping around) of the first tenant at or
# before it. Each branch is one index step that passes over rows another claim holds.
_CONTINUING = (
    "SELECT tenant_id, run_id, status, lease_owner IS NOT NULL AS leased FROM runs"
    f" WHERE {CONTINUING}{{of_tenant}} ORDER BY wake_at LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_QUEUED = (
    "SELECT tenant_id, run_id, status, FALSE AS leased FROM runs WHERE status = 'queued'"
    " AND {where} ORDER BY tenant_id, wake_at LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_CLAIMED = ", ".join(f"claimed.{column.strip()}" for column in RUN_COLUMNS.split(","))


@functools.cache
def claim_statement(of_tenant: bool) -> str:
    """The one-statement claim: the first runnable run (of :tenant only, if `of_tenant`)
    is leased to :owner when it needs no room (a take-over) or its tenant's policy names
    no cap (the caller gives no cap of its own); the row returned holds the claimed run
    (NULLs when its tenant may be capped: the caller then claims the long way), whether
    it was queued, its plan and its tenant's policy. No row: nothing is runnable."""
    where = "tenant_id = :tenant" if of_tenant else "tenant_id > :after"
    branches = {
        "continuing": _CONTINUING.format(of_tenant=" AND tenant_id = :tenant" if of_tenant
                                         else ""),
        "queued": _QUEUED.format(where=where),
        **({} if of_tenant else {"wrapped": _QUEUED.format(where="tenant_id <= :after")}),
    }
    union = " UNION ALL ".join(f"SELECT * FROM {name}" for name in branches)
    # A locking SELECT cannot be a branch of a UNION, but a WITH query can; each is read
    # only as far as the LIMIT needs (the first that finds a run ends the claim's look).
    return (
        f"WITH {', '.join(f'{name} AS ({sql})' for name, sql in branches.items())},"
        f" pick AS MATERIALIZED ({union} LIMIT 1),"
        " policy AS (SELECT policies.body FROM policies JOIN pick USING (tenant_id)),"
        " claimed AS (UPDATE runs SET status = 'running', lease_owner = :owner,"
        " lease_expires_at = :now + :seconds, updated_at = CASE WHEN pick.status = 'queued'"
        " THEN :now ELSE runs.updated_at END FROM pick"
        " WHERE runs.tenant_id = pick.tenant_id AND runs.run_id = pick.run_id"
        " AND (pick.leased OR NOT EXISTS (SELECT 1 FROM policy"
        " WHERE strpos(policy.body, '\"max_concurrent_runs\"') > 0))"
        f" RETURNING runs.*)"
        f" SELECT {_CLAIMED}, pick.status = 'queued', plans.kind, plans.body,"
        " plans.created_at, (SELECT body FROM policy) FROM pick LEFT JOIN claimed ON TRUE"
        " LEFT JOIN plans ON plans.tenant_id = claimed.tenant_id"
        " AND plans.plan_hash = claimed.plan_hash"
    )
