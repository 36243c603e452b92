"""Runs under faults: status while resumed, cancel during execution, poison runs."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, ToolContext, tool
from agentflow.engine.failures import FailurePolicy, failures_so_far, release_after_error
from agentflow.errors import StoreError
from agentflow.store import SQLiteStore
from agentflow.worker import Worker
from tests.support.faults import Faults, inject


def test_a_run_resumed_from_waiting_shows_running_while_it_executes(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"))
    seen: list[str] = []

    @tool
    def look(ctx: ToolContext) -> str:
        seen.append(engine.get_run(ctx.run_id).status)
        return "looked"

    plan = {"format": "agentflow/v1", "name": "gate",
            "steps": [{"id": "ok", "approval": {"prompt": "go?"}},
                      {"id": "look", "tool": "look", "args": {}, "after": ["ok"]}]}
    waiting = engine.execute(plan, tools=[look], run_id="r")
    assert waiting.status == "waiting"
    engine.approve("r", waiting.pending[0].id, by="alice")
    assert engine.resume("r", tools=[look]).status == "completed"
    assert seen == ["running"]


def test_cancel_while_executing_returns_the_cancelled_result(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"))
    started, release = threading.Event(), threading.Event()
    after: list[str] = []

    @tool
    def block() -> str:
        started.set()
        assert release.wait(60)
        return "blocked"

    @tool
    def later() -> str:
        after.append("ran")
        return "later"

    plan = {"format": "agentflow/v1", "name": "cancel",
            "steps": [{"id": "block", "tool": "block", "args": {}},
                      {"id": "later", "tool": "later", "args": {}, "after": ["block"]}]}
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=engine.execute(plan, tools=[block, later], run_id="r")))
    thread.start()
    assert started.wait(30)
    assert engine.cancel("r", reason="operator said stop").status == "cancelled"
    release.set()
    thread.join(60)
    result = outcome["result"]
    assert result.status == "cancelled"
    assert result.error is not None
    assert (result.error.type, result.error.message) == ("Cancelled", "operator said stop")
    assert after == []


# -- poison runs: the same failure on every resume ---------------------------------------

PLAN = {"format": "agentflow/v1", "name": "one",
        "steps": [{"id": "one", "tool": "one", "args": {}}]}


@tool
def one() -> int:
    return 1


def poisoned(path: Path, policy: FailurePolicy) -> Engine:
    """An engine whose store refuses to record any run as completed: every execution of
    a run fails the same way at its last write."""
    engine = Engine(SQLiteStore(str(path)), failure_policy=policy)
    inject(engine.store, Faults(rate=1.0, match=r"^UPDATE runs SET status = \?",  # type: ignore[arg-type]
                                errors=("database or disk is full",),
                                where=lambda sql, params: params[0] == "completed"))
    return engine


def test_a_failed_execution_is_not_retried_before_its_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = poisoned(tmp_path / "runs.db", FailurePolicy(max_failures=5, backoff=200))
    with pytest.raises(StoreError, match="full"):
        engine.execute(PLAN, tools=[one], run_id="p")
    with caplog.at_level(logging.WARNING, logger="agentflow"):
        assert engine.run_due(tools=[one]) == []
        assert engine.run_due(tools=[one]) == []
    assert [r for r in caplog.records if "'p'" in r.getMessage()] == []
    run = engine.store.get_run("default", "p")
    assert run is not None and run.status == "running" and run.lease_owner is None
    assert run.error is not None and run.error["failures"] == 1
    assert "full" in run.error["message"] and "1 of at most 5" in run.error["message"]


def test_a_run_that_fails_every_execution_ends_failed_at_the_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = poisoned(tmp_path / "runs.db", FailurePolicy(max_failures=3, backoff=0))
    with pytest.raises(StoreError, match="full"):
        engine.execute(PLAN, tools=[one], run_id="p")
    with caplog.at_level(logging.WARNING, logger="agentflow"):
        for _ in range(5):
            engine.run_due(tools=[one])
    assert len([r for r in caplog.records if "'p'" in r.getMessage()]) == 2
    result = engine.get_run("p")
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "RunFailedRepeatedly"
    assert "failed 3 times in a row" in result.error.message
    assert "database or disk is full" in result.error.message
    assert engine.store.get_run("default", "p").lease_owner is None  # type: ignore[union-attr]


def test_a_run_whose_pinned_plan_is_gone_ends_failed_at_the_cap(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"),
                    failure_policy=FailurePolicy(max_failures=2, backoff=0))
    plan = {"format": "agentflow/v1", "name": "gate",
            "steps": [{"id": "ok", "approval": {"prompt": "go?"}}]}
    waiting = engine.execute(plan, run_id="p")
    engine.approve("p", waiting.pending[0].id, by="alice")  # due now
    engine.store._conn.execute("DELETE FROM plans")  # type: ignore[attr-defined]
    for _ in range(4):
        engine.run_due()
    result = engine.get_run("p")
    assert result.status == "failed"
    assert result.error is not None and "failed 2 times in a row" in result.error.message
    assert "PlanMismatch" in result.error.message


def test_a_worker_caps_a_poison_run_too(tmp_path: Path) -> None:
    engine = poisoned(tmp_path / "runs.db", FailurePolicy(max_failures=3, backoff=0))
    with pytest.raises(StoreError, match="full"):
        engine.execute(PLAN, tools=[one], run_id="p")
    worker = Worker(engine, tools=[one])
    for _ in range(5):
        worker.run(threading.Event(), once=True)
    result = engine.get_run("p")
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "RunFailedRepeatedly"
    assert "failed 3 times in a row" in result.error.message


def test_an_interrupt_neither_counts_nor_clears_earlier_failures(tmp_path: Path) -> None:
    engine = poisoned(tmp_path / "runs.db", FailurePolicy(max_failures=5, backoff=200))
    with pytest.raises(StoreError, match="full"):
        engine.execute(PLAN, tools=[one], run_id="p")
    run = engine.store.get_run("default", "p")
    assert run is not None and failures_so_far(run) == 1
    assert engine.store.acquire_lease("default", "p", "w", 30.0, time.time())
    release_after_error(engine.store, run, "w", KeyboardInterrupt(), engine.failure_policy)
    after = engine.store.get_run("default", "p")
    assert after is not None and after.lease_owner is None and failures_so_far(after) == 1
