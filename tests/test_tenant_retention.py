"""Issue 13, retention: `engine.prune` deletes finished runs with everything they own, in
bounded batches, and the plans nothing refers to any more; nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agentflow import Engine, tool


@tool
def echo(text: str) -> str:
    return text


def plan(label: str, wait: str | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "say", "tool": "echo", "args": {"text": label}}]
    if wait == "approval":
        steps.append({"id": "ok", "approval": {"prompt": "go?"}, "after": ["say"]})
    if wait == "event":
        steps.append({"id": "hear", "wait_for_event": "go", "after": ["say"]})
    return {"format": "agentflow/v1", "name": label, "steps": steps}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = Engine(store_url)
    engine.tenant("acme", tools=[echo])
    engine.tenant("globex", tools=[echo])
    yield engine
    engine.close()


def counts(engine: Engine, tenant: str, run_id: str) -> tuple[int, int, int]:
    store = engine.store
    return (len(store.read_journal(tenant, run_id)), len(store.list_waits(tenant, run_id)),
            len(store.list_events(tenant, run_id)))


def test_prune_deletes_finished_runs_with_their_rows_and_keeps_the_rest(
        engine: Engine) -> None:
    acme, globex = engine.tenant("acme"), engine.tenant("globex")
    done = acme.execute(plan("done"), run_id="done")
    gated = acme.execute(plan("gated", "approval"), run_id="rejected")
    acme.reject("rejected", gated.pending[0].id, by="bob")
    acme.resume("rejected")
    acme.execute(plan("ears", "event"), run_id="cancelled")
    acme.send_event("cancelled", "other", {"x": 1})
    acme.cancel("cancelled")
    acme.execute(plan("gated", "approval"), run_id="waiting")
    globex.execute(plan("done"), run_id="done")
    assert done.status == "completed" and counts(engine, "acme", "cancelled")[2] == 1
    assert acme.prune(older_than=timedelta(hours=1)) == []  # nothing is that old yet
    pruned = acme.prune(older_than=0, dry_run=True)
    assert sorted(pruned) == [("acme", "cancelled"), ("acme", "done"), ("acme", "rejected")]
    assert engine.store.get_run("acme", "done") is not None
    assert sorted(engine.prune(older_than=0, tenant="acme", batch=2)) == sorted(pruned)
    for run_id in ("done", "rejected", "cancelled"):
        assert engine.store.get_run("acme", run_id) is None
        assert counts(engine, "acme", run_id) == (0, 0, 0)
    assert engine.store.get_run("acme", "waiting").status == "waiting"
    assert engine.store.get_run("globex", "done").status == "completed"
    done_plan = engine.store.get_run("globex", "done").plan_hash
    assert engine.store.get_plan("acme", done_plan) is None  # no run of acme refers to it
    assert engine.store.get_plan("globex", done_plan) is not None


def test_prune_by_status_and_keeps_plans_the_registry_or_a_run_refers_to(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    version = acme.plans.put("greet", plan("greet"))
    acme.execute("greet", run_id="a")
    acme.execute("greet", run_id="b")
    acme.execute(plan("gated", "approval"), run_id="c")
    acme.cancel("c")
    assert engine.prune(older_than=0, status="cancelled") == [("acme", "c")]
    assert engine.prune(older_than=0, status=["completed"]) == [("acme", "a"), ("acme", "b")]
    assert engine.store.list_runs("acme") == []
    assert engine.store.get_plan("acme", version) is not None  # the registry keeps it
    assert acme.execute("greet", run_id="d").status == "completed"
    with pytest.raises(ValueError, match="finished runs"):
        engine.prune(older_than=0, status=("waiting",))
    with pytest.raises(ValueError, match="older_than"):
        engine.prune(older_than=-1)


def test_prune_deletes_a_runs_trace_context_too(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(plan("traced"), run_id="traced")
    acme.execute(plan("kept", "approval"), run_id="kept")
    engine.store.put_trace("acme", "traced", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    engine.store.put_trace("acme", "kept", "00-" + "c" * 32 + "-" + "d" * 16 + "-01")
    assert engine.prune(older_than=0, tenant="acme") == [("acme", "traced")]
    assert engine.store.get_trace("acme", "traced") is None
    assert engine.store.get_trace("acme", "kept") is not None
