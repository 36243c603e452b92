"""Contracts 1, 2, 4 and 7 (DESIGN.md §2) with real worker processes.

Workers run `tests.support.contract_worker` (a 6-call plan: seed -> foreach of 3 -> join ->
last) and log every tool call to a side file. A worker "dies mid-call" by SIGKILLing itself
from inside a tool, right after logging the call's start: no mocks. The test process then
resumes the run with the same tools. (`test_crash_graph.py` kills a bigger plan from the
outside at random points; these tests pin each contract to one exact call.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    Engine,
    PlanMismatch,
    PlanValidationError,
    RunLeased,
    execute_plan,
    get_run,
    resume,
)
from tests.support.contract_worker import (
    CALL_KEYS,
    EXPECTED_OUTPUTS,
    INPUTS,
    TOOLS,
    build_plan,
    starts,
)
from tests.support.store_rows import dump, journal

ROOT = Path(__file__).resolve().parent.parent


def spawn(store: Path, side: Path, run_id: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.contract_worker", str(store), run_id],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AF_SIDE_FILE": str(side), **env})


def run_killed_worker(store: Path, side: Path, run_id: str, kill_key: str) -> None:
    """A worker that dies (SIGKILL) in the middle of call `kill_key`."""
    worker = spawn(store, side, run_id, AF_KILL_KEY=kill_key)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, err


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The side file, also for the tools when they run in this process."""
    path = tmp_path / "side.log"
    monkeypatch.setenv("AF_SIDE_FILE", str(path))
    monkeypatch.delenv("AF_KILL_KEY", raising=False)
    return path


# -- contract 1: racing workers -----------------------------------------------------------


@pytest.mark.parametrize("round_", [1, 2])
def test_racing_processes_execute_every_call_exactly_once(
    store_url: str, tmp_path: Path, side: Path, round_: int
) -> None:
    store, go = store_url, tmp_path / "go"
    workers = [spawn(store, side, "race", AF_GO_FILE=str(go), AF_SLEEP="0.05")
               for _ in range(3)]
    go.touch()
    answers: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))

    executed = Counter(event["key"] for event in starts(side))
    assert executed == Counter(CALL_KEYS)  # each call once, over all three processes
    assert len({event["pid"] for event in starts(side)}) == 1  # one worker did all the work
    for answer in answers:
        assert answer in ({"outcome": "RunLeased"},
                          {"outcome": "result", "status": "completed",
                           "outputs": EXPECTED_OUTPUTS})
    assert any(answer["outcome"] == "result" for answer in answers)
    assert get_run("race", store=str(store)).outputs == EXPECTED_OUTPUTS


def test_stalled_worker_loses_its_lease_and_writes_nothing_after_take_over(
    store_url: str, side: Path
) -> None:
    """A worker frozen mid-call (SIGSTOP) past its lease is taken over; when it wakes up,
    its late result is fenced off: every call has exactly one journaled result."""
    store = store_url
    worker = spawn(store, side, "stall", AF_LEASE="2.0", AF_SLEEP="0.3")
    deadline = time.monotonic() + 30
    while not any(e["key"] == "join" for e in starts(side)):
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    worker.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(RunLeased):  # the frozen worker's lease is still valid
            resume("stall", tools=TOOLS, store=str(store))
        frozen = Engine(str(store)).store.get_run("default", "stall").lease_expires_at  # type: ignore[union-attr]
        assert frozen is not None
        while time.time() <= frozen:  # until the frozen worker's lease has lapsed
            time.sleep(0.05)
        result = resume("stall", tools=TOOLS, store=str(store))
    finally:
        worker.send_signal(signal.SIGCONT)
    out, err = worker.communicate(timeout=30)

    assert (result.status, result.outputs) == ("completed", EXPECTED_OUTPUTS)
    assert json.loads(out.strip().splitlines()[-1]) == {"outcome": "LeaseLost"}, err
    results = Counter(r["key"] for r in journal(store, "stall") if r["kind"] == "result")
    assert results == Counter(CALL_KEYS)
    final = get_run("stall", store=str(store))
    assert (final.status, final.outputs) == ("completed", EXPECTED_OUTPUTS)


# -- contract 2: a call in flight at a crash is retried with the same key ------------------


def test_call_in_flight_at_crash_is_retried_with_same_idempotency_key(
    store_url: str, side: Path
) -> None:
    store = store_url
    run_killed_worker(store, side, "r2", kill_key="join")
    first = [e for e in starts(side) if e["key"] == "join"]
    assert [e["attempt"] for e in first] == [1]
    assert get_run("r2", store=str(store)).status == "running"

    result = resume("r2", tools=TOOLS, store=str(store))

    assert result.status == "completed"
    assert result.outputs == EXPECTED_OUTPUTS
    joins = [e for e in starts(side) if e["key"] == "join"]
    assert [e["attempt"] for e in joins] == [1, 2]
    assert joins[1]["idem"] == joins[0]["idem"]
    assert joins[1]["pid"] == os.getpid() != joins[0]["pid"]
    executed = Counter(event["key"] for event in starts(side))
    # the steps before `join` had finished: none of them ran again
    assert executed == {"seed": 1, "fan[0]": 1, "fan[1]": 1, "fan[2]": 1, "join": 2, "last": 1}
    assert result.steps["join"].attempts == 2


def test_in_flight_intent_is_journaled_before_the_crash(
    store_url: str, side: Path
) -> None:
    store = store_url
    run_killed_worker(store, side, "r2b", kill_key="seed")
    rows = journal(store, "r2b")
    assert [(r["key"], r["kind"], r["attempt"]) for r in rows] == [("seed", "intent", 1)]
    assert rows[0]["data"] == {"args": {"n": 2}}


# -- contract 4: resume = same outcome --------------------------------------------------


def test_uninterrupted_run_outputs(store_url: str, side: Path) -> None:
    result = execute_plan(build_plan(), tools=TOOLS, inputs=INPUTS, run_id="clean",
                          store=store_url)
    assert result.status == "completed"
    assert result.outputs == EXPECTED_OUTPUTS
    assert Counter(e["key"] for e in starts(side)) == Counter(CALL_KEYS)


@pytest.mark.parametrize("kill_key", CALL_KEYS)
def test_killed_at_any_call_then_resumed_ends_like_uninterrupted(
    store_url: str, side: Path, kill_key: str
) -> None:
    store, run_id = store_url, f"k-{kill_key}"
    run_killed_worker(store, side, run_id, kill_key=kill_key)
    rows = journal(store, run_id)
    done_before = {r["key"] for r in rows if r["kind"] == "result"}
    in_flight = {r["key"] for r in rows if r["kind"] == "intent"} - done_before
    assert kill_key in in_flight
    started_before = len(starts(side))

    result = resume(run_id, tools=TOOLS, store=str(store))

    assert result.status == "completed"
    assert result.outputs == EXPECTED_OUTPUTS
    rerun = [e["key"] for e in starts(side)[started_before:]]
    assert kill_key in rerun
    assert not done_before & set(rerun), "a call that had completed ran again"
    retried = {e["key"]: e["attempt"] for e in starts(side)[started_before:]
               if e["key"] in in_flight}
    assert retried == dict.fromkeys(in_flight, 2)  # attempt 1 died with the worker
    results = Counter(r["key"] for r in journal(store, run_id) if r["kind"] == "result")
    assert results == Counter(CALL_KEYS)


# -- contract 7: a crashed run refuses another plan and keeps its state ------------------


def test_crashed_run_refuses_another_plan_and_stays_resumable(
    store_url: str, side: Path
) -> None:
    store = store_url
    run_killed_worker(store, side, "r7", kill_key="join")
    other = build_plan()
    other["steps"][3]["args"] = {"total": "${steps.seed.output.value}"}
    before = dump(store)

    with pytest.raises(PlanMismatch, match="r7"):
        execute_plan(other, tools=TOOLS, inputs=INPUTS, run_id="r7", store=str(store))

    assert dump(store) == before
    assert Counter(e["key"] for e in starts(side))["join"] == 1  # nothing ran
    assert resume("r7", tools=TOOLS, store=str(store)).outputs == EXPECTED_OUTPUTS


def test_resuming_a_crashed_run_without_its_tools_is_refused_and_changes_nothing(
    store_url: str, side: Path
) -> None:
    store = store_url
    run_killed_worker(store, side, "r7t", kill_key="fan[0]")
    before = dump(store)

    with pytest.raises(PlanValidationError, match="join"):
        resume("r7t", tools=[t for t in TOOLS if t.name != "join"], store=str(store))

    assert dump(store) == before
    assert resume("r7t", tools=TOOLS, store=str(store)).outputs == EXPECTED_OUTPUTS


# -- a worker picks up a run whose process died ---------------------------------------------

def test_a_worker_resumes_a_run_whose_process_died_once_its_lease_expired(
    store_url: str, side: Path,
) -> None:
    store = store_url
    worker = spawn(store, side, "orphan", AF_KILL_KEY="join", AF_LEASE="0.5")
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, err
    engine = Engine(str(store))
    assert engine.get_run("orphan").status == "running"  # nobody will come back for it
    time.sleep(0.6)  # the dead worker's lease expires

    [result] = engine.run_due(tools=TOOLS)

    assert (result.run_id, result.status, result.outputs) == (
        "orphan", "completed", EXPECTED_OUTPUTS)
    ran = Counter(event["key"] for event in starts(side))
    assert ran == {**dict.fromkeys(CALL_KEYS, 1), "join": 2}  # only the in-flight call again
    assert engine.run_due(tools=TOOLS) == []
