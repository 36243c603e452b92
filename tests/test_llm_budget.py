"""A run's token budget: a call that could overspend it is never made, and what was spent is
read from the journal, so the limit holds across a SIGKILL and a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentflow import BudgetExceeded, RunNotFound, execute_plan, get_run
from agentflow.llm import llm_tool
from tests.support import llm_budget_worker
from tests.support.openai_server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
USAGE = {"prompt_tokens": 35, "completion_tokens": 10, "total_tokens": 45}


def test_the_call_that_would_overspend_is_not_made(tmp_path: Path,
                                                    openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("a", usage=USAGE), Reply("b", usage=USAGE))
    result = llm_budget_worker.run(str(tmp_path / "runs.db"), openai_server.base_url, "b1")
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.type, result.error.step_id) == ("BudgetExceeded", "three")
    assert "only 10 of the budget of 100" in result.error.message
    assert [openai_server.count(p) for p in ("one", "two", "three")] == [1, 1, 0]


def test_the_budget_is_kept_with_the_run_and_survives_a_sigkill(
        tmp_path: Path, openai_server: OpenAIServer) -> None:
    store = str(tmp_path / "runs.db")
    openai_server.script(Reply("a", usage=USAGE), Reply("slow", usage=USAGE, delay=60))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.llm_budget_worker", store,
         openai_server.base_url, "b2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while openai_server.count("two") == 0:  # "one" is journaled; "two" is in flight
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()

    openai_server.script(Reply("b", usage=USAGE))
    result = llm_budget_worker.run(store, openai_server.base_url, "b2", start=False)
    # 45 spent before the kill (from the journal) + 45 now: "three" would pass 100
    assert (result.status, result.error and result.error.type) == ("failed", "BudgetExceeded")
    assert [openai_server.count(p) for p in ("one", "two", "three")] == [1, 2, 0]
    assert get_run("b2", store=store).steps["two"].status == "succeeded"


def test_a_bad_budget_is_refused_before_anything_is_written(
        tmp_path: Path, openai_client: object) -> None:
    store = str(tmp_path / "runs.db")
    with pytest.raises(ValueError, match="llm_tokens"):
        execute_plan(llm_budget_worker.PLAN, tools=[llm_tool(openai_client, model="m")],  # type: ignore[arg-type]
                     store=store, run_id="bad", budget={"tokens": 5})
    with pytest.raises(RunNotFound):
        get_run("bad", store=store)


def test_budget_exceeded_names_what_was_left() -> None:
    error = BudgetExceeded("r", "c3", "llm_tokens", 100, 90, 15)
    assert str(error) == ("run 'r': call 'c3' may spend up to 15 llm_tokens but only 10 of "
                          "the budget of 100 are left")
