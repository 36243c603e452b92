"""Reading a SQLite store file with a plain sqlite3 connection, as an outside observer.

The contract tests look at the file itself rather than through the store class, so a test
fails when the rows are not really committed (or are written when they must not be).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

TABLES = ("runs", "plans", "journal")


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of runs/plans/journal; all zero when the file or a table is missing."""
    counts = dict.fromkeys(TABLES, 0)
    if not path.exists():
        return counts
    with _connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        for table in TABLES:
            if table in names:
                counts[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return counts


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every user table, in a stable order: to compare before and after."""
    with _connect(path) as conn:
        names = sorted(row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))
        return {name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
                for name in names}


def journal(path: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's journal rows in seq order, with `data` decoded."""
    with _connect(path) as conn:
        rows = conn.execute(
            "SELECT seq, key, kind, attempt, tool, data FROM journal WHERE run_id = ?"
            " ORDER BY seq", (run_id,)).fetchall()
    return [{"seq": seq, "key": key, "kind": kind, "attempt": attempt, "tool": tool_name,
             "data": json.loads(data)} for seq, key, kind, attempt, tool_name, data in rows]
