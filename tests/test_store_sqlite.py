"""What only the SQLite store promises: its PRAGMAs, its file, several connections and
processes on one file, and the URLs `open_store` accepts."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from agentflow.errors import AlreadyDecided, LeaseLost, StoreError
from agentflow.store import (
    DEFAULT_STORE_URL,
    STORE_ENV_VAR,
    JournalAppend,
    JournalEntry,
    RunRecord,
    SQLiteStore,
    StoredPlan,
    WaitRecord,
    open_store,
)
from agentflow.store import schema as store_schema
from agentflow.store.schema import latest_version

T = "acme"
PLAN = StoredPlan(T, "plan-1", "graph", "{}", 0.0)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


def pragma(store: SQLiteStore, name: str) -> Any:
    return store._conn.execute(f"PRAGMA {name}").fetchone()[0]


def start(store: SQLiteStore, run_id: str = "run-1", owner: str = "w1", **fields: Any) -> None:
    fields.setdefault("inputs", {})
    _, created = store.create_run(
        RunRecord(T, run_id, "plan-1", "running", **fields), PLAN, owner, 30.0
    )
    assert created


# --- connection settings and schema ---------------------------------------------------------

@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2)])
def test_wal_and_synchronous_follow_durability(
    db_path: str, durability: Any, synchronous: int
) -> None:
    with SQLiteStore(db_path, durability, busy_timeout=2.5) as store:
        assert pragma(store, "journal_mode") == "wal"
        assert pragma(store, "synchronous") == synchronous
        assert pragma(store, "busy_timeout") == 2500
        assert store.url == f"sqlite:///{db_path}" + ("?durability=normal"
                                                      if durability == "normal" else "")
    with sqlite3.connect(db_path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_has_a_tenant_on_every_row_and_a_version(db_path: str) -> None:
    SQLiteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"meta", "plans", "runs", "journal", "waits", "events", "tokens",
                      "secrets", "plan_versions", "policies", "charges", "traces", "tenant_usage"}
    for table in tables - {"meta"}:
        columns = {row[1]: row for row in conn.execute(f"PRAGMA table_info({table})")}
        assert "tenant_id" in columns and columns["tenant_id"][3] == 1  # NOT NULL
        assert columns["tenant_id"][5] == 1  # first column of the primary key
    indexes = {name: [c[2] for c in conn.execute(f"PRAGMA index_info({name})")]
               for (name,) in conn.execute(
                   "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert indexes == {
        "runs_due": ["status", "wake_at"],
        "runs_by_status": ["tenant_id", "status", "created_at"],
        "runs_by_created": ["tenant_id", "created_at"],
        "waits_by_status": ["tenant_id", "status", "created_at"],
        "runs_queue": ["status", "tenant_id", "wake_at"],
        "runs_leased": ["tenant_id", "lease_expires_at"],
        "plan_versions_by_number": ["tenant_id", "name", "version"],
        "runs_by_plan_name": ["tenant_id", "plan_name", "created_at"],
        "runs_by_plan": ["tenant_id", "plan_hash"],
    }
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(latest_version()),)
    conn.close()


def test_a_file_from_a_newer_agentflow_is_refused(db_path: str) -> None:
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(db_path)


def schema(path: str) -> set[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        found = set(rows.fetchall())
    conn.close()
    return found


def test_a_version_1_file_is_migrated_to_the_latest_version_keeping_its_data(
    db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as v1:  # the schema as it was with only the first migration
        v1.setattr(store_schema, "MIGRATIONS", store_schema.MIGRATIONS[:1])
        SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as conn:  # rows as version 1 wrote them
        conn.execute("INSERT INTO runs VALUES ('acme', 'run-1', 'plan-1', 'waiting',"
                     " '{\"x\":1}', 'null', NULL, 10.0, 10.0, 50.0, 'w1', 40.0, '{}')")
        conn.execute("INSERT INTO plans VALUES ('acme', 'plan-1', 'graph', ?, 10.0)",
                     (PLAN.body,))
        conn.execute("INSERT INTO journal VALUES ('acme', 'run-1', 1, 'a', 'result', 0, NULL,"
                     " NULL, '{\"v\":1}', 11.0)")
    conn.close()
    before = (RunRecord(T, "run-1", "plan-1", "waiting", {"x": 1}, created_at=10.0,
                        updated_at=10.0, wake_at=50.0, lease_owner="w1",
                        lease_expires_at=40.0),
              [JournalEntry("a", "result", {"v": 1}, at=11.0, seq=1)],
              StoredPlan(T, "plan-1", PLAN.kind, PLAN.body, 10.0))
    assert {name for name, _ in schema(db_path)} == {
        "meta", "plans", "runs", "journal", "runs_due", "runs_by_status", "runs_by_created"}

    with SQLiteStore(db_path) as store:
        assert (store.get_run(T, "run-1"), store.read_journal(T, "run-1"),
                store.get_plan(T, "plan-1")) == before
        assert store.due_runs(60.0) == [before[0]]
        assert store.acquire_lease(T, "run-1", "w2", 30.0, time.time(), take_over_from="w1")
        store.put_waits(T, "run-1", "w2", [WaitRecord(T, "run-1", "ok:1", "ok", "approval",
                                                      "plan-1")])
        store.finish_run(T, "run-1", "w2", "waiting")
        store.decide_wait(T, "run-1", "ok:1", "approved", {"by": "alice"}, 70.0)
        assert [e.seq for e in store.read_journal(T, "run-1")] == [1]
    fresh = str(tmp_path / "fresh.db")
    SQLiteStore(fresh).close()
    assert schema(db_path) == schema(fresh)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone() == (str(latest_version()),)
    conn.close()


def test_everything_survives_reopening_the_file(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        start(store, inputs={"x": [1, 2]})
        store.append_journal(T, "run-1", "w1", [JournalEntry("a", "result", {"v": 1})])
        store.finish_run(T, "run-1", "w1", "waiting", outputs={"o": 1}, wake_at=123.0,
                         entries=[JournalEntry("b", "intent")])
        before = (store.get_run(T, "run-1"), store.read_journal(T, "run-1"),
                  store.get_plan(T, "plan-1"))
    with SQLiteStore(db_path) as store:
        assert (store.get_run(T, "run-1"), store.read_journal(T, "run-1"),
                store.get_plan(T, "plan-1")) == before
        assert store.acquire_lease(T, "run-1", "w2", 30.0, time.time())
        store.append_journal(T, "run-1", "w2", [JournalEntry("c", "result")])
        assert [e.seq for e in store.read_journal(T, "run-1")] == [1, 2, 3]


def test_seq_stays_dense_when_two_store_objects_append_to_one_run(db_path: str) -> None:
    with SQLiteStore(db_path) as one, SQLiteStore(db_path) as two:
        start(one)
        one.append_journal(T, "run-1", "w1", [JournalEntry("a", "result")])
        assert two.acquire_lease(T, "run-1", "w2", 30.0, time.time(), take_over_from="w1")
        two.append_journal(T, "run-1", "w2", [JournalEntry("b", "result")] * 2)
        assert one.acquire_lease(T, "run-1", "w1", 30.0, time.time(), take_over_from="w2")
        one.append_journal(T, "run-1", "w1", [JournalEntry("c", "result")])  # stale guess
        assert [(e.key, e.seq) for e in two.read_journal(T, "run-1")] == [
            ("a", 1), ("b", 2), ("b", 3), ("c", 4)]


def test_a_closed_store_raises_store_error(db_path: str) -> None:
    store = SQLiteStore(db_path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_run(T, "run-1")


def test_unusable_files_raise_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(str(tmp_path / "missing-dir" / "x.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SQLiteStore(str(junk))
    with pytest.raises(StoreError, match="durability"):
        SQLiteStore(str(tmp_path / "x.db"), "fast")  # type: ignore[arg-type]


# --- query plans: waiting runs cost nothing but their rows ----------------------------------

def traced(store: SQLiteStore, call: Any) -> tuple[list[str], int]:
    """The SQL statements `call()` runs on the store's connections (parameters inlined) and
    the number of SQLite virtual-machine instructions they take."""
    statements: list[str] = []
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    connections = (store._conn, store._reader)  # it writes on one and reads on the other
    for conn in connections:
        conn.set_trace_callback(statements.append)
        conn.set_progress_handler(step, 1)
    try:
        call()
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
            conn.set_progress_handler(None, 1)
    return statements, steps


def query_plan(store: SQLiteStore, sql: str) -> list[str]:
    return [row[3] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def park(store: SQLiteStore, run_id: str, wake_at: float | None) -> None:
    start(store, run_id)
    store.finish_run(T, run_id, "w1", "waiting", wake_at=wake_at)


@pytest.mark.parametrize(("tenant", "search"), [
    (None, "runs_due (status=? AND wake_at<?)"),
    (T, "runs_queue (status=? AND tenant_id=? AND wake_at<?)"),
])
def test_due_runs_is_an_index_range_scan_on_status_and_wake_at(
    db_path: str, tenant: str | None, search: str
) -> None:
    with SQLiteStore(db_path) as store:
        park(store, "due", 10.0)
        (sql,), _ = traced(store, lambda: store.due_runs(100.0, tenant_id=tenant))
        assert query_plan(store, sql) == [f"SEARCH runs USING INDEX {search}"]


def test_renew_leases_looks_up_each_run_by_primary_key(db_path: str) -> None:
    """A join with the leases, not `IN (VALUES ...)`, which SQLite plans as a scan."""
    with SQLiteStore(db_path) as store:
        for i in range(3):
            start(store, f"run-{i}")
        statements, _ = traced(store, lambda: store.renew_leases(
            [(T, f"run-{i}", "w1") for i in range(3)], 60.0, time.time()))
        (sql,) = [sql for sql in statements if sql.startswith("UPDATE")]
        plan = query_plan(store, sql)
    assert "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (tenant_id=? AND run_id=?)" in plan
    assert not [line for line in plan if line.startswith("SCAN runs")], plan


def test_due_runs_costs_the_same_however_many_runs_wait_for_later(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        for i in range(3):
            park(store, f"due-{i}", 10.0 + i)

        def due() -> None:
            assert [r.run_id for r in store.due_runs(100.0)] == ["due-0", "due-1", "due-2"]

        _, few = traced(store, due)
        for i in range(4000):  # waiting for a later timer, or for a decision (no timer)
            park(store, f"later-{i}", None if i % 2 else 1e9 + i)
        _, many = traced(store, due)
    assert many - few < 20, (few, many)  # a scan would take thousands more


def test_the_waits_and_events_api_never_scans_a_table(db_path: str) -> None:
    """Every statement is an index look-up on the run (or the tenant and status)."""
    with SQLiteStore(db_path) as store:
        park(store, "other", None)
        start(store)
        wait = WaitRecord(T, "run-1", "go:1", "k", "event", "plan-1", event_name="go")
        approval = WaitRecord(T, "run-1", "ok:1", "ok", "approval", "plan-1")

        def scenario() -> None:
            store.put_waits(T, "run-1", "w1", [wait, approval])
            store.send_event(T, "run-1", "go", 1, 5.0)
            store.take_event(T, "run-1", "w1", "go", "k", 6.0)
            store.take_event(T, "run-1", "w1", "go", "k", 6.0)
            store.finish_run(T, "run-1", "w1", "waiting")
            store.decide_wait(T, "run-1", "ok:1", "approved", {"by": "a"}, 7.0)
            store.list_waits(T, status="pending")
            store.list_waits(T, "run-1")
            store.list_waits(T, "run-1", status="pending")
            store.list_events(T, "run-1")
            store.cancel_run(T, "other", "stop", 8.0)

        statements, _ = traced(store, scenario)
        plans = {sql: query_plan(store, sql) for sql in statements
                 if sql.split()[0] in ("SELECT", "INSERT", "UPDATE")}
    assert len(plans) >= 12
    for sql, plan in plans.items():
        assert not [line for line in plan if line.startswith("SCAN")], (sql, plan)
    pending = next(plan for sql, plan in plans.items() if "status = 'pending'" in sql
                   and sql.startswith("SELECT"))
    assert pending == ["SEARCH waits USING INDEX waits_by_status (tenant_id=? AND status=?)"]
    # A statement about one run reads that run's rows, never a range over the tenant: else
    # it gets slower with every other waiting run (bench/idle_runs.py found three that did).
    for sql, plan in plans.items():
        if "run_id = 'run-1'" in sql or "run_id = 'other'" in sql:
            assert not [line for line in plan if "waits_by_status" in line], (sql, plan)


# --- several processes on one file ----------------------------------------------------------

RUNS = 30


def _race_acquire(path: str, owner: str, barrier: Barrier, results: Queue[Any]) -> None:
    with SQLiteStore(path) as store:
        for i in range(RUNS):
            barrier.wait()
            results.put((owner, i, store.acquire_lease(T, f"run-{i}", owner, 30.0, time.time())))


def _race_create(path: str, owner: str, barrier: Barrier, results: Queue[Any]) -> None:
    with SQLiteStore(path) as store:
        for i in range(RUNS):
            barrier.wait()
            record, created = store.create_run(
                RunRecord(T, f"run-{i}", "plan-1", "running", {}), PLAN, owner, 30.0)
            results.put((owner, i, created, record.lease_owner))


def _append_many(path: str, owner: str, barrier: Barrier, results: Queue[Any]) -> None:
    with SQLiteStore(path) as store:
        barrier.wait()
        for i in range(200):
            store.append_journal(T, owner, owner, [JournalEntry(f"k{i}", "result", i)])
        results.put((owner, "done"))


def _finish_and_resume_many(
    path: str, owner: str, barrier: Barrier, results: Queue[Any]
) -> None:
    with SQLiteStore(path) as store:
        barrier.wait()
        for i in range(100):
            store.finish_run(T, owner, owner, "waiting", wake_at=float(i),
                             entries=[JournalEntry(f"k{i}", "result", i)])
            assert store.acquire_lease(T, owner, owner, 30.0, time.time())
        results.put((owner, "done"))


def _race_decide(path: str, owner: str, barrier: Barrier, results: Queue[Any]) -> None:
    with SQLiteStore(path) as store:
        for i in range(RUNS):
            barrier.wait()
            try:
                store.decide_wait(T, f"run-{i}", "ok:1", "approved", {"by": owner}, time.time())
                results.put((owner, i, "decided"))
            except AlreadyDecided as refused:
                results.put((owner, i, f"refused: already {refused.status} by {refused.by}"))


def _append_then_die(path: str, owner: str) -> None:
    store = SQLiteStore(path)
    store.append_journal(T, "run-1", owner, [JournalEntry("a", "result", {"v": 1})])
    store.finish_run(T, "run-1", owner, "waiting", wake_at=5.0)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no cleanup


def _in_processes(target: Any, path: str, owners: list[str]) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(owners))
    results: Queue[Any] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(path, owner, barrier, results))
             for owner in owners]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    out = []
    while not results.empty():
        out.append(results.get())
    return out


def test_processes_racing_for_a_lease_exactly_one_wins(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        for i in range(RUNS):  # created with leases that expired long ago
            store.create_run(RunRecord(T, f"run-{i}", "plan-1", "running", {},
                                       created_at=time.time() - 100.0), PLAN, "dead", 1.0)
    results = _in_processes(_race_acquire, db_path, ["p1", "p2"])
    assert len(results) == 2 * RUNS
    with SQLiteStore(db_path) as store:
        for i in range(RUNS):
            winners = [owner for owner, run, won in results if run == i and won]
            assert len(winners) == 1, (i, results)
            record = store.get_run(T, f"run-{i}")
            assert record is not None and record.lease_owner == winners[0]


def test_processes_racing_to_create_a_run_exactly_one_creates(db_path: str) -> None:
    SQLiteStore(db_path).close()
    results = _in_processes(_race_create, db_path, ["p1", "p2"])
    for i in range(RUNS):
        outcomes = [(owner, created, lease) for owner, run, created, lease in results
                    if run == i]
        assert sorted(created for _, created, _ in outcomes) == [False, True]
        creator = next(owner for owner, created, _ in outcomes if created)
        assert {lease for _, _, lease in outcomes} == {creator}


def test_processes_racing_to_decide_a_wait_exactly_one_decides(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        for i in range(RUNS):
            start(store, f"run-{i}")
            store.put_waits(T, f"run-{i}", "w1", [
                WaitRecord(T, f"run-{i}", "ok:1", "ok", "approval", "plan-1")])
            store.finish_run(T, f"run-{i}", "w1", "waiting")
    results = _in_processes(_race_decide, db_path, ["p1", "p2"])
    assert len(results) == 2 * RUNS
    with SQLiteStore(db_path) as store:
        for i in range(RUNS):
            outcomes = {owner: outcome for owner, run, outcome in results if run == i}
            winner = next(owner for owner, outcome in outcomes.items() if outcome == "decided")
            loser = "p2" if winner == "p1" else "p1"
            assert outcomes[loser] == f"refused: already approved by {winner}"
            (wait,) = store.list_waits(T, f"run-{i}")
            assert (wait.status, wait.decision) == ("approved", {"by": winner})
            assert store.get_run(T, f"run-{i}").wake_at is not None  # type: ignore[union-attr]


def test_processes_appending_at_once_wait_for_each_other(db_path: str) -> None:
    owners = ["p1", "p2", "p3"]
    with SQLiteStore(db_path) as store:
        for owner in owners:
            start(store, run_id=owner, owner=owner)
    assert sorted(_in_processes(_append_many, db_path, owners)) == [
        (owner, "done") for owner in owners]
    with SQLiteStore(db_path) as store:
        for owner in owners:
            journal = store.read_journal(T, owner)
            assert [(e.seq, e.data) for e in journal] == [(i + 1, i) for i in range(200)]


def test_processes_finishing_runs_at_once_wait_for_each_other(db_path: str) -> None:
    owners = ["p1", "p2", "p3"]
    with SQLiteStore(db_path) as store:
        for owner in owners:
            start(store, run_id=owner, owner=owner)
    assert sorted(_in_processes(_finish_and_resume_many, db_path, owners)) == [
        (owner, "done") for owner in owners]
    with SQLiteStore(db_path) as store:
        for owner in owners:
            journal = store.read_journal(T, owner)
            assert [(e.seq, e.data) for e in journal] == [(i + 1, i) for i in range(100)]


def test_a_write_survives_the_writer_being_killed(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        start(store)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_append_then_die, args=(db_path, "w1"))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    with SQLiteStore(db_path) as store:
        assert [(e.key, e.data) for e in store.read_journal(T, "run-1")] == [("a", {"v": 1})]
        record = store.get_run(T, "run-1")
        assert record is not None and (record.status, record.wake_at) == ("waiting", 5.0)


# --- open_store -----------------------------------------------------------------------------

@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV_VAR, raising=False)
    yield tmp_path


def opened(url: Any) -> tuple[str, int]:
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    try:
        return store.path, pragma(store, "synchronous")
    finally:
        store.close()


def test_open_store_returns_a_store_as_is(db_path: str) -> None:
    with SQLiteStore(db_path) as store:
        assert open_store(store) is store


def test_open_store_defaults_to_agentflow_db_in_the_working_directory(in_tmp: Path) -> None:
    assert DEFAULT_STORE_URL == "sqlite:///agentflow.db"
    assert opened(None) == (str(in_tmp / "agentflow.db"), 2)


def test_open_store_reads_the_environment_variable(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_ENV_VAR, f"sqlite:///{in_tmp}/env.db?durability=normal")
    assert opened(None) == (str(in_tmp / "env.db"), 1)
    monkeypatch.setenv(STORE_ENV_VAR, "")
    assert opened(None) == (str(in_tmp / "agentflow.db"), 2)


@pytest.mark.parametrize(("url", "relative", "synchronous"), [
    ("sqlite:///runs.db", "runs.db", 2),
    ("sqlite:///sub/runs.db", "sub/runs.db", 2),
    ("sqlite:///my%20runs.db", "my runs.db", 2),
    ("sqlite:///runs.db?durability=full", "runs.db", 2),
    ("SQLite:///runs.db?durability=normal&busy_timeout=5", "runs.db", 1),
    ("runs.db", "runs.db", 2),
    ("sub/runs.db", "sub/runs.db", 2),
])
def test_open_store_relative_urls_and_paths(
    in_tmp: Path, url: str, relative: str, synchronous: int
) -> None:
    (in_tmp / "sub").mkdir()
    assert opened(url) == (str(in_tmp / relative), synchronous)


def test_open_store_absolute_urls_and_paths(tmp_path: Path) -> None:
    target = tmp_path / "abs.db"
    assert opened(f"sqlite:///{target}") == (str(target), 2)  # sqlite:////tmp/...
    assert opened(str(target)) == (str(target), 2)
    assert opened(target) == (str(target), 2)


def test_open_store_reopens_a_stores_url(db_path: str) -> None:
    with SQLiteStore(db_path, "full") as store:
        assert opened(store.url) == (db_path, 2)


def test_open_store_busy_timeout_option(db_path: str) -> None:
    store = open_store(f"sqlite:///{db_path}?busy_timeout=0.25")
    assert isinstance(store, SQLiteStore)
    assert pragma(store, "busy_timeout") == 250
    store.close()


@pytest.mark.parametrize("url", [
    "sqlite://:memory:", "sqlite:///:memory:", ":memory:",
])
def test_open_store_refuses_memory_because_it_is_not_durable(url: str) -> None:
    with pytest.raises(StoreError, match="not durable"):
        open_store(url)
    with pytest.raises(StoreError, match="not durable"):
        SQLiteStore(":memory:")


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://root:hunter2@localhost/db", r"unknown store URL 'mysql://root:\*\*\*@localhost"),
    ("redis://localhost", "accepted: sqlite:///relative/path.db"),
    ("sqlite:runs.db", "three slashes"),
    ("sqlite://host/runs.db", "no host"),
    ("sqlite:///", "names no database file"),
    ("sqlite:///runs.db?durability=fast", "durability must be 'normal' or 'full'"),
    ("sqlite:///runs.db?busy_timeout=soon", "busy_timeout must be a number"),
    ("sqlite:///runs.db?journal=off", "unknown option 'journal'"),
    ("", "empty store URL"),
    ("   ", "empty store URL"),
])
def test_open_store_explains_bad_urls(in_tmp: Path, url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as error:
        open_store(url)
    assert "hunter2" not in str(error.value)
    assert not (in_tmp / "runs.db").exists()


def test_open_store_refuses_objects_that_are_not_stores() -> None:
    with pytest.raises(StoreError, match="not int"):
        open_store(42)  # type: ignore[arg-type]


# --- the benchmark baseline -----------------------------------------------------------------

def test_raw_commit_baseline_commits_every_row_with_the_store_pragmas(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("raw_sqlite", REPO / "bench" / "raw_sqlite.py")
    assert spec is not None and spec.loader is not None
    raw_sqlite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(raw_sqlite)
    path = str(tmp_path / "raw.db")
    for autocommit in (False, True):
        durations = raw_sqlite.raw_commit_seconds(path, "normal", 20, autocommit=autocommit)
        assert len(durations) == 20 and all(d > 0 for d in durations)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM raw_commit").fetchone() == (20,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_many_stores_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL can report "database is locked" without consulting the
    busy handler; opening must wait and retry instead of failing."""
    failures: list[BaseException] = []
    for attempt in range(20):
        path = str(tmp_path / f"fresh-{attempt}.db")

        def open_and_close(path: str = path) -> None:
            try:
                SQLiteStore(path).close()
            except BaseException as error:  # collected for the assertion below
                failures.append(error)

        threads = [threading.Thread(target=open_and_close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_the_tenant_journal_size_is_read_from_its_counter_not_summed(db_path: str) -> None:
    """The tenant's quota check reads one counter row, never the tenant's journal (whose
    size is what the quota bounds)."""
    store = SQLiteStore(db_path)
    store.create_run(RunRecord("acme", "r", "p", "running", {}),
                     StoredPlan("acme", "p", "graph", "{}", 0.0), "w", 30.0)
    store.append_journal("acme", "r", "w", [JournalEntry("k", "result", "x" * 100)])
    read: set[str] = set()

    def authorize(action: int, table: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table:
            read.add(table)
        return sqlite3.SQLITE_OK

    store._reader.set_authorizer(authorize)  # the test looks at the store's own connection
    assert store.journal_bytes("acme") == 102
    assert read == {"tenant_usage"}
    store.close()



def test_a_group_of_runs_appends_in_the_same_statements_whatever_its_size(db_path: str) -> None:
    """A group's journal rows go in with one INSERT statement (run once per row) after one
    SELECT of the runs' leases, and each tenant's counter is updated once: the statements
    do not grow with the runs. A run whose lease is gone writes nothing; the others do."""
    store = SQLiteStore(db_path)
    shapes = {}
    for n in (3, 40):
        ids = [f"g{n}-{i}" for i in range(n)]
        for run_id in ids:
            start(store, run_id)
        writes = [JournalAppend(T, run_id, "w1", [JournalEntry("a", "result", 1),
                                                  JournalEntry("b", "result", 22)])
                  for run_id in ids]
        writes.append(JournalAppend(T, ids[0], "intruder", [JournalEntry("c", "result", 3)]))
        answers: list[Any] = []
        statements, _ = traced(store, lambda w=writes, a=answers: a.extend(store.write_group(w)))
        assert answers[:-1] == [None] * n and isinstance(answers[-1], LeaseLost)
        shapes[n] = sorted({statement.split("VALUES")[0] for statement in statements})
        assert [e.key for e in store.read_journal(T, ids[0])] == ["a", "b"]
    assert shapes[3] == shapes[40]
    # 2 entries, "1" and "22", per run: counted once each (no trigger counts them again)
    assert store.journal_bytes(T) == (3 + 40) * 3
    store.close()
