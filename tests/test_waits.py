"""Durable waits: timers, wait_until and events; a waiting run is only rows in the store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentflow import Engine, RunFinished, tool

executions: list[str] = []


@tool
def record(label: str) -> str:
    executions.append(label)
    return label


@pytest.fixture(autouse=True)
def _reset() -> None:
    executions.clear()


def plan(*steps: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"format": "agentflow/v1", "steps": list(steps), "outputs": outputs or {}}


def engine_at(store_url: str, inline: float = 0.0) -> Engine:
    return Engine(store_url, tools=[record], max_inline_wait=inline)


def test_a_long_sleep_leaves_the_run_waiting_with_a_wake_up_time(store_url: str) -> None:
    engine = engine_at(store_url)
    before = time.time()
    result = engine.execute(plan(
        {"id": "first", "tool": "record", "args": {"label": "first"}},
        {"id": "nap", "sleep": 3600, "after": ["first"]},
        {"id": "later", "tool": "record", "args": {"label": "later"}, "after": ["nap"]}),
        run_id="r1")
    assert result.status == "waiting"
    assert [p.kind for p in result.pending] == ["timer"]
    run = engine.store.get_run("default", "r1")
    assert run is not None and run.lease_owner is None
    assert run.wake_at is not None and before + 3600 <= run.wake_at <= time.time() + 3600
    assert engine.store.due_runs(time.time()) == []
    assert executions == ["first"]


def test_a_resumed_sleep_keeps_its_first_due_time(store_url: str) -> None:
    engine = engine_at(store_url)
    engine.execute(plan({"id": "nap", "sleep": 3600}), run_id="r1")
    due = engine.store.get_run("default", "r1").wake_at  # type: ignore[union-attr]
    time.sleep(0.02)
    engine.resume("r1")
    assert engine.store.get_run("default", "r1").wake_at == due  # type: ignore[union-attr]


def test_a_short_sleep_is_sat_out_in_process(store_url: str) -> None:
    engine = engine_at(store_url, inline=1.0)
    result = engine.execute(plan(
        {"id": "nap", "sleep": 0.05},
        {"id": "after", "tool": "record", "args": {"label": "after"}, "after": ["nap"]}),
        run_id="r1")
    assert result.status == "completed" and executions == ["after"]


def test_a_timer_due_in_the_past_fires_once(store_url: str) -> None:
    engine = engine_at(store_url)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    steps = (
        {"id": "at", "wait_until": past},
        {"id": "after", "tool": "record", "args": {"label": "after"}, "after": ["at"]})
    result = engine.execute(plan(*steps), run_id="r1")
    assert result.status == "completed"
    assert engine.execute(plan(*steps), run_id="r1").status == "completed"
    assert executions == ["after"]
    fired = [e for e in engine.store.read_journal("default", "r1")
             if e.key == "at" and e.kind == "result"]
    assert len(fired) == 1


def test_worker_resumes_a_run_once_its_timer_is_due(store_url: str) -> None:
    engine = engine_at(store_url)
    engine.execute(plan({"id": "nap", "sleep": 0.5},
                        {"id": "after", "tool": "record", "args": {"label": "after"},
                         "after": ["nap"]}), run_id="r1")
    assert engine.run_due() == []
    time.sleep(0.6)
    [result] = engine.run_due()
    assert result.status == "completed" and executions == ["after"]
    assert engine.run_due() == []


EVENT_PLAN = plan(
    {"id": "first", "tool": "record", "args": {"label": "first"}},
    {"id": "signal", "wait_for_event": "payment", "after": ["first"]},
    {"id": "then", "tool": "record", "args": {"label": "${steps.signal.output.id}"}},
    outputs={"payload": "${steps.signal.output}"})


def test_an_event_sent_after_the_wait_reaches_the_run(store_url: str) -> None:
    engine = engine_at(store_url)
    assert engine.execute(EVENT_PLAN, run_id="r1").status == "waiting"
    engine.send_event("r1", "payment", {"id": "pay-1"})
    [result] = engine.run_due()
    assert result.outputs == {"payload": {"id": "pay-1"}}
    assert executions == ["first", "pay-1"]


def test_an_event_sent_before_the_wait_is_not_lost(store_url: str) -> None:
    engine = engine_at(store_url)
    gate = plan({"id": "hold", "approval": {"prompt": "start?"}},
                *[{**s, "after": ["hold"]} if s["id"] == "first" else s
                  for s in EVENT_PLAN["steps"]], outputs=EVENT_PLAN["outputs"])
    waiting = engine.execute(gate, run_id="r1")
    engine.send_event("r1", "payment", {"id": "early"})
    engine.approve("r1", waiting.pending[0].id, by="alice")
    assert engine.resume("r1").outputs == {"payload": {"id": "early"}}


def test_each_event_is_taken_once(store_url: str) -> None:
    engine = engine_at(store_url)
    two = plan({"id": "a", "wait_for_event": "tick"},
               {"id": "b", "wait_for_event": "tick", "after": ["a"]},
               outputs={"a": "${steps.a.output}", "b": "${steps.b.output}"})
    engine.execute(two, run_id="r1")
    engine.send_event("r1", "tick", 1)
    engine.send_event("r1", "tick", 2)
    assert engine.resume("r1").outputs == {"a": 1, "b": 2}


def test_an_event_wait_times_out(store_url: str) -> None:
    engine = engine_at(store_url)
    timed = plan({"id": "signal", "wait_for_event": "never", "timeout": 0.5})
    assert engine.execute(timed, run_id="r1").status == "waiting"
    time.sleep(0.6)
    result = engine.resume("r1")
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "StepTimeout"


def test_events_to_a_finished_run_are_refused(store_url: str) -> None:
    engine = engine_at(store_url)
    engine.execute(plan({"id": "a", "tool": "record", "args": {"label": "a"}}), run_id="r1")
    with pytest.raises(RunFinished):
        engine.send_event("r1", "late", None)


def test_cancel_stops_a_waiting_run(store_url: str) -> None:
    engine = engine_at(store_url)
    engine.execute(EVENT_PLAN, run_id="r1")
    assert engine.cancel("r1", reason="no longer needed").status == "cancelled"
    assert engine.resume("r1").status == "cancelled"
    assert executions == ["first"]
