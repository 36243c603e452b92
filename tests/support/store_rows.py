"""Reading a store's tables with a plain connection of its own, as an outside observer: a
read-only sqlite3 connection to the file, or a psycopg connection to the test's schema.

The contract tests look at the database itself rather than through the store class, so a
test fails when the rows are not really committed (or are written when they must not be).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.stores import connect_admin

TABLES = ("runs", "plans", "journal")


@contextmanager
def _connect(store: str | Path) -> Iterator[tuple[Any, list[str]]]:
    """A connection and the names of the store's tables (none for a missing store)."""
    text = str(store)
    if text.startswith(("postgresql:", "postgres:")):
        schema = dict(parse_qsl(urlsplit(text).query)).get("schema", "public")
        with connect_admin(text.split("?")[0], autocommit=True,
                             options=f"-c search_path={schema}") as conn:
            names = [row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,))]
            yield conn, names
        return
    if not Path(text).exists():
        yield None, []
        return
    with sqlite3.connect(f"file:{text}?mode=ro", uri=True, timeout=30) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        yield conn, names
    conn.close()


def row_counts(store: str | Path) -> dict[str, int]:
    """Rows per table of runs/plans/journal; all zero when the store or a table is missing."""
    counts = dict.fromkeys(TABLES, 0)
    with _connect(store) as (conn, names):
        for table in TABLES:
            if table in names:
                counts[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return counts


def dump(store: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: to compare before and after."""
    with _connect(store) as (conn, names):
        return {name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
                for name in sorted(names)}


def journal(store: str | Path, run_id: str) -> list[dict[str, Any]]:
    """The run's journal rows in seq order, with `data` decoded."""
    with _connect(store) as (conn, _):
        mark = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        rows = conn.execute(
            "SELECT seq, key, kind, attempt, tool, data FROM journal"
            f" WHERE run_id = {mark} ORDER BY seq", (run_id,)).fetchall()
    return [{"seq": seq, "key": key, "kind": kind, "attempt": attempt, "tool": tool_name,
             "data": json.loads(data)} for seq, key, kind, attempt, tool_name, data in rows]
