"""The SQL both backends run, as constant text (so statement caches always hit).

Written once in a portable subset: `?` and `:name` parameters (the PostgreSQL store
rewrites them to psycopg's), `ON CONFLICT`, `CASE` instead of two-argument `MIN`. A
`status || ''` term compares the status without letting SQLite choose an index on it: without
statistics SQLite would otherwise range over all of a tenant's waits with that status
(`waits_by_status`) instead of the run's own few rows by primary key, and get slower with
every waiting run. Statements that check a run before writing read it with the
backend's row lock appended (`FOR UPDATE` on PostgreSQL; SQLite's write transaction
already holds the whole file).
"""

from __future__ import annotations

import functools

from agentflow.store.base import WAIT_OUTCOMES
from agentflow.store.rows import EVENT_COLUMNS, JOURNAL_COLUMNS, RUN_COLUMNS, WAIT_COLUMNS

PUT_PLAN = (
    "INSERT INTO plans (tenant_id, plan_hash, kind, body, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
GET_PLAN = (
    "SELECT tenant_id, plan_hash, kind, body, created_at FROM plans"
    " WHERE tenant_id = ? AND plan_hash = ?"
)
INSERT_RUN = (
    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND run_id = ?"
MAX_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE tenant_id = ? AND run_id = ?"
READ_JOURNAL = (
    f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE tenant_id = ? AND run_id = ? ORDER BY seq"
)
READ_JOURNAL_PAGE = (
    f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE tenant_id = ? AND run_id = ? AND seq > ?"
    " ORDER BY seq LIMIT ?"
)
RUN_JOURNAL_BYTES = (
    "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM journal WHERE tenant_id = ? AND run_id = ?"
)
TENANT_JOURNAL_BYTES = (
    "SELECT COALESCE(SUM(journal_bytes), 0) FROM tenant_usage WHERE tenant_id = ?"
)
DUE_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'waiting' AND wake_at <= ?"
    " ORDER BY wake_at LIMIT ?"
)
DUE_RUNS_OF_TENANT = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'waiting' AND wake_at <= ?"
    " AND tenant_id = ? ORDER BY wake_at LIMIT ?"
)
ORPHANED_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running'"
    " AND (lease_owner IS NULL OR lease_expires_at < ?) AND (wake_at IS NULL OR wake_at <= ?)"
)
ACQUIRE = (
    "UPDATE runs SET status = 'running', lease_owner = :owner,"
    " lease_expires_at = :now + :seconds"
    " WHERE tenant_id = :tenant AND run_id = :run"
    " AND status NOT IN ('completed', 'failed', 'cancelled')"
    " AND (lease_owner IS NULL OR lease_expires_at < :now OR lease_owner = :owner"
    " OR lease_owner = :take_over_from)"
)
RENEW = (
    "UPDATE runs SET lease_expires_at = ? + ? WHERE tenant_id = ? AND run_id = ?"
    " AND lease_owner = ?"
)
RENEW_MANY_CHUNK = 256
"""Leases one `renew_many` statement renews (3 parameters each, under SQLite's old 999)."""


@functools.cache
def renew_many(n: int) -> str:
    """RENEW for `n` (tenant, run, owner) triples at once, returning those it renewed. A
    join with the triples, so each is a primary-key look-up on both backends (SQLite plans
    `(tenant_id, run_id, lease_owner) IN (VALUES ...)` as a scan of `runs`). A triple of
    NULLs matches no run (callers pad to a few statement texts with them)."""
    triples = ", ".join(["(?, ?, ?)"] * n)
    return (f"UPDATE runs SET lease_expires_at = ? + ? FROM (VALUES {triples}) AS v"
            " WHERE runs.tenant_id = v.column1 AND runs.run_id = v.column2"
            " AND runs.lease_owner = v.column3"
            " RETURNING runs.tenant_id, runs.run_id, runs.lease_owner")


FINISH = (
    "UPDATE runs SET status = ?, outputs = ?, error = ?, wake_at = ?, updated_at = ?,"
    " lease_owner = NULL, lease_expires_at = NULL"
    " WHERE tenant_id = ? AND run_id = ? AND lease_owner = ?"
)
REPIN_RUN = "UPDATE runs SET plan_hash = ?, updated_at = ? WHERE tenant_id = ? AND run_id = ?"
REPIN_WAITS = "UPDATE waits SET plan_hash = ? WHERE tenant_id = ? AND run_id = ?"
RUN_STATUS = "SELECT status FROM runs WHERE tenant_id = ? AND run_id = ?"
LEASED = "SELECT 1 FROM runs WHERE tenant_id = ? AND run_id = ? AND lease_owner = ?"
_OUTCOMES = ", ".join(f"'{status}'" for status in sorted(WAIT_OUTCOMES))
# A waiting run with something to react to is due now (`wake_at` only ever moves earlier):
# an outcome the worker has not consumed, or an unconsumed event a pending wait is named for.
WAKE_IF_ARRIVED = (
    "UPDATE runs SET wake_at = CASE WHEN wake_at IS NULL OR wake_at > :now THEN :now"
    " ELSE wake_at END"
    " WHERE tenant_id = :tenant AND run_id = :run AND status = 'waiting' AND ("
    " EXISTS (SELECT 1 FROM waits WHERE tenant_id = :tenant AND run_id = :run"
    f" AND consumed = 0 AND status || '' IN ({_OUTCOMES}))"
    " OR EXISTS (SELECT 1 FROM waits AS w JOIN events AS e ON e.tenant_id = w.tenant_id"
    " AND e.run_id = w.run_id AND e.name = w.event_name WHERE w.tenant_id = :tenant"
    " AND w.run_id = :run AND w.kind = 'event' AND w.status || '' = 'pending'"
    " AND e.consumed_by IS NULL))"
)
# An existing wait is updated only from "pending", to its own status, or to "stale"; else
# the statement changes no row and `put_waits` raises `WaitConflict`.
PUT_WAIT = (
    f"INSERT INTO waits ({WAIT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, run_id, wait_id) DO UPDATE SET status = excluded.status,"
    " decision = excluded.decision, consumed = excluded.consumed,"
    " decided_at = excluded.decided_at, expires_at = excluded.expires_at"
    " WHERE waits.status IN ('pending', excluded.status) OR excluded.status = 'stale'"
)
GET_WAIT = f"SELECT {WAIT_COLUMNS} FROM waits WHERE tenant_id = ? AND run_id = ? AND wait_id = ?"
DECIDE = (
    "UPDATE waits SET status = ?, decision = ?, decided_at = ?"
    " WHERE tenant_id = ? AND run_id = ? AND wait_id = ?"
)
EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = ? AND run_id = ?"
LIST_EVENTS = f"{EVENTS} ORDER BY seq"
EVENT_TAKEN_BY = f"{EVENTS} AND consumed_by = ? ORDER BY seq LIMIT 1"
OLDEST_EVENT = f"{EVENTS} AND consumed_by IS NULL AND name = ? ORDER BY seq LIMIT 1"
TAKE_EVENT = (
    "UPDATE events SET consumed_by = ?, consumed_at = ? WHERE tenant_id = ? AND run_id = ?"
    " AND seq = ?"
)
MAX_EVENT_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ? AND run_id = ?"
SEND_EVENT = (
    "INSERT INTO events (tenant_id, run_id, seq, name, payload, sent_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
CANCEL = (
    "UPDATE runs SET status = 'cancelled', error = ?, wake_at = NULL, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = ? WHERE tenant_id = ? AND run_id = ?"
)
CANCEL_WAITS = (
    "UPDATE waits SET status = 'cancelled', decision = ?, decided_at = ?"
    " WHERE tenant_id = ? AND run_id = ? AND status || '' = 'pending'"
)

TOKEN_COLUMNS = "token_hash, token_id, tenant_id, role, name, created_at, revoked_at"
PUT_TOKEN = f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
FIND_TOKEN = f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?"
ALL_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id"
TENANT_TOKENS = (
    f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE tenant_id = ? ORDER BY created_at, token_id"
)
REVOKE_TOKEN = "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL"
PUT_SECRET = (
    "INSERT INTO secrets (tenant_id, name, value, created_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
GET_SECRET = "SELECT value FROM secrets WHERE tenant_id = ? AND name = ?"
GET_TRACE = "SELECT traceparent FROM traces WHERE tenant_id = ? AND run_id = ?"
PUT_TRACE = (
    "INSERT INTO traces (tenant_id, run_id, traceparent, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, run_id) DO UPDATE SET traceparent = excluded.traceparent,"
    " updated_at = excluded.updated_at"
)
