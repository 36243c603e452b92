"""The embedded store: one SQLite file in WAL mode, shareable by the threads of a process
and by several processes on one machine.

Durability. `"full"` (`synchronous=FULL`, the default) survives a crash of the process and
a power loss: every commit is synced to disk before the method returns. `"normal"`
(`synchronous=NORMAL`) survives a crash of the process (every method that writes has
committed when it returns) and is several times faster per commit; on power loss the last
commits may be lost, but the file is never corrupted.

Concurrency. Two connections per store object, each serialised by a lock: one writes,
one reads (so a read never queues behind a write's fsync). A write of several
statements runs in one `BEGIN IMMEDIATE` transaction, so a lease check and the writes it
guards are one write transaction; a single-statement write (a lease compare-and-set, a
fenced journal append) is atomic on its own. Other processes wait for the write lock up to
`busy_timeout` seconds; readers never block in WAL mode.

Hot path. `append_journal` is one short transaction: an `INSERT ... SELECT` that writes its
rows only if the run's lease owner matches (the fence), with `seq` numbers the store object
remembers per run, and one update of the tenant's `tenant_usage` counter (see
`bench/raw_sqlite.py`). The journal is one b-tree keyed (tenant, run, seq) (schema v11), so
the rows cost one leaf page. `write_group` writes every run's rows with one `executemany`
after one SELECT of their leases, and each tenant's counter once.

Waits and events. A waiting run is its `runs` row (found by the `runs_due` index once its
`wake_at` comes), its journal, and a lean `waits` row per pending approval, event or timer;
plans are shared by hash, never copied per run. Decisions and events are small write
transactions that set `wake_at = now` on the run they concern.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from agentflow.errors import LeaseLost, StoreError
from agentflow.store import queries as q
from agentflow.store.records import GroupWrite, JournalAppend, JournalEntry, NewRun, RunEnd
from agentflow.store.rows import journal_rows
from agentflow.store.schema import (
    META,
    READ_VERSION,
    Dialect,
    check_version,
    latest_version,
    pending_statements,
)
from agentflow.store.sql import SQLStore

Durability = Literal["normal", "full"]

_SYNCHRONOUS: dict[str, str] = {"normal": "NORMAL", "full": "FULL"}
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


DIALECT = Dialect(name="sqlite", real="REAL", row_order="")


def _stored_version(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version (0: new file); `StoreError` if newer than this code's."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = conn.execute(READ_VERSION).fetchone() if exists else None
    version = int(row[0]) if row else 0
    check_version(version, f"sqlite:///{path}")
    return version


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to `latest_version()`, in one write transaction (safe when several
    processes open a file at once: the first migrates, the others find it done)."""
    if _stored_version(conn, path) == latest_version():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(META)
        for statement in pending_statements(_stored_version(conn, path), DIALECT):
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (str(latest_version()),))
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


# Entries per INSERT statement: 3 + 8 * 100 parameters stays under SQLite's historic 999.
_CHUNK = 100
# Runs whose next seq a store object remembers (see `SQLiteStore.append_journal`).
_SEQ_CACHE_SIZE = 4096
# Runs whose lease owner and last seq one `_leases` statement reads (2 parameters each).
_LEASES_CHUNK = 256
_INSERT_ROW = (
    "INSERT INTO journal (tenant_id, run_id, seq, key, kind, attempt, tool, args_hash, data,"
    " at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A transaction's journal data, added to its tenant's counter once (schema v11: no trigger).
_ADD_BYTES = (
    "INSERT INTO tenant_usage (tenant_id, journal_bytes) VALUES (?, ?) ON CONFLICT (tenant_id)"
    " DO UPDATE SET journal_bytes = journal_bytes + excluded.journal_bytes"
)


@functools.cache
def _leases_sql(n: int) -> str:
    """The lease owner and last seq of `n` runs, given as (tenant, run) pairs: a primary
    key look-up each (CROSS JOIN keeps the pairs the outer loop; `(tenant_id, run_id) IN
    (VALUES ...)` would scan `runs`)."""
    pairs = ", ".join(["(?, ?)"] * n)
    return ("SELECT runs.tenant_id, runs.run_id, lease_owner, (SELECT COALESCE(MAX(seq), 0)"
            " FROM journal WHERE journal.tenant_id = runs.tenant_id"
            f" AND journal.run_id = runs.run_id) FROM (VALUES {pairs}) AS v CROSS JOIN runs"
            " ON runs.tenant_id = v.column1 AND runs.run_id = v.column2")


def _leases(conn: sqlite3.Connection, runs: set[tuple[str, str]]
            ) -> dict[tuple[str, str], list[Any]]:
    """[lease owner, last seq] of each of `runs` that exists. Statements are padded to a
    power of two runs with NULL pairs (which match nothing), so a handful of texts serve
    every group size and the statement cache keeps them prepared."""
    found: dict[tuple[str, str], list[Any]] = {}
    pairs = sorted(runs)
    for start in range(0, len(pairs), _LEASES_CHUNK):
        chunk = pairs[start:start + _LEASES_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        params = [value for pair in chunk for value in pair] + [None] * (2 * (size - len(chunk)))
        for tenant_id, run_id, owner, last in conn.execute(_leases_sql(size), params):
            found[(tenant_id, run_id)] = [owner, last]
    return found


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


_READ_ONLY_HINT = (
    ". The database file, its -wal and -shm files and their directory must all be writable"
    " by this user; a -shm file left read-only after the main file was fixed must be made"
    " writable too (or removed while no process has the store open). Now: "
)


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _file_modes(path: str) -> str:
    """`runs.db 0644, runs.db-wal 0644, runs.db-shm 0444` (missing files left out)."""
    modes = []
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            modes.append(f"{os.path.basename(name)} {os.stat(name).st_mode & 0o777:04o}")
        except OSError:
            continue
    return ", ".join(modes) or "no files"


class SQLiteStore(SQLStore):
    """`Store` on one SQLite file (see the module docstring for durability and locking).

    Journal entries whose `at` is 0 are stamped with the store's clock. Errors of the
    database itself surface as `StoreError`.
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
        self._identity = _file_identity(self.path)
        self._lock = threading.Lock()
        self._next_seq: dict[tuple[str, str], int] = {}
        try:
            _migrate(self._conn, self.path)
            # Reads have a connection of their own: in WAL mode they never wait for a
            # writer, so a read does not queue behind a group commit's fsync.
            self._reader = connect(self.path, durability, busy_timeout)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from exc
        except BaseException:
            self._conn.close()
            raise
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    def _error(self, exc: sqlite3.Error) -> StoreError:
        hint = _READ_ONLY_HINT + _file_modes(self.path) if "readonly" in str(exc) else ""
        return StoreError(f"SQLite store at {self.path}: {exc}{hint}")

    def _check_file(self) -> None:
        """Refuse to write when the file this store opened is no longer at its path
        (deleted, or replaced by another file): the writes would land in a file nobody
        reads again, and the run would seem to go on."""
        now = _file_identity(self.path)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreError(f"SQLite store at {self.path}: the database file was {what} "
                             "while the store was open; nothing more is written to it "
                             "(restore the file, or open the store again)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block in one `BEGIN IMMEDIATE` write transaction:
        committed if the block returns, rolled back if it raises."""
        with self._lock:
            self._check_file()
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
        with self._read_lock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _update(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> int:
        with self._lock:
            self._check_file()
            try:
                return self._conn.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _append_in(self, conn: sqlite3.Connection, run: tuple[str, str], owner: str,
                   rows: list[tuple[Any, ...]]) -> int:
        self._next_seq.pop(run, None)
        return len(rows) if self._append_at(conn, run, owner, rows, None) else 0

    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` in order with the run's next `seq` numbers (1, 2, ... per run),
        committed when this returns, only if `owner` holds the lease; else `LeaseLost` and
        nothing written.

        One short transaction: a fenced INSERT and the tenant's counter. The store object
        remembers each run's next seq; a stale guess (another store object appended since)
        hits the primary key and is retried after reading the last seq, as are runs not
        seen before and batches over 100 entries."""
        if not entries:
            return
        rows = journal_rows(run_id, entries)
        run = (tenant_id, run_id)
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    guess = self._next_seq.pop(run, None) if len(rows) <= _CHUNK else None
                    next_seq = self._append_at(conn, run, owner, rows, guess)
                    conn.execute("COMMIT" if next_seq else "ROLLBACK")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if not next_seq:
                raise LeaseLost(run_id, owner)
            if len(self._next_seq) >= _SEQ_CACHE_SIZE:
                del self._next_seq[next(iter(self._next_seq))]
            self._next_seq[run] = next_seq

    def _append_at(self, conn: sqlite3.Connection, run: tuple[str, str], owner: str,
                   rows: list[tuple[Any, ...]], guess: int | None) -> int:
        """In a transaction: insert `rows` after the run's last seq (`guess`: the next seq
        if known, checked by the primary key) if `owner` holds the lease, and add their data
        to the tenant's counter. The run's next seq after them; 0 (nothing written) without
        the lease."""
        if guess is not None:
            try:
                written = self._insert(conn, run, owner, rows, guess)
            except sqlite3.IntegrityError:
                guess = None
        if guess is None:
            guess = 1 + conn.execute(q.MAX_SEQ, run).fetchone()[0]
            written = self._insert(conn, run, owner, rows, guess)
        if written != len(rows):
            return 0
        conn.execute(_ADD_BYTES, (run[0], sum(len(row[5]) for row in rows)))
        return guess + len(rows)

    def _write_all(self, conn: sqlite3.Connection, writes: list[tuple[int, GroupWrite, Any]],
                   answers: list[Any]) -> None:
        """`write_group`'s writes in a few statements whatever their number: the runs it
        creates, one SELECT of the other runs' lease owners and last seqs (per 256 runs),
        one `executemany` INSERT of every journal row of the runs still held, one counter
        update per tenant, then the runs it ends."""
        journaled: list[tuple[int, JournalAppend | RunEnd, Any]] = []
        for index, write, values in writes:
            if isinstance(write, NewRun):
                answers[index] = self._insert_run_in(conn, write.run, write.plan, values)
            else:
                journaled.append((index, write, values))
        leases = _leases(conn, {(write.tenant_id, write.run_id) for _, write, _ in journaled})
        inserts: list[tuple[Any, ...]] = []
        added: dict[str, int] = {}
        ends: list[tuple[int, RunEnd, tuple[Any, ...]]] = []
        for index, write, values in journaled:
            run = (write.tenant_id, write.run_id)
            rows = values if isinstance(write, JournalAppend) else values[0]
            lease = leases.get(run)
            if rows:
                if lease is None or lease[0] != write.owner:
                    answers[index] = LeaseLost(write.run_id, write.owner)
                    continue
                inserts += [(*run, seq, *row) for seq, row in enumerate(rows, lease[1] + 1)]
                lease[1] += len(rows)
                added[run[0]] = added.get(run[0], 0) + sum(len(row[5]) for row in rows)
                self._next_seq.pop(run, None)
            if isinstance(write, RunEnd):
                ends.append((index, write, values[1]))
                if lease is not None:
                    lease[0] = None  # released: a later write of this group is refused
        if inserts:
            conn.executemany(_INSERT_ROW, inserts)
            conn.executemany(_ADD_BYTES, list(added.items()))
        for index, end, update in ends:
            try:
                self._end_in(conn, end, update)
            except LeaseLost as lost:
                answers[index] = lost

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

    def _forget_runs(self, runs: list[tuple[str, str]]) -> None:
        with self._lock:
            for run in runs:
                self._next_seq.pop(run, None)

    def close(self) -> None:
        """Close the connections (idempotent); the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()
        with self._read_lock:
            self._reader.close()
