"""Upgrading a store written by an older agentflow: runs waiting in it finish after.

`fixtures/store_v2.db` was written by agentflow at schema version 2 (before the `queued`
status): with tool `note`, it ran three plans up to a wait and left them waiting: an
approval (`approval-run`), an event `go` (`event-run`, tenant `acme`) and a 1 s timer
(`timer-run`, long due). Each ran `before` once, and runs `after` once it continues.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agentflow import Engine, tool
from agentflow.errors import StoreError
from agentflow.store import SQLiteStore
from agentflow.store.schema import latest_version

FIXTURE = Path(__file__).parent / "fixtures" / "store_v2.db"
calls: list[str] = []


@tool
def note(text: str) -> str:
    calls.append(text)
    return text


def version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        found: str = conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    return found


@pytest.fixture
def v2_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    assert version(path) == "2"
    calls.clear()
    return path


def test_waiting_runs_of_a_version_2_store_finish_after_the_upgrade(v2_file: Path) -> None:
    engine = Engine(str(v2_file), tools=[note], max_inline_wait=0.0)
    assert version(v2_file) == str(latest_version())
    assert {r.run_id: r.status for r in engine.list_runs()} == {
        "approval-run": "waiting", "timer-run": "waiting"}
    (pending,) = engine.get_run("approval-run").pending
    engine.approve("approval-run", pending.id, by="alice")
    engine.send_event("event-run", "go", {"n": 1}, tenant="acme")
    finished = engine.run_due(tools=[note])
    assert sorted((r.run_id, r.status, r.outputs) for r in finished) == [
        ("approval-run", "completed", {"last": "after"}),
        ("event-run", "completed", {"last": "after"}),
        ("timer-run", "completed", {"last": "after"}),
    ]
    assert calls == ["after", "after", "after"]  # `before` was replayed, never re-run
    engine.close()


def test_the_upgrade_is_one_transaction(v2_file: Path) -> None:
    """A migration that fails part-way leaves the file exactly at version 2."""
    with sqlite3.connect(v2_file) as conn:  # a clash the third migration will hit
        conn.execute("CREATE TABLE clash (x)")
        conn.execute("CREATE INDEX runs_queue ON clash (x)")
    conn.close()
    with pytest.raises(StoreError, match="runs_queue"):
        SQLiteStore(str(v2_file))
    assert version(v2_file) == "2"
    with sqlite3.connect(v2_file) as conn:
        conn.execute("DROP TABLE clash")
    conn.close()
    SQLiteStore(str(v2_file)).close()
    assert version(v2_file) == str(latest_version())


def test_a_store_newer_than_this_code_is_refused_naming_both_versions(v2_file: Path) -> None:
    with sqlite3.connect(v2_file) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match=(
            f"sqlite:///{v2_file} has schema version 99, newer than the {latest_version()}")):
        Engine(str(v2_file))


def test_the_upgrade_counts_each_tenants_journal_once(v2_file: Path) -> None:
    with sqlite3.connect(v2_file) as conn:
        summed = dict(conn.execute(
            "SELECT tenant_id, SUM(LENGTH(data)) FROM journal GROUP BY tenant_id").fetchall())
    conn.close()
    assert set(summed) == {"default", "acme"} and all(summed.values())
    store = SQLiteStore(str(v2_file))
    assert {tenant: store.journal_bytes(tenant) for tenant in summed} == summed
    store.close()
