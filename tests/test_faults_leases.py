"""Leases under faults: renewal through transient store errors, a lapsed lease stops the
worker before its next call, and a worker frozen past its lease (SIGSTOP, then SIGCONT)
neither runs a completed call again nor gets its late writes into the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, LeaseLost, RunLeased, tool
from agentflow.store import SQLiteStore
from tests.support.faults import Faults, inject
from tests.support.frozen_worker import TOOLS

ROOT = Path(__file__).resolve().parent.parent
RENEW = r"^UPDATE runs SET lease_expires_at"


def poll(condition: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Blocker:
    """A tool whose first execution blocks until released; later ones return at once."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.executions = 0

    def tool(self) -> Any:
        def slow() -> str:
            self.executions += 1
            if self.executions == 1:
                self.started.set()
                assert self.release.wait(60)
            return "done"
        return tool(slow)


def slow_plan() -> dict[str, Any]:
    return {"format": "agentflow/v1", "name": "slow",
            "steps": [{"id": "slow", "tool": "slow", "args": {}},
                      {"id": "next", "tool": "next_call", "args": {}, "after": ["slow"]}],
            "outputs": {"next": "${steps.next.output}"}}


def test_lease_renewal_retries_transient_store_errors(tmp_path: Path) -> None:
    blocker = Blocker()
    slow = blocker.tool()
    next_calls: list[str] = []
    next_call = tool(name="next_call")(lambda: next_calls.append("x") or "next")
    worker = Engine(SQLiteStore(str(tmp_path / "runs.db")), lease_seconds=0.6)
    faults = inject(worker.store, Faults(rate=1.0, match=RENEW, limit=2,
                                         errors=("database is locked",)))
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=worker.execute(slow_plan(), tools=[slow, next_call], run_id="r")))
    thread.start()
    assert blocker.started.wait(30)
    poll(lambda: sum(faults.injected.values()) == 2, "two failed renewals")
    time.sleep(1.5)  # two and a half leases: renewed since, or lapsed

    other = Engine(str(tmp_path / "runs.db"), lease_seconds=0.6)
    assert other.store.orphaned_runs(time.time()) == []
    with pytest.raises(RunLeased):
        other.resume("r", tools=[slow, next_call])
    blocker.release.set()
    thread.join(60)
    assert outcome["result"].status == "completed"
    assert blocker.executions == 1 and next_calls == ["x"]


def test_a_lapsed_lease_stops_the_worker_before_its_next_call(tmp_path: Path) -> None:
    blocker = Blocker()
    slow = blocker.tool()
    next_calls: list[str] = []
    next_call = tool(name="next_call")(lambda: next_calls.append("x") or "next")
    worker = Engine(SQLiteStore(str(tmp_path / "runs.db")), lease_seconds=0.6)
    inject(worker.store, Faults(rate=1.0, match=RENEW, errors=("disk I/O error",)))
    errors: list[BaseException] = []

    def execute() -> None:
        try:
            worker.execute(slow_plan(), tools=[slow, next_call], run_id="r")
        except LeaseLost as error:
            errors.append(error)

    thread = threading.Thread(target=execute)
    thread.start()
    assert blocker.started.wait(30)
    poll(lambda: worker.store.orphaned_runs(time.time()) != [], "the lease to lapse")
    blocker.release.set()
    thread.join(60)
    # Nobody took the run over, so a write would still pass the fence: the worker must
    # stop by itself, because it cannot know.
    assert len(errors) == 1 and next_calls == []

    later = Engine(str(tmp_path / "runs.db"))
    assert later.resume("r", tools=[slow, next_call]).status == "completed"
    assert blocker.executions == 1 and next_calls == ["x"]


# -- a worker frozen past its lease -------------------------------------------------------


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def side_starts(side: Path) -> Counter[tuple[str, int]]:
    lines = [json.loads(line) for line in side.read_text().splitlines()]
    return Counter((line["key"], line["pid"]) for line in lines if line["event"] == "start")


@pytest.mark.parametrize("kind", ["graph", "code"])
@pytest.mark.parametrize("freeze", ["between", "inside"])
def test_a_worker_frozen_past_its_lease_runs_no_completed_call_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freeze: str, kind: str
) -> None:
    """`between`: frozen after `first` is journaled, as call `second` starts. `inside`:
    frozen in the middle of `second`. Another worker completes the run meanwhile."""
    first, second, third = ("c1", "c2", "c3") if kind == "code" else (
        "first", "second", "third")
    db, side = tmp_path / "runs.db", tmp_path / "side.log"
    monkeypatch.setenv("AF_SIDE_FILE", str(side))
    frozen = subprocess.Popen(
        [sys.executable, "-m", "tests.support.frozen_worker", str(db), "r"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AF_LEASE": "1.0", "AF_FREEZE": freeze,
             "AF_PLAN": kind, "AF_CONT_FILE": str(tmp_path / "continue")})
    try:
        poll(lambda: stopped(frozen.pid), "the worker to stop itself", 60)
        rescuer = Engine(str(db), lease_seconds=1.0)
        poll(lambda: rescuer.store.orphaned_runs(time.time()) != [], "the lease to expire")
        [result] = rescuer.run_due(tools=TOOLS)
        assert result.status == "completed"
        journal_before = rescuer.journal("r")
    finally:
        (tmp_path / "continue").touch()
        frozen.send_signal(signal.SIGCONT)
    out, err = frozen.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1]) == {"outcome": "LeaseLost"}, err

    me, it = os.getpid(), frozen.pid
    starts = side_starts(side)
    assert starts[(first, it)] == 1 and starts[(first, me)] == 0
    assert starts[(third, me)] == 1 and starts[(third, it)] == 0
    if freeze == "between":  # the frozen worker must not start `second` once it wakes
        assert starts[(second, it)] == 0 and starts[(second, me)] == 1
    else:  # in flight at the freeze: run again (at least once), the late result refused
        assert starts[(second, it)] == 1 and starts[(second, me)] == 1
    assert rescuer.journal("r") == journal_before
    assert rescuer.get_run("r").outputs == {"first": it, "second": me, "third": me}
    assert rescuer.store.get_run("default", "r").lease_owner is None
