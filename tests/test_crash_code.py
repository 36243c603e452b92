"""Crash tests with real processes for code plans: a 24-call plan with an approval is
SIGKILLed at 18 points (before, at and after the approval) and resumed in fresh processes.

Checked after each kill (DESIGN.md §2): a call whose result was committed before the kill
never runs again (1); a call that was in flight runs again with the same idempotency key
(2); the run ends with the same outputs as an uninterrupted one (4, 5).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine
from tests.support.code_crash_plan import CALLS, CALLS_BEFORE_APPROVAL
from tests.support.crash import (
    assert_resumed_correctly,
    journal_at_kill,
    kill_after_starts,
    read_journal,
    run_worker,
    side_events,
    start_worker,
)

KILL_POINTS = [1, 2, 4, 6, 7, 8, 10, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]


PLAN = "tests.support.code_crash_plan"


def start(store: Path, side: Path, run_id: str) -> subprocess.Popen[str]:
    return start_worker(PLAN, store, side, run_id)


def run(store: Path, side: Path, run_id: str) -> dict[str, Any]:
    return run_worker(PLAN, store, side, run_id)


def approve_pending(store: Path, run_id: str, result: dict[str, Any]) -> None:
    [pending] = result["pending"]
    engine = Engine(str(store))
    engine.approve(run_id, pending, by="tester")
    engine.close()


def finish(store: Path, side: Path, run_id: str) -> dict[str, Any]:
    """Resume until the run completes, approving when it waits."""
    result = run(store, side, run_id)
    if result["status"] == "waiting":
        approve_pending(store, run_id, result)
        result = run(store, side, run_id)
    return result


def kill_at(store: Path, side: Path, run_id: str, starts: int) -> None:
    """Run until `starts` calls began, approving on the way if the point is past the gate."""
    if starts > CALLS_BEFORE_APPROVAL:
        approve_pending(store, run_id, run(store, side, run_id))
    kill_after_starts(start(store, side, run_id), side, starts)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("baseline")
    waiting = run(base / "runs.db", base / "side.log", "baseline")
    assert waiting["status"] == "waiting"
    result = finish(base / "runs.db", base / "side.log", "baseline")
    starts = [e["key"] for e in side_events(base / "side.log") if e["event"] == "start"]
    assert result["status"] == "completed"
    assert len(starts) == CALLS and len(set(starts)) == CALLS  # each call ran exactly once
    assert {"c8.0.c1", "c8.3.c2", "c13", "c18"} <= set(starts)  # thunks; after the gate c12
    return result


@pytest.mark.parametrize("starts", KILL_POINTS)
def test_sigkill_then_resume_replays_completed_calls(
    store_url: str, tmp_path: Path, uninterrupted: dict[str, Any], starts: int
) -> None:
    store, side, run_id = store_url, tmp_path / "side.log", f"crash-{starts}"
    kill_at(store, side, run_id, starts)

    finished, in_flight = journal_at_kill(store, run_id)
    before = len(side_events(side))

    result = finish(store, side, run_id)

    assert result == uninterrupted
    assert_resumed_correctly(side, before, run_id, finished, in_flight)


def test_repeated_kills_of_one_run_still_converge(
    store_url: str, tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    store, side, run_id = store_url, tmp_path / "side.log", "crash-chain"
    for target in (3, 9, 13):
        kill_after_starts(start(store, side, run_id), side, target)
    approve_pending(store, run_id, run(store, side, run_id))
    kill_after_starts(start(store, side, run_id), side, 20)
    assert finish(store, side, run_id) == uninterrupted
    journal = read_journal(store, run_id)
    assert len({e.key for e in journal if e.kind == "result"}) == CALLS
    ends = {e["key"] for e in side_events(side) if e["event"] == "end"}
    assert len(ends) == CALLS
