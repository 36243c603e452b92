"""The store under faults: corrupt rows fail their own run only, a full disk does not leave
the lease held, a store deleted under a worker fails loudly, a read-only store says what to
fix."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, StoreError, tool
from agentflow.store import SQLiteStore
from agentflow.worker import Worker
from tests.support.faults import Faults, inject

GATE_PLAN = {"format": "agentflow/v1", "name": "gate",
             "steps": [{"id": "first", "tool": "count", "args": {}},
                       {"id": "ok", "approval": {"prompt": "go?"}, "after": ["first"]},
                       {"id": "then", "tool": "count", "args": {}, "after": ["ok"]}],
             "outputs": {"then": "${steps.then.output}"}}
counted: list[str] = []


@tool
def count() -> int:
    counted.append("x")
    return len(counted)


def due_gated_runs(db: Path, *run_ids: str) -> Engine:
    """Runs waiting at their gate, approved, so a worker finds them due; each run has a
    plan of its own (they differ by name), so a corrupt plans row concerns one run."""
    engine = Engine(str(db))
    for run_id in run_ids:
        waiting = engine.execute({**GATE_PLAN, "name": f"gate_{run_id}"}, tools=[count],
                                 run_id=run_id)
        engine.approve(run_id, waiting.pending[0].id, by="alice")
    return engine


def tamper(db: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql, params).rowcount >= 1


@pytest.mark.parametrize(("sql", "names"), [
    ("UPDATE runs SET inputs = '{broken' WHERE run_id = ?", "runs row of run 'bad'"),
    ("UPDATE runs SET options = '[' WHERE run_id = ?", "has broken JSON in options"),
    ("UPDATE journal SET data = '{' WHERE run_id = ? AND seq = 2", "journal row 2 of run 'bad'"),
    ("UPDATE plans SET body = '{nope' WHERE plan_hash ="
     " (SELECT plan_hash FROM runs WHERE run_id = ?)", "the plans row"),
])
def test_a_corrupt_row_fails_its_run_alone_and_releases_it(
    tmp_path: Path, sql: str, names: str
) -> None:
    db = tmp_path / "runs.db"
    engine = due_gated_runs(db, "bad", "good")
    tamper(db, sql, "bad")
    results = {result.run_id: result for result in engine.run_due(tools=[count])}
    bad = engine.get_run("bad")
    assert bad.status == "failed"
    assert bad.error is not None and bad.error.type == "CorruptRow"
    assert names in bad.error.message and "changed outside agentflow" in bad.error.message
    assert engine.store.get_run("default", "bad").lease_owner is None  # type: ignore[union-attr]
    assert results["good"].status == "completed"  # the worker went on with the others
    assert [run.run_id for run in engine.list_runs()]  # listing survives the bad row


def test_a_full_disk_at_the_end_does_not_leave_the_lease_held(tmp_path: Path) -> None:
    engine = Engine(SQLiteStore(str(tmp_path / "runs.db")))
    plan = {"format": "agentflow/v1", "name": "one",
            "steps": [{"id": "one", "tool": "count", "args": {}}]}
    # The completion write and the first two tries to give the lease back meet a full disk.
    inject(engine.store, Faults(rate=1.0, match=r"^UPDATE runs SET status = \?",  # type: ignore[arg-type]
                                limit=3, errors=("database or disk is full",)))
    with pytest.raises(StoreError, match="full"):
        engine.execute(plan, tools=[count], run_id="r")
    run = engine.store.get_run("default", "r")
    assert run is not None and run.lease_owner is None and run.status == "running"
    assert Engine(str(tmp_path / "runs.db")).resume("r", tools=[count]).status == "completed"


def test_a_store_deleted_under_a_worker_fails_loudly(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"

    @tool
    def delete_store() -> str:
        for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            name.unlink(missing_ok=True)
        return "deleted"

    plan = {"format": "agentflow/v1", "name": "gone",
            "steps": [{"id": "rm", "tool": "delete_store", "args": {}},
                      {"id": "after", "tool": "count", "args": {}, "after": ["rm"]}]}
    engine = Engine(str(db))
    with pytest.raises(StoreError, match="database file was deleted while the store was open"):
        engine.execute(plan, tools=[delete_store, count], run_id="r")


def test_a_store_replaced_under_a_worker_fails_loudly(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = Engine(str(db))
    engine.execute({"format": "agentflow/v1", "name": "one",
                    "steps": [{"id": "one", "tool": "count", "args": {}}]},
                   tools=[count], run_id="r1")
    shutil.copy(db, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", db)  # "restored from a backup" under the worker
    with pytest.raises(StoreError, match="replaced by another file"):
        engine.execute({"format": "agentflow/v1", "name": "one",
                        "steps": [{"id": "one", "tool": "count", "args": {}}]},
                       tools=[count], run_id="r2")


def test_a_read_only_store_says_which_files_to_fix(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = Engine(SQLiteStore(str(db)))
    os.chmod(f"{db}-shm", 0o444)  # left read-only after the main file's mode was fixed
    # This machine runs tests as root, whom file modes do not stop: SQLite's own error for
    # a read-only database is injected instead, and the message must name the modes.
    inject(engine.store, Faults(rate=1.0, match="^INSERT", limit=1,  # type: ignore[arg-type]
                                errors=("attempt to write a readonly database",)))
    with pytest.raises(StoreError) as raised:
        engine.execute({"format": "agentflow/v1", "name": "one",
                        "steps": [{"id": "one", "tool": "count", "args": {}}]},
                       tools=[count], run_id="r")
    message = str(raised.value)
    assert "readonly" in message and "runs.db-shm 0444" in message
    assert "-wal and -shm files and their directory must all be writable" in message


def test_a_worker_fails_a_corrupt_run_and_goes_on_with_the_others(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = due_gated_runs(db, "bad", "good")
    tamper(db, "UPDATE runs SET inputs = '{broken' WHERE run_id = 'bad'")
    results: list[Any] = []
    Worker(engine, tools=[count], on_result=results.append).run(threading.Event(), once=True)
    assert engine.get_run("good").status == "completed"
    bad = engine.get_run("bad")
    assert bad.status == "failed" and bad.error is not None and bad.error.type == "CorruptRow"
    assert engine.store.get_run("default", "bad").lease_owner is None  # type: ignore[union-attr]
