"""The statements a run costs, counted on the real store (SQLite or PostgreSQL): a run start,
a lone 3-step run and a queued run a worker executes. The engine reads the run and its
tenant's policy in one statement, the pinned plan at most once per execution (not at all
for a run it has just created), and each run's pending waits once for its result.

The counts are pinned: a change that adds a statement must say why here; one that removes
a statement lowers the number (the failure lists every statement run)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from agentflow import Engine, tool
from agentflow.engine.leases import new_worker_id
from agentflow.errors import PlanValidationError
from tests.support.faults import record_statements
from tests.support.stores import backend

GATED = {"format": "agentflow/v1", "name": "gated", "steps": [
    {"id": "gate", "approval": {"prompt": "go?"}},
    {"id": "after", "tool": "noop", "args": {"x": 1}, "after": ["gate"]}]}
THREE = {"format": "agentflow/v1", "name": "three", "steps": [
    {"id": "s0", "tool": "noop", "args": {"x": 0}},
    {"id": "s1", "tool": "noop", "args": {"x": 1}, "after": ["s0"]},
    {"id": "s2", "tool": "noop", "args": {"x": 2}, "after": ["s1"]}]}

# SQLite counts BEGIN and COMMIT and its tenant_usage update per journal transaction,
# PostgreSQL its pg_notify. A claimed run: what executing it costs once claimed (the claim
# itself not counted).
START = {"sqlite": 23, "postgres": 13}
LONE_THREE_STEPS = {"sqlite": 24, "postgres": 9}
CLAIMED_THREE_STEPS = {"sqlite": 18, "postgres": 5}


@tool
def noop(x: int) -> int:
    return x


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = Engine(store_url, tools=[noop])
    yield engine
    engine.close()


def counted(engine: Engine, call: Any) -> tuple[Any, list[str]]:
    seen = record_statements(engine.store)
    result = call()
    return result, [" ".join(sql.split()) for sql in seen]


def reads(statements: list[str], table: str) -> list[str]:
    return [sql for sql in statements
            if sql.startswith("SELECT") and f" FROM {table} " in f"{sql} "]


def test_a_run_start_until_its_first_wait(engine: Engine) -> None:
    result, statements = counted(engine, lambda: engine.execute(GATED, run_id="g"))
    assert result.status == "waiting"
    assert len(reads(statements, "policies")) == 1  # read with the run, in one statement
    assert reads(statements, "plans") == []  # the run was just created from this plan
    # the executor's look for a decision before it stops, and the result's pending list
    assert len(reads(statements, "waits")) == 2
    assert len(statements) == START[backend()], "\n".join(statements)


def test_a_lone_three_step_run(engine: Engine) -> None:
    engine.execute(THREE, run_id="warm")  # a second run of a plan costs the same
    for run_id in ("first", "second"):
        result, statements = counted(engine, lambda r=run_id: engine.execute(THREE, run_id=r))
        assert result.status == "completed"
        assert len(reads(statements, "policies")) == 1
        assert reads(statements, "plans") == reads(statements, "waits") == []
        assert len(statements) == LONE_THREE_STEPS[backend()], "\n".join(statements)


def test_a_resume_reads_the_run_with_the_policy(engine: Engine) -> None:
    waiting = engine.execute(GATED, run_id="r")
    engine.approve("r", waiting.pending[0].id, by="alice")
    result, statements = counted(engine, lambda: engine.resume("r"))
    assert result.status == "completed"
    runs = reads(statements, "runs")
    assert len(reads(statements, "policies")) == 1
    assert any("policies" in sql for sql in runs)  # the same statement
    assert len(reads(statements, "plans")) == 1  # the pinned plan, read to check it


def claimed(engine: Engine, policy: dict[str, Any] | None = None,
            worker: Engine | None = None) -> Callable[[], Any]:
    """Submit THREE and claim it as a worker does (`Store.claim`): what then executes it
    on `worker` (default: `engine`) given the claim (its policy replaced by `policy`)."""
    engine.submit(THREE, run_id="q")
    claim = engine.store.claim(new_worker_id(), 30, time.time())
    assert claim is not None and claim.started
    if policy is not None:
        claim = replace(claim, policy=policy)
    runner = worker or engine
    return lambda: runner.run_claimed(claim.run, claim.run.lease_owner or "",
                                      leased_at=time.monotonic(), claim=claim)


def test_a_claimed_run_reads_nothing_its_claim_read(store_url: str) -> None:
    submitter = Engine(store_url, tools=[noop])
    worker = Engine(store_url, tools=[noop])  # as a worker process that never saw the plan
    try:
        result, statements = counted(worker, claimed(submitter, worker=worker))
    finally:
        submitter.close()
        worker.close()
    assert result.status == "completed"
    assert reads(statements, "policies") == reads(statements, "plans") == []
    # no journal page, no waits: only the store's own seq look-ups where it appends
    pages = [sql for sql in reads(statements, "journal") if "MAX(seq)" not in sql]
    assert pages == reads(statements, "waits") == []
    assert len(statements) == CLAIMED_THREE_STEPS[backend()], "\n".join(statements)


def test_a_claims_policy_narrows_the_tools(engine: Engine) -> None:
    with pytest.raises(PlanValidationError, match="noop"):
        claimed(engine, {"allowed_tools": []})()
