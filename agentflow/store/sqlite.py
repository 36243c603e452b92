"""The embedded store: one SQLite file in WAL mode, shareable by the threads of a process
and by several processes on one machine.

Durability. `"full"` (`synchronous=FULL`, the default) survives a crash of the process and
a power loss: every commit is synced to disk before the method returns. `"normal"`
(`synchronous=NORMAL`) survives a crash of the process (every method that writes has
committed when it returns) and is several times faster per commit; on power loss the last
commits may be lost, but the file is never corrupted.

Concurrency. One connection per store object, serialised by a lock. A write of several
statements runs in one `BEGIN IMMEDIATE` transaction, so a lease check and the writes it
guards are one write transaction; a single-statement write (a lease compare-and-set, a
fenced journal append) is atomic on its own. Other processes wait for the write lock up to
`busy_timeout` seconds; readers never block in WAL mode.

Hot path. `append_journal` is usually one autocommit `INSERT ... SELECT` statement that
writes its rows only if the run's lease owner matches (the fence), with `seq` numbers the
store object remembers per run; so a step costs about one bare `INSERT` + `COMMIT` (see
`bench/raw_sqlite.py`).

Waits and events. A waiting run is its `runs` row (found by the `runs_due` index once its
`wake_at` comes), its journal, and a lean `waits` row per pending approval, event or timer;
plans are shared by hash, never copied per run. Decisions and events are small write
transactions that set `wake_at = now` on the run they concern.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal, get_args

from sqlite_utils import Database

from agentflow.errors import (
    AlreadyDecided,
    DecisionExpired,
    LeaseLost,
    PendingNotFound,
    RunFinished,
    RunNotFound,
    StaleDecision,
    StoreError,
    WaitConflict,
)
from agentflow.store.base import (
    FINISHED_STATUSES,
    WAIT_OUTCOMES,
    EventRecord,
    JournalEntry,
    RunRecord,
    RunStatus,
    StoredPlan,
    WaitKind,
    WaitRecord,
    WaitStatus,
)

Durability = Literal["normal", "full"]

_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}
_STATUSES = frozenset({"running", "waiting", "completed", "failed", "cancelled"})
MEMORY_REJECTED = (
    "an in-memory SQLite database is not durable (runs would vanish with the process); "
    "give a file path such as sqlite:///agentflow.db"
)


def connect(
    path: str, durability: Durability = "full", busy_timeout: float = 30.0
) -> sqlite3.Connection:
    """Open `path` in WAL mode with the PRAGMAs of `durability`, in autocommit mode
    (`isolation_level=None`: transactions are explicit) and usable from any thread.

    `SQLiteStore` and the raw-SQLite benchmark baseline both open their files here, so they
    always run with the same settings."""
    if durability not in _SYNCHRONOUS:
        raise StoreError(f"durability must be 'normal' or 'full', not {durability!r}")
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open SQLite store at {path}: {exc}") from exc
    try:
        mode = _set_wal(conn, busy_timeout)
        if mode != "wal":
            raise StoreError(
                f"cannot use WAL mode for {path} (got journal_mode={mode}); the store needs "
                "a local filesystem"
            )
        conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
        if durability == "full":
            # macOS only flushes the drive's cache with F_FULLFSYNC; no effect elsewhere.
            conn.execute("PRAGMA fullfsync=ON")
            conn.execute("PRAGMA checkpoint_fullfsync=ON")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open SQLite store at {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _set_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL mode. Two connections opening a new file at once can get "database is
    locked" here without SQLite's busy handler being consulted, so wait and retry."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode: str = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


# --- schema -------------------------------------------------------------------------------

def _schema_v1(db: Database) -> None:
    """Plans, runs and the journal; every row carries its tenant id."""
    db.table("plans").create(
        {"tenant_id": str, "plan_hash": str, "kind": str, "body": str, "created_at": float},
        pk=("tenant_id", "plan_hash"),
        not_null={"tenant_id", "plan_hash", "kind", "body", "created_at"},
    )
    runs = db.table("runs").create(
        {
            "tenant_id": str, "run_id": str, "plan_hash": str, "status": str,
            "inputs": str, "outputs": str, "error": str,
            "created_at": float, "updated_at": float, "wake_at": float,
            "lease_owner": str, "lease_expires_at": float, "options": str,
        },
        pk=("tenant_id", "run_id"),
        not_null={"tenant_id", "run_id", "plan_hash", "status", "inputs", "outputs",
                  "created_at", "updated_at", "options"},
    )
    runs.create_index(["status", "wake_at"], index_name="runs_due")
    runs.create_index(["tenant_id", "status", "created_at"], index_name="runs_by_status")
    runs.create_index(["tenant_id", "created_at"], index_name="runs_by_created")
    db.table("journal").create(
        {
            "tenant_id": str, "run_id": str, "seq": int, "key": str, "kind": str,
            "attempt": int, "tool": str, "args_hash": str, "data": str, "at": float,
        },
        pk=("tenant_id", "run_id", "seq"),
        not_null={"tenant_id", "run_id", "seq", "key", "kind", "attempt", "data", "at"},
    )


def _schema_v2(db: Database) -> None:
    """Waits (approvals, events, timers) and the events sent to runs, tenant first."""
    waits = db.table("waits").create(
        {
            "tenant_id": str, "run_id": str, "wait_id": str, "key": str, "kind": str,
            "plan_hash": str, "step_id": str, "tool": str, "args": str, "args_hash": str,
            "prompt": str, "approvers": str, "event_name": str, "expires_at": float,
            "on_expiry": str, "status": str, "decision": str, "consumed": int,
            "created_at": float, "decided_at": float, "args_schema": str,
        },
        pk=("tenant_id", "run_id", "wait_id"),
        not_null={"tenant_id", "run_id", "wait_id", "key", "kind", "plan_hash", "status",
                  "consumed", "created_at"},
    )
    waits.create_index(["tenant_id", "status", "created_at"], index_name="waits_by_status")
    db.table("events").create(
        {
            "tenant_id": str, "run_id": str, "seq": int, "name": str, "payload": str,
            "sent_at": float, "consumed_by": str, "consumed_at": float,
        },
        pk=("tenant_id", "run_id", "seq"),
        not_null={"tenant_id", "run_id", "seq", "name", "payload", "sent_at"},
    )


# Migration i takes the schema from version i to i + 1. Append, never edit.
_MIGRATIONS: tuple[Callable[[Database], None], ...] = (_schema_v1, _schema_v2)
SCHEMA_VERSION = len(_MIGRATIONS)


def _stored_version(db: Database, path: str) -> int:
    """The file's schema version (0: new file); `StoreError` if newer than this code's."""
    if not db.table("meta").exists():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite store at {path} has schema version {version}, newer than the "
            f"{SCHEMA_VERSION} this agentflow knows; upgrade agentflow"
        )
    return version


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to `SCHEMA_VERSION`, in one write transaction (safe when several
    processes open a new file at once: the first creates, the others find it done)."""
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    if _stored_version(db, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        for migration in _MIGRATIONS[_stored_version(db, path):]:
            migration(db)
        db.table("meta").upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)},
                                pk="key")
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


# --- SQL on the hot paths (constant text, so sqlite3's statement cache always hits) -------

_RUN_COLUMNS = (
    "tenant_id, run_id, plan_hash, status, inputs, outputs, error, created_at, updated_at, "
    "wake_at, lease_owner, lease_expires_at, options"
)
_PUT_PLAN = (
    "INSERT OR IGNORE INTO plans (tenant_id, plan_hash, kind, body, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND run_id = ?"
_MAX_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE tenant_id = ? AND run_id = ?"
# Entries per INSERT statement: 3 + 8 * 100 parameters stays under SQLite's historic 999.
_CHUNK = 100
# Runs whose next seq a store object remembers (see `SQLiteStore.append_journal`).
_SEQ_CACHE_SIZE = 4096


@functools.cache
def _append_sql(n: int) -> str:
    """INSERT of `n` entries, fenced: it writes no row unless ?3 holds the run's lease.
    Parameters: tenant, run, owner, then per entry seq, key, kind, attempt, tool, args_hash,
    data, at. One statement, so atomic on its own and never reading `journal` (which would
    make SQLite buffer the rows in a temporary table)."""
    values = ", ".join(
        "(" + ", ".join(f"?{4 + 8 * i + j}" for j in range(8)) + ")" for i in range(n)
    )
    return (
        "INSERT INTO journal (tenant_id, run_id, seq, key, kind, attempt, tool, args_hash,"
        f" data, at) SELECT ?1, ?2, v.* FROM (VALUES {values}) AS v WHERE EXISTS"
        " (SELECT 1 FROM runs WHERE tenant_id = ?1 AND run_id = ?2 AND lease_owner = ?3)"
    )


_READ_JOURNAL = (
    "SELECT key, kind, data, attempt, tool, args_hash, at, seq FROM journal"
    " WHERE tenant_id = ? AND run_id = ? ORDER BY seq"
)
_ACQUIRE = (
    "UPDATE runs SET lease_owner = :owner, lease_expires_at = :now + :seconds"
    " WHERE tenant_id = :tenant AND run_id = :run"
    " AND status NOT IN ('completed', 'failed', 'cancelled')"
    " AND (lease_owner IS NULL OR lease_expires_at < :now OR lease_owner = :owner"
    " OR lease_owner = :take_over_from)"
)
_RENEW = (
    "UPDATE runs SET lease_expires_at = ? + ? WHERE tenant_id = ? AND run_id = ?"
    " AND lease_owner = ?"
)
_FINISH = (
    "UPDATE runs SET status = ?, outputs = ?, error = ?, wake_at = ?, updated_at = ?,"
    " lease_owner = NULL, lease_expires_at = NULL"
    " WHERE tenant_id = ? AND run_id = ? AND lease_owner = ?"
)


_REPIN_RUN = "UPDATE runs SET plan_hash = ?, updated_at = ? WHERE tenant_id = ? AND run_id = ?"
_REPIN_WAITS = "UPDATE waits SET plan_hash = ? WHERE tenant_id = ? AND run_id = ?"
_RUN_STATUS = "SELECT status FROM runs WHERE tenant_id = ? AND run_id = ?"
_LEASED = "SELECT 1 FROM runs WHERE tenant_id = ? AND run_id = ? AND lease_owner = ?"
_OUTCOMES = ", ".join(f"'{status}'" for status in sorted(WAIT_OUTCOMES))
# A waiting run with something to react to is due now (`wake_at` only ever moves earlier):
# an outcome the worker has not consumed, or an unconsumed event a pending wait is named for.
# A unary `+` on a status keeps it from choosing an index: without statistics SQLite would
# otherwise range over all of the tenant's waits with that status (`waits_by_status`)
# instead of the run's own few rows by primary key, and get slower with every waiting run.
_WAKE_IF_ARRIVED = (
    "UPDATE runs SET wake_at = MIN(COALESCE(wake_at, :now), :now)"
    " WHERE tenant_id = :tenant AND run_id = :run AND status = 'waiting' AND ("
    " EXISTS (SELECT 1 FROM waits WHERE tenant_id = :tenant AND run_id = :run"
    f" AND consumed = 0 AND +status IN ({_OUTCOMES}))"
    " OR EXISTS (SELECT 1 FROM waits AS w JOIN events AS e ON e.tenant_id = w.tenant_id"
    " AND e.run_id = w.run_id AND e.name = w.event_name WHERE w.tenant_id = :tenant"
    " AND w.run_id = :run AND w.kind = 'event' AND +w.status = 'pending'"
    " AND e.consumed_by IS NULL))"
)
_WAIT_COLUMNS = (
    "tenant_id, run_id, wait_id, key, kind, plan_hash, step_id, tool, args, args_hash, prompt,"
    " approvers, event_name, expires_at, on_expiry, status, decision, consumed, created_at,"
    " decided_at, args_schema"
)
# An existing wait is updated only from "pending", to its own status, or to "stale"; else
# the statement changes no row and `put_waits` raises `WaitConflict`.
_PUT_WAIT = (
    f"INSERT INTO waits ({_WAIT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, run_id, wait_id) DO UPDATE SET status = excluded.status,"
    " decision = excluded.decision, consumed = excluded.consumed,"
    " decided_at = excluded.decided_at, expires_at = excluded.expires_at"
    " WHERE waits.status IN ('pending', excluded.status) OR excluded.status = 'stale'"
)
_GET_WAIT = (
    f"SELECT {_WAIT_COLUMNS} FROM waits WHERE tenant_id = ? AND run_id = ? AND wait_id = ?"
)
_DECIDE = (
    "UPDATE waits SET status = ?, decision = ?, decided_at = ?"
    " WHERE tenant_id = ? AND run_id = ? AND wait_id = ?"
)
_EVENT_COLUMNS = "seq, name, payload, sent_at, consumed_by, consumed_at"
_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM events WHERE tenant_id = ? AND run_id = ?"
_EVENT_TAKEN_BY = f"{_EVENTS} AND consumed_by = ? ORDER BY seq LIMIT 1"
_OLDEST_EVENT = f"{_EVENTS} AND consumed_by IS NULL AND name = ? ORDER BY seq LIMIT 1"
_TAKE_EVENT = (
    "UPDATE events SET consumed_by = ?, consumed_at = ? WHERE tenant_id = ? AND run_id = ?"
    " AND seq = ?"
)
_MAX_EVENT_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE tenant_id = ? AND run_id = ?"
_SEND_EVENT = (
    "INSERT INTO events (tenant_id, run_id, seq, name, payload, sent_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_CANCEL = (
    "UPDATE runs SET status = 'cancelled', error = ?, wake_at = NULL, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = ? WHERE tenant_id = ? AND run_id = ?"
)
_CANCEL_WAITS = (
    "UPDATE waits SET status = 'cancelled', decision = ?, decided_at = ?"
    " WHERE tenant_id = ? AND run_id = ? AND +status = 'pending'"
)


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(value: Any, what: str) -> str:
    """Compact JSON text of `value`; `StoreError` if it is not JSON (NaN, objects, ...)."""
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: not JSON ({exc})") from exc


def _dumps_optional(value: Any, what: str) -> str | None:
    """`_dumps(value)`, or None (SQL NULL) for None."""
    return None if value is None else _dumps(value, what)


def _loads_optional(text: str | None) -> Any:
    """The value of JSON `text`, or None for SQL NULL."""
    return None if text is None else json.loads(text)


def _journal_rows(run_id: str, entries: list[JournalEntry]) -> list[tuple[Any, ...]]:
    """(key, kind, attempt, tool, args_hash, data JSON, at) per entry; `at` 0 means now."""
    now = time.time()
    try:
        return [
            (e.key, e.kind, e.attempt, e.tool, e.args_hash, _encode(e.data), e.at or now)
            for e in entries
        ]
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot store a journal entry of run {run_id!r}: data not JSON ({exc})"
        ) from exc


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    """Decode a row selected as `_RUN_COLUMNS`."""
    return RunRecord(
        tenant_id=row[0], run_id=row[1], plan_hash=row[2], status=row[3],
        inputs=json.loads(row[4]), outputs=json.loads(row[5]),
        error=None if row[6] is None else json.loads(row[6]),
        created_at=row[7], updated_at=row[8], wake_at=row[9],
        lease_owner=row[10], lease_expires_at=row[11], options=json.loads(row[12]),
    )


def _wait_row(tenant_id: str, run_id: str, wait: WaitRecord, now: float) -> tuple[Any, ...]:
    """The `_WAIT_COLUMNS` values of `wait`; `ValueError` if it belongs to another run or has
    an unknown kind or status, `StoreError` if a value is not JSON. `created_at` 0 is now."""
    if (wait.tenant_id, wait.run_id) != (tenant_id, run_id):
        raise ValueError(
            f"wait {wait.wait_id!r} belongs to run {wait.run_id!r} of tenant "
            f"{wait.tenant_id!r}, not to run {run_id!r} of tenant {tenant_id!r}"
        )
    if wait.kind not in get_args(WaitKind):
        raise ValueError(f"wait {wait.wait_id!r}: unknown kind {wait.kind!r}")
    if wait.status not in get_args(WaitStatus):
        raise ValueError(f"wait {wait.wait_id!r}: unknown status {wait.status!r}")
    what = f"wait {wait.wait_id!r} of run {run_id!r}"
    return (
        tenant_id, run_id, wait.wait_id, wait.key, wait.kind, wait.plan_hash, wait.step_id,
        wait.tool, _dumps_optional(wait.args, f"the arguments of {what}"), wait.args_hash,
        wait.prompt, _dumps_optional(wait.approvers, f"the approvers of {what}"),
        wait.event_name, wait.expires_at, wait.on_expiry, wait.status,
        _dumps_optional(wait.decision, f"the decision on {what}"), int(wait.consumed),
        wait.created_at or now, wait.decided_at,
        _dumps_optional(wait.args_schema, f"the argument schema of {what}"),
    )


def _wait_from_row(row: tuple[Any, ...]) -> WaitRecord:
    """Decode a row selected as `_WAIT_COLUMNS`."""
    return WaitRecord(
        tenant_id=row[0], run_id=row[1], wait_id=row[2], key=row[3], kind=row[4],
        plan_hash=row[5], step_id=row[6], tool=row[7], args=_loads_optional(row[8]),
        args_hash=row[9], prompt=row[10], approvers=_loads_optional(row[11]),
        event_name=row[12], expires_at=row[13], on_expiry=row[14], status=row[15],
        decision=_loads_optional(row[16]), consumed=bool(row[17]), created_at=row[18],
        decided_at=row[19], args_schema=_loads_optional(row[20]),
    )


def _event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """Decode a row selected as `_EVENT_COLUMNS`."""
    return EventRecord(seq=row[0], name=row[1], payload=json.loads(row[2]), sent_at=row[3],
                       consumed_by=row[4], consumed_at=row[5])


def _run_status(conn: sqlite3.Connection, tenant_id: str, run_id: str) -> str:
    """The status of the tenant's run; `RunNotFound` if it has none."""
    row = conn.execute(_RUN_STATUS, (tenant_id, run_id)).fetchone()
    if row is None:
        raise RunNotFound(run_id, tenant_id)
    status: str = row[0]
    return status


def _refuse_decision(wait: WaitRecord, run_status: str, now: float) -> None:
    """Raise why `wait` (of a run in `run_status`) cannot be decided at `now`, if it cannot."""
    if wait.status == "stale":
        raise StaleDecision(wait.run_id, wait.wait_id)
    if wait.status == "expired" or (
        wait.status == "pending" and wait.expires_at is not None and wait.expires_at < now
    ):
        raise DecisionExpired(wait.run_id, wait.wait_id, wait.expires_at)
    if wait.status != "pending":
        by = (wait.decision or {}).get("by")
        raise AlreadyDecided(wait.run_id, wait.wait_id, wait.status,
                             by if isinstance(by, str) else None, wait.decided_at)
    if run_status in FINISHED_STATUSES:
        raise RunFinished(wait.run_id, run_status)


class SQLiteStore:
    """`Store` on one SQLite file (see the module docstring for durability and locking).

    Values are stored as compact JSON text (never pickle); a value that is not JSON raises
    `StoreError` before anything is written. Journal entries whose `at` is 0 are stamped
    with the store's clock. Errors of the database itself surface as `StoreError`.
    """

    def __init__(
        self, path: str, durability: Durability = "full", busy_timeout: float = 30.0
    ) -> None:
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            raise StoreError(MEMORY_REJECTED)
        self.path = os.path.abspath(path)
        self.durability: Durability = durability
        query = "?durability=normal" if durability == "normal" else ""
        self.url = f"sqlite:///{self.path}{query}"
        self._conn = connect(self.path, durability, busy_timeout)
        self._lock = threading.Lock()
        self._next_seq: dict[tuple[str, str], int] = {}
        try:
            _migrate(self._conn, self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from exc
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"SQLite store at {self.path}: {exc}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block in one `BEGIN IMMEDIATE` write transaction:
        committed if the block returns, rolled back if it raises."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Rows of one read statement (a consistent snapshot)."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _update(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> int:
        """Run one write statement as its own transaction; the number of rows it changed."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    # --- plans ----------------------------------------------------------------------------

    def put_plan(self, plan: StoredPlan) -> None:
        """Insert the plan unless this tenant already has one with this hash (the first body
        stays; `created_at` 0 means now). One statement."""
        self._update(_PUT_PLAN, (plan.tenant_id, plan.plan_hash, plan.kind, plan.body,
                                 plan.created_at or time.time()))

    def get_plan(self, tenant_id: str, plan_hash: str) -> StoredPlan | None:
        """The tenant's plan with this hash, or None."""
        rows = self._fetch(
            "SELECT tenant_id, plan_hash, kind, body, created_at FROM plans"
            " WHERE tenant_id = ? AND plan_hash = ?",
            (tenant_id, plan_hash),
        )
        return StoredPlan(*rows[0]) if rows else None

    # --- runs -----------------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, plan: StoredPlan, owner: str, lease_seconds: float
    ) -> tuple[RunRecord, bool]:
        """In one write transaction: insert the run leased to `owner` until `created_at +
        lease_seconds` and pin its plan, unless the tenant has a run with this id. Returns
        (the stored run, created); an existing run is returned unchanged and not leased.
        `created_at`/`updated_at` of 0 mean now."""
        if run.tenant_id != plan.tenant_id or run.plan_hash != plan.plan_hash:
            raise ValueError(
                f"run {run.run_id!r} (tenant {run.tenant_id!r}, plan {run.plan_hash!r}) does "
                f"not match plan {plan.plan_hash!r} of tenant {plan.tenant_id!r}"
            )
        if run.status not in _STATUSES:
            raise ValueError(f"unknown run status {run.status!r}")
        now = run.created_at or time.time()
        values = (
            run.tenant_id, run.run_id, run.plan_hash, run.status,
            _dumps(run.inputs, "run inputs"), _dumps(run.outputs, "run outputs"),
            _dumps_optional(run.error, "run error"),
            now, run.updated_at or now, run.wake_at, owner, now + lease_seconds,
            _dumps(run.options, "run options"),
        )
        with self._transaction() as conn:
            created = conn.execute(
                f"INSERT OR IGNORE INTO runs ({_RUN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            ).rowcount == 1
            if created:
                conn.execute(_PUT_PLAN, (plan.tenant_id, plan.plan_hash, plan.kind, plan.body,
                                         plan.created_at or now))
            row = conn.execute(_GET_RUN, (run.tenant_id, run.run_id)).fetchone()
        return _run_from_row(row), created

    def repin_plan(self, tenant_id: str, run_id: str, owner: str, plan: StoredPlan) -> None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`,
        nothing written): insert `plan` unless the tenant has one with its hash, and set it
        as the plan of the run and of the run's waits. `ValueError` for another tenant's."""
        if plan.tenant_id != tenant_id:
            raise ValueError(f"run {run_id!r} of tenant {tenant_id!r} cannot be pinned to a "
                             f"plan of tenant {plan.tenant_id!r}")
        now = time.time()
        with self._transaction() as conn:
            if conn.execute(_LEASED, (tenant_id, run_id, owner)).fetchone() is None:
                raise LeaseLost(run_id, owner)
            conn.execute(_PUT_PLAN, (tenant_id, plan.plan_hash, plan.kind, plan.body,
                                     plan.created_at or now))
            conn.execute(_REPIN_RUN, (plan.plan_hash, now, tenant_id, run_id))
            conn.execute(_REPIN_WAITS, (plan.plan_hash, tenant_id, run_id))

    def get_run(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """The tenant's run, or None."""
        rows = self._fetch(_GET_RUN, (tenant_id, run_id))
        return _run_from_row(rows[0]) if rows else None

    def list_runs(
        self,
        tenant_id: str,
        status: str | None = None,
        plan_hash: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """The tenant's runs, newest first (ties by run id, descending), optionally filtered
        by status and plan hash; at most `limit`."""
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if plan_hash is not None:
            where.append("plan_hash = ?")
            params.append(plan_hash)
        params.append(limit)
        rows = self._fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, run_id DESC LIMIT ?",
            tuple(params),
        )
        return [_run_from_row(row) for row in rows]

    def due_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Waiting runs whose `wake_at` is at or before `now`, earliest first, at most
        `limit`; of one tenant, or of all tenants for a scheduler (`tenant_id=None`). An
        index range scan: its cost does not grow with the number of runs waiting later."""
        if tenant_id is None:
            sql = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'waiting'"
                   " AND wake_at <= ? ORDER BY wake_at LIMIT ?")
            params: tuple[Any, ...] = (now, limit)
        else:
            sql = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'waiting'"
                   " AND wake_at <= ? AND tenant_id = ? ORDER BY wake_at LIMIT ?")
            params = (now, tenant_id, limit)
        return [_run_from_row(row) for row in self._fetch(sql, params)]

    def orphaned_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Runs still "running" whose worker is gone: no lease, or a lease that expired
        before `now` (its worker crashed or hung). A range over the running runs only, by
        the `runs_due` index's status prefix."""
        sql = (f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'running'"
               " AND (lease_owner IS NULL OR lease_expires_at < ?)")
        params: tuple[Any, ...] = (now,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params += (tenant_id,)
        return [_run_from_row(row) for row in self._fetch(f"{sql} LIMIT ?", (*params, limit))]

    # --- leases ---------------------------------------------------------------------------

    def acquire_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float,
        now: float, take_over_from: str | None = None,
    ) -> bool:
        """Lease the unfinished run to `owner` until `now + lease_seconds` if it is free,
        expired before `now`, already `owner`'s, or held by `take_over_from`. One
        compare-and-set UPDATE; True if `owner` holds the lease now."""
        return self._update(_ACQUIRE, {
            "owner": owner, "now": now, "seconds": lease_seconds, "tenant": tenant_id,
            "run": run_id, "take_over_from": take_over_from,
        }) == 1

    def renew_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Move `owner`'s lease expiry to `now + lease_seconds`; False (and no change) if
        `owner` does not hold it. Fencing is by identity: an expired lease nobody took yet
        is still `owner`'s to renew. One UPDATE."""
        return self._update(_RENEW, (now, lease_seconds, tenant_id, run_id, owner)) == 1

    # --- journal --------------------------------------------------------------------------

    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` in order with the run's next `seq` numbers (1, 2, ... per run),
        committed when this returns, only if `owner` holds the lease; else `LeaseLost` and
        nothing written.

        Usually one fenced INSERT statement, atomic on its own: the store object remembers
        each run's next seq, and a stale guess (another store object appended since) hits
        the primary key, so it is retried in a `BEGIN IMMEDIATE` transaction that reads
        the last seq first, as are runs not seen before and batches over 100 entries."""
        if not entries:
            return
        rows = _journal_rows(run_id, entries)
        run = (tenant_id, run_id)
        with self._lock:
            conn = self._conn
            try:
                next_seq = self._next_seq.pop(run, None) if len(rows) <= _CHUNK else None
                if next_seq is not None:
                    try:
                        written = self._insert(conn, run, owner, rows, next_seq)
                    except sqlite3.IntegrityError:
                        next_seq = None
                if next_seq is None:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        next_seq = 1 + conn.execute(_MAX_SEQ, run).fetchone()[0]
                        written = self._insert(conn, run, owner, rows, next_seq)
                        conn.execute("COMMIT" if written == len(rows) else "ROLLBACK")
                    finally:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if written != len(rows):
                raise LeaseLost(run_id, owner)
            if len(self._next_seq) >= _SEQ_CACHE_SIZE:
                del self._next_seq[next(iter(self._next_seq))]
            self._next_seq[run] = next_seq + len(rows)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, run: tuple[str, str], owner: str,
        rows: list[tuple[Any, ...]], first_seq: int,
    ) -> int:
        """Insert `rows` as seq `first_seq`, ... if `owner` holds the lease; rows written.
        One statement up to `_CHUNK` rows; more are atomic only in the caller's transaction."""
        if len(rows) > _CHUNK:
            return sum(
                SQLiteStore._insert(conn, run, owner, rows[i:i + _CHUNK], first_seq + i)
                for i in range(0, len(rows), _CHUNK)
            )
        params: list[Any] = [*run, owner]
        for seq, row in enumerate(rows, first_seq):
            params += (seq, *row)
        return conn.execute(_append_sql(len(rows)), params).rowcount

    def read_journal(self, tenant_id: str, run_id: str) -> list[JournalEntry]:
        """All entries of the tenant's run in `seq` order (empty for an unknown run)."""
        return [
            JournalEntry(key=key, kind=kind, data=json.loads(data), attempt=attempt,
                         tool=tool, args_hash=args_hash, at=at, seq=seq)
            for key, kind, data, attempt, tool, args_hash, at, seq
            in self._fetch(_READ_JOURNAL, (tenant_id, run_id))
        ]

    def finish_run(
        self, tenant_id: str, run_id: str, owner: str, status: RunStatus,
        outputs: Any = None, error: dict[str, Any] | None = None,
        wake_at: float | None = None, entries: list[JournalEntry] | None = None,
    ) -> None:
        """In one write transaction: append `entries`, set status, outputs, error and
        `wake_at`, and release the lease, only if `owner` holds it; else `LeaseLost` and
        nothing written. A "waiting" run that already has an unconsumed outcome or a matching
        unconsumed event gets `wake_at = min(wake_at, now)` in the same transaction."""
        if status not in _STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        rows = _journal_rows(run_id, entries or [])
        now = time.time()
        update = (
            status, _dumps(outputs, "run outputs"), _dumps_optional(error, "run error"),
            wake_at, now, tenant_id, run_id, owner,
        )
        run = (tenant_id, run_id)
        with self._transaction() as conn:
            self._next_seq.pop(run, None)
            if rows:
                next_seq = 1 + conn.execute(_MAX_SEQ, run).fetchone()[0]
                if self._insert(conn, run, owner, rows, next_seq) != len(rows):
                    raise LeaseLost(run_id, owner)
            if conn.execute(_FINISH, update).rowcount != 1:
                raise LeaseLost(run_id, owner)
            if status == "waiting":
                conn.execute(_WAKE_IF_ARRIVED, {"now": now, "tenant": tenant_id, "run": run_id})

    # --- waits ----------------------------------------------------------------------------

    def put_waits(
        self, tenant_id: str, run_id: str, owner: str, waits: list[WaitRecord]
    ) -> None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`,
        nothing written): insert new waits (`created_at` 0 means now) and update the status,
        decision, consumed, decided_at and expires_at of existing ones. An existing wait that
        is no longer pending only takes its own status again or "stale"; anything else raises
        `WaitConflict` and writes nothing. `ValueError` for a wait of another run."""
        now = time.time()
        rows = [_wait_row(tenant_id, run_id, wait, now) for wait in waits]
        if not rows:
            return
        with self._transaction() as conn:
            if conn.execute(_LEASED, (tenant_id, run_id, owner)).fetchone() is None:
                raise LeaseLost(run_id, owner)
            for wait, row in zip(waits, rows, strict=True):
                if conn.execute(_PUT_WAIT, row).rowcount != 1:
                    stored = conn.execute(_GET_WAIT, (tenant_id, run_id, wait.wait_id))
                    raise WaitConflict(run_id, wait.wait_id,
                                       _wait_from_row(stored.fetchone()).status, wait.status)

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
        if status is not None:  # of one run: its rows by primary key (see _WAKE_IF_ARRIVED)
            where.append("+status = ?" if run_id is not None else "status = ?")
            params.append(status)
        params.append(limit)
        rows = self._fetch(
            f"SELECT {_WAIT_COLUMNS} FROM waits WHERE {' AND '.join(where)}"
            " ORDER BY created_at, rowid LIMIT ?",
            tuple(params),
        )
        return [_wait_from_row(row) for row in rows]

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
        decision_json = _dumps_optional(decision, f"the decision on {wait_id!r}")
        with self._transaction() as conn:
            run_status = _run_status(conn, tenant_id, run_id)
            row = conn.execute(_GET_WAIT, (tenant_id, run_id, wait_id)).fetchone()
            wait = None if row is None else _wait_from_row(row)
            if wait is None or wait.kind not in kinds:
                raise PendingNotFound(run_id, wait_id, kinds, wait.kind if wait else None)
            _refuse_decision(wait, run_status, now)
            conn.execute(_DECIDE, (status, decision_json, now, tenant_id, run_id, wait_id))
            conn.execute(_WAKE_IF_ARRIVED, {"now": now, "tenant": tenant_id, "run": run_id})
        return replace(wait, status=status, decision=_loads_optional(decision_json),
                       decided_at=now)

    # --- events ---------------------------------------------------------------------------

    def send_event(
        self, tenant_id: str, run_id: str, name: str, payload: Any, now: float
    ) -> int:
        """In one write transaction: append the event with the run's next `seq` and make a
        waiting run with a pending wait for `name` due at `now`. `RunNotFound`, `RunFinished`
        (nothing written); `StoreError` if the payload is not JSON."""
        payload_json = _dumps(payload, f"the payload of event {name!r}")
        with self._transaction() as conn:
            run_status = _run_status(conn, tenant_id, run_id)
            if run_status in FINISHED_STATUSES:
                raise RunFinished(run_id, run_status)
            seq: int = 1 + conn.execute(_MAX_EVENT_SEQ, (tenant_id, run_id)).fetchone()[0]
            conn.execute(_SEND_EVENT, (tenant_id, run_id, seq, name, payload_json, now))
            conn.execute(_WAKE_IF_ARRIVED, {"now": now, "tenant": tenant_id, "run": run_id})
        return seq

    def take_event(
        self, tenant_id: str, run_id: str, owner: str, name: str, key: str, now: float
    ) -> EventRecord | None:
        """In one write transaction, only if `owner` holds the lease (else `LeaseLost`): the
        event `key` consumed already, else the oldest unconsumed `name` event, now consumed
        by `key`; else None."""
        with self._transaction() as conn:
            if conn.execute(_LEASED, (tenant_id, run_id, owner)).fetchone() is None:
                raise LeaseLost(run_id, owner)
            row = conn.execute(_EVENT_TAKEN_BY, (tenant_id, run_id, key)).fetchone()
            if row is None:
                row = conn.execute(_OLDEST_EVENT, (tenant_id, run_id, name)).fetchone()
                if row is None:
                    return None
                conn.execute(_TAKE_EVENT, (key, now, tenant_id, run_id, row[0]))
                row = (*row[:4], key, now)
        return _event_from_row(row)

    def list_events(self, tenant_id: str, run_id: str) -> list[EventRecord]:
        """All events of the tenant's run in `seq` order (empty for an unknown run)."""
        return [_event_from_row(row)
                for row in self._fetch(f"{_EVENTS} ORDER BY seq", (tenant_id, run_id))]

    # --- cancellation ---------------------------------------------------------------------

    def cancel_run(self, tenant_id: str, run_id: str, reason: str, now: float) -> RunRecord:
        """In one write transaction: set the run "cancelled" with error `{"type":
        "Cancelled", "message": reason}`, clear its wake-up and its lease (the holder's next
        fenced write raises `LeaseLost`), and mark its pending waits "cancelled" with
        decision `{"reason": reason}`. `RunNotFound`; `RunFinished` (nothing changed)."""
        error = _dumps({"type": "Cancelled", "message": reason}, "the cancellation reason")
        decision = _dumps({"reason": reason}, "the cancellation reason")
        with self._transaction() as conn:
            run_status = _run_status(conn, tenant_id, run_id)
            if run_status in FINISHED_STATUSES:
                raise RunFinished(run_id, run_status)
            conn.execute(_CANCEL, (error, now, tenant_id, run_id))
            conn.execute(_CANCEL_WAITS, (decision, now, tenant_id, run_id))
            row = conn.execute(_GET_RUN, (tenant_id, run_id)).fetchone()
        return _run_from_row(row)

    def close(self) -> None:
        """Close the connection (idempotent); the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()
