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

The default suite runs a few seeds per plan; `pytest -m slow` runs 200 per plan. On SQLite
by default, on PostgreSQL with `AGENTFLOW_TEST_STORE=postgres` (see `tests/support/stores.py`).
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
from agentflow.store import FINISHED_STATUSES, SQLiteStore, Store, open_store
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


def run_under_faults(store_url: str, tmp_path: Path, kind: str, seed: int) -> int:
    """Run the plan under faults drawn from `seed`, check the contracts; the number of
    executions a fault broke off."""
    side = tmp_path / f"side-{kind}-{seed}.log"
    store = open_store(store_url)
    try:
        return _run(store, side, kind, seed)
    finally:
        store.close()


def _run(store: Store, side: Path, kind: str, seed: int) -> int:
    # The PostgreSQL store retries a statement that failed before its commit (up to 5
    # times); faults there must come often for some executions to break off at all.
    rate = 0.06 if isinstance(store, SQLiteStore) else 0.5
    faults = inject(store, Faults(rate=rate, seed=seed, delay=0.05))
    engine = Engine(store, lease_seconds=1.0, failure_policy=FailurePolicy(max_failures=8))
    os.environ["AF_SIDE_FILE"] = str(side)
    run_id = f"{kind}-{seed}"
    durable: dict[str, Any] = {}
    broken = 0
    for attempt in range(FAULTY_TRIES + 3):
        faults.enabled = attempt < FAULTY_TRIES
        try:
            engine.execute(PLANS[kind](), tools=TOOLS, inputs=INPUTS, run_id=run_id)
        except RunLeased as leased:  # a release that failed every retry: wait for expiry
            faults.enabled = False
            _wait_for_expiry(leased.until)
        except AgentflowError:
            broken += 1
        faults.enabled = False
        now = results_of(engine, run_id)
        assert {k: now.get(k) for k in durable} == durable, "a durable result was lost"
        durable = now
        run = engine.store.get_run("default", run_id)
        if run is not None and run.status in FINISHED_STATUSES:
            break
    faults.enabled = False
    run = engine.store.get_run("default", run_id)
    assert run is not None and run.status in ("completed", "failed"), (seed, run)
    assert run.lease_owner is None, f"seed {seed}: lease left held by {run.lease_owner}"
    if run.status == "completed":
        assert run.outputs == EXPECTED_OUTPUTS
    else:
        assert run.error is not None and run.error["type"] == "RunFailedRepeatedly"
        assert run.error["message"], run.error
    _assert_no_completed_call_ran_twice(engine, run_id, side, seed)
    return broken


def _wait_for_expiry(until: float) -> None:
    deadline = time.monotonic() + 30
    while time.time() <= until + 0.05:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _assert_no_completed_call_ran_twice(engine: Engine, run_id: str, side: Path,
                                        seed: int) -> None:
    journal = engine.store.read_journal("default", run_id)
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
def test_store_faults_break_no_contract(kind: str, store_url: str, tmp_path: Path) -> None:
    seeds = range(6) if store_url.startswith("sqlite") else range(3)  # PostgreSQL: slower
    broken = [run_under_faults(store_url, tmp_path, kind, seed) for seed in seeds]
    assert sum(broken) > 0  # the faults did break executions off mid-run


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PLANS))
def test_store_faults_break_no_contract_over_many_seeds(
    kind: str, store_url: str, tmp_path: Path
) -> None:
    broken = [run_under_faults(store_url, tmp_path, kind, seed) for seed in range(100, 300)]
    assert sum(broken) > 100
