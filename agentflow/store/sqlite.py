"""The embedded store: one SQLite file in WAL mode, shareable by the threads of a process
and by several processes on one machine.

Durability. `"normal"` (`synchronous=NORMAL`) survives a crash of the process: every method
that writes has committed when it returns. On power loss the last commits may be lost, but
the file is never corrupted. `"full"` (`synchronous=FULL`) also survives power loss: every
commit is synced to disk before the method returns.

Concurrency. One connection per store object, serialised by a lock. A write of several
statements runs in one `BEGIN IMMEDIATE` transaction, so a lease check and the writes it
guards are one write transaction; a single-statement write (a lease compare-and-set, a
fenced journal append) is atomic on its own. Other processes wait for the write lock up to
`busy_timeout` seconds; readers never block in WAL mode.

Hot path. `append_journal` is usually one autocommit `INSERT ... SELECT` statement that
writes its rows only if the run's lease owner matches (the fence), with `seq` numbers the
store object remembers per run; so a step costs about one bare `INSERT` + `COMMIT` (see
`bench/raw_sqlite.py`).
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
from typing import Any, Literal

from sqlite_utils import Database

from agentflow.errors import LeaseLost, StoreError
from agentflow.store.base import JournalEntry, RunRecord, RunStatus, StoredPlan

Durability = Literal["normal", "full"]

_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}
_STATUSES = frozenset({"running", "waiting", "completed", "failed", "cancelled"})
MEMORY_REJECTED = (
    "an in-memory SQLite database is not durable (runs would vanish with the process); "
    "give a file path such as sqlite:///agentflow.db"
)


def connect(
    path: str, durability: Durability = "normal", busy_timeout: float = 30.0
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
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
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


# Migration i takes the schema from version i to i + 1. Append, never edit.
_MIGRATIONS: tuple[Callable[[Database], None], ...] = (_schema_v1,)
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


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(value: Any, what: str) -> str:
    """Compact JSON text of `value`; `StoreError` if it is not JSON (NaN, objects, ...)."""
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: not JSON ({exc})") from exc


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


class SQLiteStore:
    """`Store` on one SQLite file (see the module docstring for durability and locking).

    Values are stored as compact JSON text (never pickle); a value that is not JSON raises
    `StoreError` before anything is written. Journal entries whose `at` is 0 are stamped
    with the store's clock. Errors of the database itself surface as `StoreError`.
    """

    def __init__(
        self, path: str, durability: Durability = "normal", busy_timeout: float = 30.0
    ) -> None:
        if path in ("", ":memory:") or path.startswith("file::memory:"):
            raise StoreError(MEMORY_REJECTED)
        self.path = os.path.abspath(path)
        self.durability: Durability = durability
        query = "?durability=full" if durability == "full" else ""
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
            None if run.error is None else _dumps(run.error, "run error"),
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
        nothing written."""
        if status not in _STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        rows = _journal_rows(run_id, entries or [])
        update = (
            status, _dumps(outputs, "run outputs"),
            None if error is None else _dumps(error, "run error"),
            wake_at, time.time(), tenant_id, run_id, owner,
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

    def close(self) -> None:
        """Close the connection (idempotent); the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()
