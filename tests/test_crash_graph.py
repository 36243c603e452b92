"""Crash tests with real processes: a 31-step plan is SIGKILLed at 30 different points.

After each kill the run is resumed in a fresh process. Contracts checked (DESIGN.md §2):
1. a call whose result was committed before the kill never runs again;
2. a call that was in flight is run again with the same idempotency key;
4. the resumed run ends with the same outputs as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow.store import open_store
from tests.support.crash_plan import CALLS

ROOT = Path(__file__).resolve().parent.parent
KILL_POINTS = list(range(1, CALLS + 1, 1))[:30]


def start_worker(store: Path, side: Path, run_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_plan", str(store), str(side), run_id],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def finish_worker(store: Path, side: Path, run_id: str) -> dict[str, Any]:
    worker = start_worker(store, side, run_id)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def side_events(side: Path) -> list[dict[str, Any]]:
    if not side.exists():
        return []
    lines = side.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def kill_after_starts(worker: subprocess.Popen[str], side: Path, starts: int) -> None:
    """SIGKILL the worker as soon as `starts` tool calls have begun (plus a random jitter)."""
    deadline = time.monotonic() + 60
    while sum(e["event"] == "start" for e in side_events(side)) < starts:
        assert worker.poll() is None, "worker finished before the kill point"
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.0005)
    time.sleep(random.uniform(0, 0.004))
    worker.send_signal(signal.SIGKILL)
    worker.wait()


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
    tmp_path: Path, uninterrupted: dict[str, Any], starts: int
) -> None:
    store, side, run_id = tmp_path / "runs.db", tmp_path / "side.log", f"crash-{starts}"
    kill_after_starts(start_worker(store, side, run_id), side, starts)

    journal = open_store(str(store)).read_journal("default", run_id)
    finished = {e.key for e in journal if e.kind in ("result", "error")}
    intents = {e.key: (e.args_hash, e.attempt) for e in journal if e.kind == "intent"}
    in_flight = {key: attempt for key, (_, attempt) in intents.items() if key not in finished}
    assert finished or in_flight, "the kill came before the run started"
    before = len(side_events(side))
    idem_before = {e["key"]: e["idem"] for e in side_events(side)}

    result = finish_worker(store, side, run_id)

    assert result == uninterrupted
    rerun = [e for e in side_events(side)[before:] if e["event"] == "start"]
    assert not [e["key"] for e in rerun if e["key"] in finished], "a completed call ran again"
    for key, attempt in in_flight.items():
        again = [e for e in rerun if e["key"] == key]
        assert again, f"in-flight call {key} was not retried"
        assert again[0]["attempt"] > attempt
        if key in idem_before:
            assert again[0]["idem"] == idem_before[key]


def test_repeated_kills_of_one_run_still_converge(
    tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    store, side, run_id = tmp_path / "runs.db", tmp_path / "side.log", "crash-chain"
    for target in (3, 9, 17, 26, 33):
        kill_after_starts(start_worker(store, side, run_id), side, target)
    assert finish_worker(store, side, run_id) == uninterrupted
    ends = [e["key"] for e in side_events(side) if e["event"] == "end"]
    journal = open_store(str(store)).read_journal("default", run_id)
    assert len([e for e in journal if e.kind == "result"]) == CALLS
    assert len(set(ends)) == CALLS
