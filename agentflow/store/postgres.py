"""The scale-out store: one PostgreSQL database shared by workers on many machines.

`PostgresStore("postgresql://user@host:5432/db")` keeps the same rows as SQLite (the
shared migrations and row mapping) in a pool of connections (`psycopg_pool`), in the
schema the URL's `?schema=` names (default `public`; created if missing).

Atomicity. Every method of several statements is one transaction whose first statement
locks the run's row (`SELECT ... FOR UPDATE`), so a lease check and the writes it guards
cannot interleave with a take-over, a decision or a cancellation of that run; a
compare-and-set UPDATE is atomic on its own (READ COMMITTED re-checks its condition after
waiting for the row). Claims read candidates with `FOR UPDATE SKIP LOCKED` and serialise
one tenant's cap check with a transaction-scoped advisory lock.

Notifications. A submission, a decision, an event or a released run sends `NOTIFY
agentflow_work` in its transaction; a run that stops executing sends `agentflow_settled`.
Idle workers and `wait` listen on a connection of their own, and poll only as a fallback.

Faults. Each error names the URL without its password. A transaction that fails before
its commit because the connection dropped (a server restart), a serialization failure or
a deadlock is retried on a fresh connection; one that fails while committing is reported
(its outcome is unknown, and nothing is written twice). `?statement_timeout=SECONDS` bounds
every statement; a statement past it raises `StoreError` and changes nothing.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from agentflow.errors import LeaseLost, StoreError
from agentflow.store import queries as q
from agentflow.store.base import (
    Claim,
    GroupWrite,
    JournalAppend,
    JournalEntry,
    NewRun,
    RunEnd,
    RunRecord,
    StoredPlan,
)
from agentflow.store.pg_sql import ENTRY_KEYS, RUN_KEYS, WRITE_RUNS, claim_statement
from agentflow.store.queue import (
    SETTLED_CHANNEL,
    WORK_CHANNEL,
    TransientStoreError,
    policy_of,
    retried,
)
from agentflow.store.rows import run_from_row
from agentflow.store.schema import (
    META,
    READ_VERSION,
    Dialect,
    check_version,
    latest_version,
    pending_statements,
)
from agentflow.store.sql import SQLStore, _encoded, _finished

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - depends on the installed extras
    psycopg = None  # type: ignore[assignment]

DIALECT = Dialect(name="postgresql", real="DOUBLE PRECISION",
                  row_order=", ordinal BIGINT GENERATED ALWAYS AS IDENTITY")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")
# Our own URL options; every other query option goes to libpq (sslmode, connect_timeout...).
_OPTIONS = ("schema", "pool_size", "statement_timeout")
# Serialises migrations of one database (any number, as long as it is fixed).
_MIGRATION_LOCK = 7_316_402_115
_APPEND = (
    "INSERT INTO journal (tenant_id, run_id, seq, key, kind, attempt, tool, args_hash, data,"
    " at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Refusals that pass: every connection slot taken, or the server starting up.
_BUSY = ("too many clients", "remaining connection slots are reserved",
         "the database system is starting up")
_BUSY_WAIT = 30.0
_STATEMENT = re.compile(r"(?<![:\w]):([a-z_]+)")


def shown(url: str) -> str:
    """`url` without its password, for messages."""
    return _PASSWORD.sub(r"\1***@", url)


@functools.cache
def _pg_sql(sql: str) -> str:
    """The shared SQL's `?` and `:name` parameters in psycopg's spelling."""
    return _STATEMENT.sub(r"%(\1)s", sql).replace("?", "%s")


class _Conn:
    """A psycopg connection that speaks the shared SQL's parameter style."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = (), prepare: bool | None = None) -> Any:
        return self._conn.execute(_pg_sql(sql), params, prepare=prepare)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement for many rows, sent in one pipeline."""
        self._conn.cursor().executemany(_pg_sql(sql), rows)


class PostgresStore(SQLStore):
    """`Store` on a PostgreSQL database (see the module docstring). Requires the
    `postgres` extra (`pip install 'agentflow[postgres]'`)."""

    row_lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    insertion_order = "ordinal"

    def __init__(self, url: str) -> None:
        self.url = url
        self._shown = shown(url)
        if psycopg is None:
            raise StoreError(f"store {self._shown!r} needs psycopg: pip install "
                             "'agentflow[postgres]'")
        conninfo, self.schema, pool_size, timeout = _parse(url, self._shown)
        # The URL's own `options` (server settings) come first: they would be lost otherwise.
        given = psycopg.conninfo.conninfo_to_dict(conninfo).get("options") or ""
        options = f"{given} -c search_path={self.schema}".strip()
        if timeout is not None:
            options += f" -c statement_timeout={int(timeout * 1000)}"
        self._connect_args: dict[str, Any] = {"autocommit": True, "options": options}
        self._conninfo = conninfo
        self._migrate()
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=pool_size,
                                    kwargs=self._connect_args, open=False,
                                    name=f"agentflow {self._shown}")
        try:
            self._pool.open(wait=True, timeout=30)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot reach PostgreSQL store at {self._shown}: {exc}") from exc
        self._listener: Any = None
        self._listener_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self._shown!r})"

    # --- connections -----------------------------------------------------------------------

    def connect(self) -> Any:
        """A new connection of its own (not from the pool), in the store's schema. A server
        that is busy (no connection slot free) or starting up is given `_BUSY_WAIT` seconds;
        one that cannot be reached is an error at once."""
        deadline = time.monotonic() + _BUSY_WAIT
        pause = 0.1
        while True:
            try:
                return psycopg.connect(self._conninfo, **self._connect_args)
            except psycopg.Error as exc:
                if not any(busy in str(exc) for busy in _BUSY) or time.monotonic() > deadline:
                    raise StoreError(f"cannot reach PostgreSQL store at {self._shown}: "
                                     f"{_message(exc)}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _migrate(self) -> None:
        """Create the schema if missing and run the pending migrations, all in one
        transaction that holds a database-wide advisory lock (so concurrent openers wait
        and then find the work done). `statement_timeout` does not bound it: waiting for
        another opener's migration is not a slow query."""
        with self.connect() as conn:
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL statement_timeout = 0")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                    conn.execute(META)
                    row = conn.execute(READ_VERSION).fetchone()
                    found = int(row[0]) if row else 0
                    check_version(found, self._shown)
                    if found == latest_version():
                        return
                    for statement in pending_statements(found, DIALECT):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(latest_version()),))
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: Exception, committing: bool = False) -> StoreError:
        """`exc` as the store error a caller sees: `TransientStoreError` when nothing was
        committed and a retry can cure it."""
        message = f"PostgreSQL store at {self._shown}: {_message(exc)}"
        if isinstance(exc, UnicodeEncodeError):
            return StoreError(f"{message} (text must be valid UTF-8; nothing was changed)")
        if isinstance(exc, pg_errors.QueryCanceled):
            return StoreError(f"{message} (statement_timeout; nothing was changed)")
        if committing:
            return StoreError(f"{message} (while committing: the outcome is unknown)")
        if isinstance(exc, pg_errors.UniqueViolation) and "journal" in str(exc):
            return _SeqTaken(message)
        # Connection failures, server shutdown, serialization failures and deadlocks.
        if isinstance(exc, (psycopg.OperationalError, PoolTimeout)):
            return TransientStoreError(message)
        return StoreError(message)

    @contextmanager
    def _transaction(self) -> Iterator[_Conn]:
        """A pooled connection in one transaction: committed if the block returns,
        rolled back if it raises."""
        committing = False
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _Conn(conn)
                committing = True
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise self._error(exc, committing) from exc

    @retried
    def _fetch(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]:
        """Rows of one statement; on a fresh connection again if the first dropped."""
        try:
            with self._pool.connection() as conn:
                rows: list[Any] = _Conn(conn).execute(sql, params).fetchall()
                return rows
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise self._error(exc) from exc

    @retried
    def _update(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> int:
        """One autocommit write; again if it failed for a reason a retry cures (every
        single-statement write of the store is idempotent)."""
        try:
            with self._pool.connection() as conn:
                count: int = _Conn(conn).execute(sql, params).rowcount
                return count
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise self._error(exc) from exc

    @retried
    def claim(
        self, owner: str, lease_seconds: float, now: float, *, tenant_id: str | None = None,
        after_tenant: str = "", tenant_cap: int | None = None,
    ) -> Claim | None:
        """`Store.claim` in one statement (`claim_statement`) when the run it picks needs no
        room under a cap; the transaction of the shared store (which counts under the
        tenant's lock) when it may."""
        if tenant_cap is not None:
            return super().claim(owner, lease_seconds, now, tenant_id=tenant_id,
                                 after_tenant=after_tenant, tenant_cap=tenant_cap)
        rows = self._fetch(claim_statement(tenant_id is not None), {
            "now": now, "seconds": lease_seconds, "owner": owner, "tenant": tenant_id,
            "after": after_tenant})
        if not rows:
            return None
        row = rows[0]
        if row[0] is None:  # its tenant may be at its cap: count under the tenant's lock
            return super().claim(owner, lease_seconds, now, tenant_id=tenant_id,
                                 after_tenant=after_tenant, tenant_cap=tenant_cap)
        run = run_from_row(row[:14])
        plan = None if row[16] is None else StoredPlan(run.tenant_id, run.plan_hash,
                                                       *row[15:18])
        return Claim(run, plan, policy_of(row[18]), started=bool(row[14]))

    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` after the run's last seq, committed when this returns, only if
        `owner` holds the lease (else `LeaseLost`, nothing written): usually one autocommit
        statement, as `write_group`."""
        answer = self.write_group([JournalAppend(tenant_id, run_id, owner, entries)])[0]
        if answer is not None:
            raise answer

    def write_group(self, writes: list[GroupWrite]) -> list[Any]:
        """Several runs' writes committed together (see `Store.write_group`).

        A group of journal appends and of ends of runs that do not wait (the usual one:
        runs' steps and results) is usually one autocommit statement (`WRITE_RUNS`: one
        round trip, one commit): it share-locks, in (tenant, run) order, the rows of the
        runs whose owner holds the lease, so a take-over waits for it or makes it write
        nothing, numbers each run's entries after its last seq, ends the runs that end and
        notifies their listeners. Two appends racing on one run (parallel branches) may pick
        the same seq; the loser hits the primary key and goes again through the locked
        transaction of the shared store, as does a group that creates runs or makes one
        wait (its wake-up reads its waits and events)."""
        if any(isinstance(write, NewRun) or (isinstance(write, RunEnd)
                                             and write.status == "waiting")
               for write in writes):
            return super().write_group(writes)
        fenced = cast(list[JournalAppend | RunEnd], writes)
        answers: list[Any] = [None] * len(writes)
        runs: dict[tuple[str, str], _RunWrite] = {}
        for index, write in enumerate(fenced):
            try:
                values = _encoded(write)
            except (StoreError, ValueError) as error:  # this write only is refused
                answers[index] = error
                continue
            key = (write.tenant_id, write.run_id)
            run = runs.setdefault(key, _RunWrite(write.owner))
            if run.owner != write.owner or run.end is not None:
                return super().write_group(writes)  # two owners, or a write after its end
            run.rows += values if isinstance(write, JournalAppend) else values[0]
            if isinstance(write, RunEnd):
                run.end = (*values[1][:5], *_finished(*key, write.status))
        runs = {key: run for key, run in runs.items() if run.rows or run.end is not None}
        if not runs:
            return answers
        try:
            written = self._write_runs(runs)
        except _SeqTaken:
            return super().write_group(writes)
        except TransientStoreError:
            # The connection dropped, maybe after the commit: then every run still held
            # shows its writes (its journal ends with its entries; an ended run has its
            # new status and no lease), and only the others go again.
            ran = {key for key, run in runs.items() if self._shows(key, run, [
                entry for write in fenced if (write.tenant_id, write.run_id) == key
                for entry in write.entries])}
            again = [i for i, write in enumerate(fenced) if answers[i] is None
                     and (write.tenant_id, write.run_id) in set(runs) - ran]
            for i, answer in zip(again, super().write_group(
                    [writes[i] for i in again]) if again else [], strict=True):
                answers[i] = answer
            return answers
        for index, write in enumerate(fenced):
            key = (write.tenant_id, write.run_id)
            if answers[index] is None and key in runs and key not in written:
                answers[index] = LeaseLost(write.run_id, write.owner)
        return answers

    def _write_runs(self, runs: dict[tuple[str, str], _RunWrite]) -> set[tuple[str, str]]:
        """The one-statement write of `write_group`: the runs whose lease was held."""
        held = json.dumps([dict(zip(RUN_KEYS, (number, tenant_id, run_id, run.owner,
                                               *(run.end or ())), strict=False))
                           for number, ((tenant_id, run_id), run) in enumerate(runs.items())],
                          ensure_ascii=False, allow_nan=False)
        entries = json.dumps([dict(zip(ENTRY_KEYS, (number, n, *row), strict=True))
                              for number, run in enumerate(runs.values())
                              for n, row in enumerate(run.rows, 1)],
                             ensure_ascii=False, allow_nan=False)
        try:
            with self._pool.connection() as conn:
                cursor = _Conn(conn).execute(WRITE_RUNS, (held, entries), prepare=True)
                return {(tenant_id, run_id) for tenant_id, run_id in cursor.fetchall()}
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise self._error(exc) from exc

    def _shows(self, key: tuple[str, str], run: _RunWrite,
               entries: list[JournalEntry]) -> bool:
        """True if the run's stored rows show its write: its journal ends with `entries`
        (key, kind, attempt and data) and, if it ended, it has its new status, no lease."""
        if run.end is not None:
            stored = self.get_run(*key)
            if stored is None or (stored.status, stored.lease_owner) != (run.end[0], None):
                return False
        if not entries:
            return True
        tail = self.read_journal(*key)[-len(entries):]
        return [(e.key, e.kind, e.attempt, e.data) for e in tail] == [
            (e.key, e.kind, e.attempt, e.data) for e in entries]

    def _append_in(self, conn: _Conn, run: tuple[str, str], owner: str,
                   rows: list[tuple[Any, ...]]) -> int:
        """Lock the run's row if `owner` holds the lease, then insert after its last seq."""
        if conn.execute(q.LEASED + self.row_lock, (*run, owner)).fetchone() is None:
            return 0
        first = 1 + conn.execute(q.MAX_SEQ, run).fetchone()[0]
        conn.executemany(_APPEND, [(*run, seq, *row) for seq, row in enumerate(rows, first)])
        return len(rows)

    def _lock_tenant(self, conn: _Conn, tenant_id: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                     (f"agentflow tenant {tenant_id}",))

    def _notify(self, conn: _Conn, channel: str, payload: str) -> None:
        conn.execute("SELECT pg_notify(?, ?)", (channel, payload))

    # --- listening -------------------------------------------------------------------------

    def wait_for_run(self, tenant_id: str, run_id: str, statuses: frozenset[str],
                     timeout: float) -> RunRecord | None:
        """The run once its status is one of `statuses`, or None after `timeout`: listens
        for `agentflow_settled` on a connection of its own, looking at the run once
        before waiting and after each notification about it (and every 5 s regardless)."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            conn.execute(f"LISTEN {SETTLED_CHANNEL}")
            while True:
                run = self._settled_run(tenant_id, run_id, statuses)
                left = deadline - time.monotonic()
                if run is not None:
                    return run
                if left <= 0:
                    return None
                about = json.dumps([tenant_id, run_id])
                try:
                    for note in conn.notifies(timeout=min(left, 5.0)):
                        if note.payload == about:
                            break
                except psycopg.Error as exc:
                    raise self._error(exc) from exc

    def wait_for_work(self, timeout: float) -> bool:
        """Sleep until `agentflow_work` is notified or `timeout` passes; True if notified
        (every notification already received is consumed: one wake-up for a burst). The
        listening connection is kept, and opened again if it dropped."""
        with self._listener_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = self.connect()
                    self._listener.execute(f"LISTEN {WORK_CHANNEL}")
                notified = False
                for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                    notified = True
                if notified:  # the others that came meanwhile tell nothing more
                    for _ in self._listener.notifies(timeout=0):
                        pass
                return notified
            except psycopg.Error as exc:
                if self._listener is not None:
                    self._listener.close()
                self._listener = None
                raise self._error(exc) from exc

    def close(self) -> None:
        """Close the pool and the listening connection (idempotent)."""
        self._pool.close()
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None


@dataclass
class _RunWrite:
    """What one group writes for one run: entries, and its end (FINISH's status, outputs,
    error, wake_at and time, then the notification's channel and payload) if it ends."""

    owner: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    end: tuple[Any, ...] | None = None


class _SeqTaken(StoreError):
    """A one-statement journal append lost the race for a seq number (nothing written)."""


def _message(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse(url: str, where: str) -> tuple[str, str, int, float | None]:
    """(libpq URL without our options, schema, pool size, statement timeout)."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            ours[key] = value
        else:
            rest.append((key, value))
    schema = ours.get("schema", "public")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(f"store URL {where!r}: schema must be a lower-case name "
                         f"([a-z_][a-z0-9_]*), not {schema!r}")
    try:
        pool_size = int(ours.get("pool_size", "10"))
        timeout = float(ours["statement_timeout"]) if "statement_timeout" in ours else None
    except ValueError as exc:
        raise StoreError(f"store URL {where!r}: pool_size must be a whole number and "
                         f"statement_timeout a number of seconds ({exc})") from None
    if pool_size < 1 or (timeout is not None and timeout <= 0):
        raise StoreError(f"store URL {where!r}: pool_size must be >= 1 and "
                         "statement_timeout > 0")
    # %20 for a space: libpq does not read `+` as one (`options=-c a=b -c c=d`).
    conninfo = urlunsplit(parts._replace(scheme="postgresql",
                                         query=urlencode(rest, quote_via=quote)))
    return conninfo, schema, pool_size, timeout
