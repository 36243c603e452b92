"""What a `PostgresStore` sends its server, read from libpq's own protocol trace.

`Wire(store)` traces every pooled connection the store uses from then on (libpq's
`PQtrace`, one line per protocol message) until `close()`. It counts what costs the
server and the network: round trips (each ends with one ReadyForQuery: a simple query, or
the Sync that ends a batch of extended-protocol statements, pipelined or not), statements
(each simple query and each Execute, BEGIN and COMMIT included) and parses (a statement the
server plans anew: a prepared statement is parsed once per connection).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Wire:
    """Counts of the protocol messages a store's pooled connections exchange."""

    def __init__(self, store: Any) -> None:
        from psycopg import pq

        self._flags = pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by `close`)
        self._traced: list[Any] = []
        self._store = store
        self._pool = store._pool
        store._pool = _TracingPool(self._pool, self)
        self.lines: list[str] = []

    def trace(self, conn: Any) -> None:
        if not any(seen is conn for seen in self._traced):
            conn.pgconn.trace(self._file.fileno())
            conn.pgconn.set_trace_flags(self._flags)
            self._traced.append(conn)

    def close(self) -> None:
        """Stop tracing and read what was traced (libpq writes it on untrace)."""
        self._store._pool = self._pool
        for conn in self._traced:
            if not conn.closed:
                conn.pgconn.untrace()
        self._traced.clear()
        self._file.seek(0)
        self.lines = self._file.read().decode(errors="replace").splitlines()
        self._file.close()

    def _count(self, direction: str, *messages: str) -> int:
        return sum(1 for line in self.lines
                   if line.split("\t")[0] == direction and line.split("\t")[2] in messages)

    @property
    def round_trips(self) -> int:
        return self._count("B", "ReadyForQuery")

    @property
    def statements(self) -> int:
        return self._count("F", "Query", "Execute")

    @property
    def parses(self) -> int:
        return self._count("F", "Parse")


class _TracingPool:
    """A psycopg pool whose connections `Wire` traces."""

    def __init__(self, pool: Any, wire: Wire) -> None:
        self._pool = pool
        self._wire = wire

    @contextmanager
    def connection(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._pool.connection(*args, **kwargs) as conn:
            self._wire.trace(conn)
            yield conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)
