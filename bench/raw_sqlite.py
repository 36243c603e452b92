"""Baseline for per-step overhead: one raw SQLite commit, and `append_journal` beside it.

`raw_commit_seconds` is the yardstick the benchmarks divide by: the time of one `INSERT` of a
~100-byte JSON row committed on its own, on a file opened exactly as `SQLiteStore` opens its
own (`agentflow.store.sqlite.connect`: WAL and the durability's PRAGMAs). The target is a
journal append within 2x of it at the same durability. The script also prints a lone
autocommit INSERT, the cheapest commit SQLite can do, as a stricter reference.

    python bench/raw_sqlite.py [N]
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import get_args

from agentflow.store import JournalEntry, RunRecord, SQLiteStore, StoredPlan
from agentflow.store.sqlite import Durability, connect

ROW = json.dumps(
    {"status": "ok", "result": {"id": 12345, "items": ["alpha", "beta", "gamma"]},
     "note": "x" * 32},
    separators=(",", ":"),
)  # ~100 bytes, the size of a small tool result


def raw_commit_seconds(
    path: str, durability: Durability, n: int, *, autocommit: bool = False
) -> list[float]:
    """Durations of `n` commits of one ~100-byte JSON row each into a fresh table at `path`
    (created, or emptied if it exists), with the PRAGMAs `SQLiteStore` uses for `durability`.

    Each commit is `BEGIN; INSERT; COMMIT`, what `execute(INSERT)` + `commit()` does in
    Python's default transaction mode. `autocommit=True` times a lone INSERT instead (SQLite
    commits when the statement ends): the cheapest possible commit, a stricter baseline."""
    conn = connect(path, durability)
    try:
        conn.execute("DROP TABLE IF EXISTS raw_commit")
        conn.execute("CREATE TABLE raw_commit (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        execute = conn.execute
        insert, params = "INSERT INTO raw_commit (data) VALUES (?)", (ROW,)
        durations = []
        for _ in range(n):
            start = time.perf_counter()
            if autocommit:
                execute(insert, params)
            else:
                execute("BEGIN")
                execute(insert, params)
                execute("COMMIT")
            durations.append(time.perf_counter() - start)
        return durations
    finally:
        conn.close()


def append_journal_seconds(
    path: str, durability: Durability, n: int, entries_per_call: int
) -> list[float]:
    """Durations of `n` `append_journal` calls of `entries_per_call` ~100-byte entries each
    on one leased run of a fresh `SQLiteStore` at `path`."""
    with SQLiteStore(path, durability) as store:
        plan = StoredPlan("default", "bench", "graph", "{}", 0.0)
        run = RunRecord("default", f"bench-{entries_per_call}", "bench", "running", {})
        store.create_run(run, plan, "bench-worker", 3600.0)
        batch = [
            JournalEntry(key=f"step{i}", kind="result", data=json.loads(ROW), attempt=1,
                         tool="fetch", args_hash="0" * 16)
            for i in range(entries_per_call)
        ]
        durations = []
        for _ in range(n):
            start = time.perf_counter()
            store.append_journal("default", run.run_id, "bench-worker", batch)
            durations.append(time.perf_counter() - start)
        return durations


def main(n: int) -> None:
    print(f"SQLite {sqlite3.sqlite_version}; medians of {n} calls ({max(n // 10, 50)} for "
          "durability=full) in microseconds; ratios against INSERT+COMMIT [and lone INSERT]")
    # In the working directory, not /tmp: a tmpfs would make fsync (durability=full) free.
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
        for durability in get_args(Durability):
            calls = n if durability == "normal" else max(n // 10, 50)
            raw = statistics.median(
                raw_commit_seconds(os.path.join(tmp, f"raw-{durability}.db"), durability, calls)
            )
            lone = statistics.median(raw_commit_seconds(
                os.path.join(tmp, f"lone-{durability}.db"), durability, calls, autocommit=True
            ))
            print(f"durability={durability}\n  raw BEGIN+INSERT+COMMIT   {raw * 1e6:8.1f}\n"
                  f"  raw lone INSERT           {lone * 1e6:8.1f}")
            for per_call in (1, 2):
                path = os.path.join(tmp, f"store-{durability}-{per_call}.db")
                median = statistics.median(
                    append_journal_seconds(path, durability, calls, per_call)
                )
                label = f"append_journal, {per_call} entr{'y' if per_call == 1 else 'ies'}"
                print(f"  {label:<26}{median * 1e6:8.1f}   {median / raw:4.2f}x "
                      f"[{median / lone:4.2f}x]")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
