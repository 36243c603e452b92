"""Submit, wait and workers, on the backend the test run chose (AGENTFLOW_TEST_STORE)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, PlanMismatch, RunWaitTimeout, tool
from agentflow.worker import Worker

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
