"""Fault injection for a real store: chosen SQL statements fail or stall.

`inject(store, faults)` puts a hook between the store and its database connections: the
`sqlite3` connection of a `SQLiteStore`, or each pooled psycopg connection of a
`PostgresStore`. Before each statement runs, `faults.before(sql)` may raise the error the
database itself raises for a lock held too long, an I/O error (on PostgreSQL: a lost
connection) or a full disk, or sleep for a moment. A failed statement has not run; when it
is part of a transaction, the store rolls the transaction back as it would after a real
error. Everything else is the real store on a real database.
"""

from __future__ import annotations

import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agentflow.store import SQLiteStore

ERRORS = ("database is locked", "disk I/O error", "database or disk is full")


@dataclass
class Faults:
    """Which statements fail: those whose SQL matches `match` (a regex), each with
    probability `rate` (drawn from `seed`), at most `limit` times (None: no limit), and, if
    `where` is given, only when `where(sql, params)` is true; `delay`
    is the probability that a statement stalls up to 20 ms instead. `enabled` turns it all
    off and on; `injected` counts the failures raised, by message."""

    rate: float = 0.0
    seed: int = 0
    match: str = ""
    limit: int | None = None
    delay: float = 0.0
    errors: tuple[str, ...] = ERRORS
    where: Callable[[str, Any], bool] | None = None
    enabled: bool = True
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._pattern = re.compile(self.match)
        self._lock = threading.Lock()

    def before(self, sql: str, params: Any = (),
               raising: Callable[[str], Exception] = sqlite3.OperationalError) -> None:
        if not self.enabled or not self._pattern.search(sql):
            return
        if self.where is not None and not self.where(sql, params):
            return
        with self._lock:
            draw = self._random.random()
            pause = self._random.random() * 0.02 if draw > 1 - self.delay else 0.0
            total = sum(self.injected.values())
            message = (self._random.choice(self.errors)
                       if draw < self.rate and (self.limit is None or total < self.limit)
                       else None)
            if message is not None:
                self.injected[message] = self.injected.get(message, 0) + 1
        if pause:
            time.sleep(pause)
        if message is not None:
            raise raising(message)


class _FaultyConnection:
    """A `sqlite3.Connection` whose `execute` consults `Faults` first."""

    def __init__(self, conn: sqlite3.Connection, faults: Faults) -> None:
        self._conn = conn
        self._faults = faults

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        # A failed ROLLBACK would leave the connection inside a transaction for good;
        # SQLite rolls back by itself when its own statements fail, so never fail that one.
        if sql != "ROLLBACK":
            self._faults.before(sql, params)
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _postgres_error(message: str) -> Exception:
    """What PostgreSQL raises for each of `ERRORS`."""
    import psycopg

    return {
        "database is locked": psycopg.errors.LockNotAvailable(
            "canceling statement due to lock timeout"),
        "disk I/O error": psycopg.OperationalError(
            "server closed the connection unexpectedly"),
        "database or disk is full": psycopg.errors.DiskFull(
            "could not extend file: No space left on device"),
    }.get(message) or psycopg.OperationalError(message)


class _FaultyPgConnection:
    """A psycopg connection whose `execute` consults `Faults` first."""

    def __init__(self, conn: Any, faults: Faults) -> None:
        self._conn = conn
        self._faults = faults

    def execute(self, sql: str, params: Any = (), **options: Any) -> Any:
        self._faults.before(sql, params, _postgres_error)
        return self._conn.execute(sql, params, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _FaultyPool:
    """A psycopg pool whose connections consult `Faults`."""

    def __init__(self, pool: Any, faults: Faults) -> None:
        self._pool = pool
        self._faults = faults

    @contextmanager
    def connection(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._pool.connection(*args, **kwargs) as conn:
            yield _FaultyPgConnection(conn, self._faults)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def inject(store: Any, faults: Faults) -> Faults:
    """Route `store`'s statements (a `SQLiteStore` or a `PostgresStore`) through `faults`
    from now on."""
    if isinstance(store, SQLiteStore):
        store._conn = _FaultyConnection(store._conn, faults)
        store._reader = _FaultyConnection(store._reader, faults)
    else:
        store._pool = _FaultyPool(store._pool, faults)
    return faults


def record_statements(store: Any) -> list[str]:
    """The SQL of every statement `store` runs from now on, in order (nothing fails)."""
    seen: list[str] = []
    inject(store, Faults(where=lambda sql, params: seen.append(sql) is not None))
    return seen
