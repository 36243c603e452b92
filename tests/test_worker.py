"""Submit, wait and workers, on the backend the test run chose (AGENTFLOW_TEST_STORE)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, PlanMismatch, RunWaitTimeout, tool
from agentflow.worker import Worker
from tests.support.faults import record_statements

calls: list[str] = []
gate = threading.Event()


@tool
def note(text: str) -> str:
    calls.append(text)
    return text


@tool
def held(text: str) -> str:
    """Blocks until the test opens the gate."""
    gate.wait(120)
    return text


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    gate.clear()


def plan(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"format": "agentflow/v1", "steps": list(steps),
            "outputs": {"last": f"${{steps.{steps[-1]['id']}.output}}"}}


NOTE = plan({"id": "a", "tool": "note", "args": {"text": "a"}},
            {"id": "b", "tool": "note", "args": {"text": "b"}, "after": ["a"]})


def test_submit_queues_the_run_and_a_worker_runs_it(store_url: str) -> None:
    engine = Engine(store_url, tools=[note])
    run_id = engine.submit(NOTE, run_id="r1")
    assert (run_id, engine.get_run("r1").status, calls) == ("r1", "queued", [])
    assert Worker(engine).run(threading.Event(), once=True) == 1
    result = engine.wait("r1", timeout=60)
    assert (result.status, result.outputs, calls) == ("completed", {"last": "b"}, ["a", "b"])
    engine.close()


def test_submit_twice_is_one_run_and_another_plan_is_refused(store_url: str) -> None:
    engine = Engine(store_url, tools=[note])
    engine.submit(NOTE, run_id="r1")
    assert engine.submit(NOTE, run_id="r1") == "r1"
    assert [r.run_id for r in engine.list_runs()] == ["r1"]
    with pytest.raises(PlanMismatch, match="was started with plan"):
        engine.submit(plan({"id": "x", "tool": "note", "args": {"text": "x"}}), run_id="r1")
    engine.close()


def test_wait_gives_up_after_its_timeout_naming_the_status(store_url: str) -> None:
    engine = Engine(store_url, tools=[note])
    engine.submit(NOTE, run_id="r1")
    with pytest.raises(RunWaitTimeout, match=r"run 'r1' is still queued after waiting 0\.2 s"):
        engine.wait("r1", timeout=0.2)
    engine.close()


def test_wait_returns_when_a_worker_in_another_thread_finishes(store_url: str) -> None:
    engine = Engine(store_url, tools=[note])
    engine.submit(NOTE, run_id="r1")
    stop = threading.Event()
    worker = threading.Thread(target=Worker(engine, poll=0.05).run, args=(stop,))
    worker.start()
    try:
        assert engine.wait("r1", timeout=120).status == "completed"
    finally:
        stop.set()
        worker.join()
    engine.close()


def test_a_stopped_worker_releases_what_it_could_not_finish(store_url: str) -> None:
    engine = Engine(store_url, tools=[held], lease_seconds=600)
    engine.submit(plan({"id": "h", "tool": "held", "args": {"text": "h"}}), run_id="r1")
    stop = threading.Event()
    worker = Worker(engine, drain=0.0, poll=0.05)
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    while engine.store.get_run("default", "r1").status != "running":  # type: ignore[union-attr]
        time.sleep(0.01)
    stop.set()
    thread.join()
    released = engine.store.get_run("default", "r1")
    assert released is not None and (released.status, released.lease_owner) == ("running", None)
    gate.set()  # the abandoned thread's late result is fenced off by the released lease
    other = Engine(store_url, tools=[held])
    assert Worker(other).run(threading.Event(), once=True) == 1
    assert other.wait("r1", timeout=60).outputs == {"last": "h"}
    other.close()
    engine.close()


def test_a_run_claimed_while_the_worker_stops_is_released_too(store_url: str) -> None:
    engine = Engine(store_url, tools=[note])
    engine.submit(NOTE, run_id="r1")
    stop = threading.Event()
    worker = Worker(engine, concurrency=1, drain=0.0, poll=0.05)
    claim = engine.store.claim

    def late_claim(*args: Any, **kwargs: Any) -> Any:
        stop.set()
        while not worker._released:  # the drain let go of what it held before this claim
            time.sleep(0.01)
        return claim(*args, **kwargs)

    engine.store.claim = late_claim  # type: ignore[method-assign]
    worker.run(stop)
    for slot in [t for t in threading.enumerate() if t.name.startswith("af-worker-")]:
        slot.join()
    released = engine.store.get_run("default", "r1")
    assert released is not None and (released.status, released.lease_owner) == ("running", None)
    assert calls.count("a") == 0  # it did not execute either
    engine.close()


def chain(steps: int) -> dict[str, Any]:
    return plan(*({"id": f"s{i}", "tool": "note", "args": {"text": str(i)},
                   **({"after": [f"s{i - 1}"]} if i else {})} for i in range(steps)))


def statements_of_a_run(store_url: str, steps: int) -> int:
    """Commits a worker makes to claim, execute and settle one run of `steps` tool calls: a
    transaction (BEGIN ... COMMIT) or a statement on its own (the idle loop's looks for
    the next timer left out: they are not the run's)."""
    engine = Engine(store_url, tools=[note])
    engine.submit(chain(steps), run_id=f"r{steps}")
    seen = record_statements(engine.store)
    assert Worker(engine, concurrency=1).run(threading.Event(), once=True) == 1
    engine.close()
    commits, inside = 0, False
    for sql in seen:
        if "MIN(wake_at)" in sql or (inside and sql not in ("COMMIT", "ROLLBACK")):
            continue
        inside = sql.startswith("BEGIN")
        commits += sql not in ("COMMIT", "ROLLBACK")
    return commits


def test_each_further_step_of_a_run_costs_one_statement(tmp_path: Path) -> None:
    from tests.support.stores import store_url_for

    with store_url_for(tmp_path, "two.db") as two, store_url_for(tmp_path, "six.db") as six:
        assert statements_of_a_run(six, 6) - statements_of_a_run(two, 2) == 4


def test_a_slot_runs_its_runs_on_one_loop_and_nothing_of_a_run_outlives_it(
        store_url: str) -> None:
    """A worker slot keeps one event loop for its runs (asyncio.run per run cost more CPU
    than a short run's steps); a task a run left behind is cancelled when the run returns,
    as asyncio.run would, so it never runs into the next run."""
    import asyncio

    loops: list[asyncio.AbstractEventLoop] = []  # kept alive: ids are not reused
    left: list[asyncio.Task[None]] = []

    @tool
    async def leaves_a_task(text: str) -> str:
        loops.append(asyncio.get_running_loop())
        left.append(asyncio.ensure_future(asyncio.sleep(3600)))
        return text

    engine = Engine(store_url, tools=[leaves_a_task])
    for n in range(3):
        engine.submit(plan({"id": "a", "tool": "leaves_a_task", "args": {"text": f"{n}"}}),
                      run_id=f"r{n}")
    assert Worker(engine, tools=[leaves_a_task], concurrency=1).run(
        threading.Event(), once=True) == 3
    assert len(loops) == 3 and all(loop is loops[0] for loop in loops)
    assert len(left) == 3 and all(task.cancelled() for task in left)
    assert all(engine.get_run(f"r{n}").status == "completed" for n in range(3))
    engine.close()


def test_a_wake_up_sends_one_idle_slot_to_claim_not_every_slot(store_url: str) -> None:
    # Wake-ups are counted where they are sent (`_wake_one`), not as the store's looks:
    # under load a poll interval can pass before the listen loop looks, and the worker then
    # wakes a slot without a look (32 claims after 23 looks failed a bound of 8 + looks).
    engine = Engine(store_url, tools=[note])
    worker = Worker(engine, concurrency=8, poll=0.02)
    claims, wakes, counted = [0], [0], threading.Lock()
    claim, wake_one = engine.store.claim, worker._wake_one

    def counted_claim(*args: Any, **kwargs: Any) -> Any:
        with counted:
            claims[0] += 1
        return claim(*args, **kwargs)

    def counted_wake() -> None:
        with counted:
            wakes[0] += 1
        wake_one()

    engine.store.claim = counted_claim  # type: ignore[method-assign]
    worker._wake_one = counted_wake  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    while wakes[0] < 20:
        time.sleep(0.01)
    stop.set()
    thread.join()
    assert wakes[0] >= 20 and claims[0] <= 8 + wakes[0]  # one claim per slot at start


def test_cli_submit_returns_at_once_and_wait_blocks_until_a_worker_ran_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from agentflow.cli import app

    monkeypatch.setenv("AGENTFLOW_STORE", store_url)
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    runner = CliRunner()
    plan_path = str(Path(__file__).resolve().parent.parent / "plans" / "ci_pipeline.json")
    submitted = runner.invoke(app, ["submit", plan_path, "--tools", "agentflow.demo",
                                    "--run-id", "ci-1"])
    assert (submitted.exit_code, submitted.stdout) == (0, "ci-1\n")
    timed_out = runner.invoke(app, ["wait", "ci-1", "--timeout", "0.2"])
    assert timed_out.exit_code == 1
    assert "run 'ci-1' is still queued after waiting 0.2 s" in timed_out.stderr
    worked = runner.invoke(app, ["worker", "--once", "--tools", "agentflow.demo"])
    assert (worked.exit_code, worked.stdout.strip()) == (0, "run ci-1 completed")
    waited = runner.invoke(app, ["wait", "ci-1", "--timeout", "60"])
    assert (waited.exit_code, waited.stdout.strip()) == (0, "run ci-1 completed")
