"""The contracts under store faults: SQL statements chosen at random fail with `database is
locked`, `disk I/O error` or `database or disk is full`, or stall, while a graph plan and a
code plan run; the caller retries as an operator's script would. After each seed:

- no completed call executed twice: every execution of a call (logged by the tool with
  its attempt number) had its own attempt, journaled as an intent before the call's one
  result, and no intent follows a result;
- no result lost: a result once durable is still in the journal, unchanged, at the end;
- the run completes with the outputs of a run without faults, or ends `failed` with an
  error that says why;
- no lease is left held once the caller is done.

The default suite runs a few seeds per plan; `pytest -m slow` runs 200 per plan.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    AgentflowError,
    Engine,
    FailurePolicy,
    RunLeased,
    code_plan,
)
from agentflow.store import FINISHED_STATUSES, SQLiteStore
from tests.support.contract_worker import EXPECTED_OUTPUTS, INPUTS, TOOLS, build_plan, starts
from tests.support.faults import Faults, inject

CODE_PLAN = code_plan('''
s = seed(n=inputs["n"])
squares = [square(x=item) for item in s["items"]]
total = join(values=squares, base=s["value"])
return {"squares": squares, "total": total, "text": label(total=total)["text"]}
''', name="contract_code")
PLANS = {"graph": build_plan, "code": lambda: CODE_PLAN}
# Executions with faults before the caller gives the store a rest (faults off).
FAULTY_TRIES = 12


def results_of(engine: Engine, run_id: str) -> dict[str, Any]:
    return {e.key: e.data for e in engine.store.read_journal("default", run_id)
            if e.kind == "result"}


def run_under_faults(tmp_path: Path, kind: str, seed: int) -> int:
    """Run the plan under faults drawn from `seed`, check the contracts; the number of
    executions a fault broke off."""
    side = tmp_path / f"side-{kind}-{seed}.log"
    store = SQLiteStore(str(tmp_path / f"{kind}-{seed}.db"))
    faults = inject(store, Faults(rate=0.06, seed=seed, delay=0.05))
    engine = Engine(store, lease_seconds=1.0, failure_policy=FailurePolicy(max_failures=8))
    os.environ["AF_SIDE_FILE"] = str(side)
    durable: dict[str, Any] = {}
    broken = 0
    for attempt in range(FAULTY_TRIES + 3):
        faults.enabled = attempt < FAULTY_TRIES
        try:
            engine.execute(PLANS[kind](), tools=TOOLS, inputs=INPUTS, run_id="r")
        except RunLeased as leased:  # a release that failed every retry: wait for expiry
            faults.enabled = False
            _wait_for_expiry(leased.until)
        except AgentflowError:
            broken += 1
        faults.enabled = False
        now = results_of(engine, "r")
        assert {k: now.get(k) for k in durable} == durable, "a durable result was lost"
        durable = now
        run = engine.store.get_run("default", "r")
        if run is not None and run.status in FINISHED_STATUSES:
            break
    faults.enabled = False
    run = engine.store.get_run("default", "r")
    assert run is not None and run.status in ("completed", "failed"), (seed, run)
    assert run.lease_owner is None, f"seed {seed}: lease left held by {run.lease_owner}"
    if run.status == "completed":
        assert run.outputs == EXPECTED_OUTPUTS
    else:
        assert run.error is not None and run.error["type"] == "RunFailedRepeatedly"
        assert run.error["message"], run.error
    _assert_no_completed_call_ran_twice(engine, side, seed)
    return broken


def _wait_for_expiry(until: float) -> None:
    deadline = time.monotonic() + 30
    while time.time() <= until + 0.05:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _assert_no_completed_call_ran_twice(engine: Engine, side: Path, seed: int) -> None:
    journal = engine.store.read_journal("default", "r")
    intents: dict[str, set[int]] = {}
    results = Counter[str]()
    for entry in journal:
        if entry.kind == "intent":
            assert results[entry.key] == 0, f"seed {seed}: {entry.key} started after its result"
            intents.setdefault(entry.key, set()).add(entry.attempt)
        elif entry.kind == "result":
            results[entry.key] += 1
    assert all(n == 1 for n in results.values()), f"seed {seed}: two results {results}"
    executions = Counter((start["key"], start["attempt"]) for start in starts(side))
    for (key, attempt), times in executions.items():
        assert times == 1, f"seed {seed}: {key} attempt {attempt} executed {times} times"
        assert attempt in intents.get(key, set()), \
            f"seed {seed}: {key} attempt {attempt} ran without a journaled intent"


@pytest.fixture(autouse=True)
def side_file_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tools log to the file `AF_SIDE_FILE` names; each seed points it at its own."""
    monkeypatch.setenv("AF_SIDE_FILE", "unset")
    monkeypatch.delenv("AF_KILL_KEY", raising=False)


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_store_faults_break_no_contract(kind: str, tmp_path: Path) -> None:
    broken = [run_under_faults(tmp_path, kind, seed) for seed in range(6)]
    assert sum(broken) > 0  # the faults did break executions off mid-run


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PLANS))
def test_store_faults_break_no_contract_over_many_seeds(kind: str, tmp_path: Path) -> None:
    broken = [run_under_faults(tmp_path, kind, seed) for seed in range(100, 300)]
    assert sum(broken) > 100
