"""Crash tests with real processes: a 31-step plan is SIGKILLed at 30 different points.

After each kill the run is resumed in a fresh process. Contracts checked (DESIGN.md §2):
1. a call whose result was committed before the kill never runs again;
2. a call that was in flight is run again with the same idempotency key;
4. the resumed run ends with the same outputs as an uninterrupted one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.crash import (
    assert_resumed_correctly,
    journal_at_kill,
    kill_after_starts,
    read_journal,
    run_worker,
    side_events,
    start_worker,
)
from tests.support.crash_plan import CALLS

KILL_POINTS = list(range(1, CALLS + 1))[:30]
PLAN = "tests.support.crash_plan"


def start(store: Path, side: Path, run_id: str) -> subprocess.Popen[str]:
    return start_worker(PLAN, store, side, run_id)


def finish_worker(store: Path, side: Path, run_id: str) -> dict[str, Any]:
    return run_worker(PLAN, store, side, run_id)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("baseline")
    result = finish_worker(base / "runs.db", base / "side.log", "baseline")
    events = side_events(base / "side.log")
    starts = [e["key"] for e in events if e["event"] == "start"]
    assert result["status"] == "completed"
    assert len(starts) == CALLS and len(set(starts)) == CALLS  # each call ran exactly once
    return result


@pytest.mark.parametrize("starts", KILL_POINTS)
def test_sigkill_then_resume_replays_completed_calls(
    store_url: str, tmp_path: Path, uninterrupted: dict[str, Any], starts: int
) -> None:
    store, side, run_id = store_url, tmp_path / "side.log", f"crash-{starts}"
    kill_after_starts(start(store, side, run_id), side, starts)

    finished, in_flight = journal_at_kill(store, run_id)
    before = len(side_events(side))

    result = finish_worker(store, side, run_id)

    assert result == uninterrupted
    assert_resumed_correctly(side, before, run_id, finished, in_flight)


def test_repeated_kills_of_one_run_still_converge(
    store_url: str, tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    store, side, run_id = store_url, tmp_path / "side.log", "crash-chain"
    for target in (3, 9, 17, 26, 33):
        kill_after_starts(start(store, side, run_id), side, target)
    assert finish_worker(store, side, run_id) == uninterrupted
    ends = [e["key"] for e in side_events(side) if e["event"] == "end"]
    journal = read_journal(store, run_id)
    assert len([e for e in journal if e.kind == "result"]) == CALLS
    assert len(set(ends)) == CALLS
