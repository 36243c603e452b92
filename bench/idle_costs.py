"""What the waiting runs of `bench/idle_runs.py` cost besides time: the memory of a process
that opens the store, the bytes on disk, and the query plan of each look-up the engine makes
(each must use an index on the run id or the due time, never a scan)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.store.sqlite import connect
from bench.idle_rows import (
    TENANT,
    approval_wait_id,
    idle_plan,
    kind_of,
    noop,
    run_id_of,
)

if TYPE_CHECKING:
    from bench.idle_runs import Bench

ROOT = Path(__file__).resolve().parent.parent


def vm(field_name: str = "VmRSS") -> int:
    """This process's `field_name` from /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


FRESH_PROCESS = """
import json, sys, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
from agentflow import Engine
from agentflow.store import SQLiteStore
before = rss()
engine = Engine(SQLiteStore(sys.argv[1]))
run = engine.store.get_run('default', sys.argv[2])
due = engine.store.due_runs(time.time())
engine.get_run(sys.argv[2])
print(json.dumps({'before': before, 'after': rss(), 'due': len(due), 'found': run is not None}))
"""


def release_free_heap() -> bool:
    """Hand the C heap's free memory back to the OS (glibc `malloc_trim`), so VmRSS shows
    what is still in use rather than what the bulk loader's page cache and row batches left
    free; False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def fresh_process_rss(bench: Bench) -> dict[str, Any]:
    """RSS of a new Python process after `import agentflow`, and after it opened the store
    and looked up a run and the due runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(bench.path), run_id_of(0)],
                         capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def storage(bench: Bench) -> tuple[int, int, int, list[tuple[str, int, int]]]:
    """(file bytes after a checkpoint, WAL bytes, waiting runs, [(table or index, bytes,
    pages)]) of the store; the breakdown is empty without SQLite's dbstat table."""
    conn = connect(str(bench.path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        waiting = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'waiting'").fetchone()
        try:
            parts = conn.execute("SELECT name, SUM(pgsize), COUNT(*) FROM dbstat GROUP BY name"
                                 " ORDER BY SUM(pgsize) DESC").fetchall()
        except sqlite3.Error:
            parts = []
    finally:
        conn.close()
    wal = Path(f"{bench.path}-wal")
    return (bench.path.stat().st_size, wal.stat().st_size if wal.exists() else 0, waiting[0],
            parts)


def query_plans(bench: Bench) -> list[tuple[str, str, list[str]]]:
    """(what, SQL, EXPLAIN QUERY PLAN lines) of due_runs and get_run, and of each distinct
    statement of an Engine.execute that ends waiting and of an approve + resume, traced on
    the store's own connection. (The extra run made is cancelled: it does not wait.)"""
    statements: list[str] = []
    store, engine = bench.store, bench.engine
    i = bench.approvals.pop()
    extra = bench.size + 3 - bench.size % 3  # an approval run (index divisible by 3)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("due_runs(now)", lambda: store.due_runs(time.time())),
        ("due_runs(now, tenant)", lambda: store.due_runs(time.time(), tenant_id=TENANT)),
        ("get_run(id)", lambda: store.get_run(TENANT, run_id_of(1))),
        ("Engine.execute until waiting", lambda: engine.execute(
            idle_plan(kind_of(extra)), inputs={"order_id": extra}, run_id=run_id_of(extra))),
        ("Engine.approve + Engine.resume", lambda: (
            engine.approve(run_id_of(i), approval_wait_id(run_id_of(i), i), by="bench"),
            engine.resume(run_id_of(i), tools=[noop]))),
    ]
    traced = []
    # read-only use: tracing the store's statements (it writes on one connection, reads on
    # the other)
    connections: list[sqlite3.Connection] = [store._conn, store._reader]
    for conn in connections:
        conn.set_trace_callback(statements.append)
    try:
        for what, call in calls:
            statements.clear()
            call()
            seen = set()
            for sql in statements:
                shape = re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "?", sql)
                if shape.split()[0].upper() in {"BEGIN", "COMMIT", "ROLLBACK"} or shape in seen:
                    continue
                seen.add(shape)
                traced.append((what, sql))
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
    engine.cancel(run_id_of(extra), reason="traced for EXPLAIN only")
    reader = sqlite3.connect(f"file:{bench.path}?mode=ro", uri=True)
    try:
        return [(what, sql, [row[3] for row in reader.execute(f"EXPLAIN QUERY PLAN {sql}")])
                for what, sql in traced]
    finally:
        reader.close()


def plan_warning(sql: str, plan: Sequence[str]) -> str:
    """What is wrong with a statement's plan, if anything: a scan of a whole table or index
    (a VALUES list or a constant row is fine), or a statement about one run (`run_id =`)
    that searches an index by tenant and status instead: a range over the tenant's waits or
    runs, whose cost grows with their number."""
    if any(line.startswith("SCAN") and "CONSTANT ROW" not in line
           and not line.startswith("SCAN v") for line in plan):
        return "FULL SCAN"
    if "run_id = " in sql and any(line.startswith("SEARCH") and "tenant_id=?" in line
                                  and "run_id=" not in line for line in plan):
        return "NOT BY RUN ID: range over the tenant"
    return ""
