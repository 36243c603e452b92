"""`run_agent`: replanning after a rejection or a failure reuses completed results, and the
whole loop survives a SIGKILL without repeating a completed model or tool call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine
from agentflow.llm import encode_strict_plan, run_agent
from tests.support import agent_worker
from tests.support.agent_worker import calls
from tests.support.openai_server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
REPLAN = "# Attempt 1 did not reach the goal"
TEST_AND_BUILD: list[dict[str, Any]] = [
    {"id": "test", "tool": "run_tests", "args": {"ref": "v2"}},
    {"id": "build", "tool": "build", "args": {"ref": "v2"}, "after": ["test"]},
]
WITH_APPROVAL = {"format": "agentflow/v1", "name": "release", "steps": [
    *TEST_AND_BUILD,
    {"id": "ok", "approval": {"prompt": "Deploy to prod?"}, "after": ["build"]},
    {"id": "deploy", "tool": "deploy", "after": ["ok"],
     "args": {"artifact": "${steps.build.output.artifact}", "env": "prod"}}]}
TO_PROD = {"format": "agentflow/v1", "name": "release", "steps": [
    *TEST_AND_BUILD,
    {"id": "deploy", "tool": "deploy",
     "args": {"artifact": "${steps.build.output.artifact}", "env": "prod"}}]}
TO_STAGING = {"format": "agentflow/v1", "name": "release_staging", "steps": [
    {"id": "build", "tool": "build", "args": {"ref": "v2"}},  # a repeat: answered from before
    {"id": "staging", "tool": "deploy",
     "args": {"artifact": "${inputs.previous.build.artifact}", "env": "staging"}}],
    "outputs": {"url": "${steps.staging.output.url}", "tested": "${inputs.previous.test}"}}
DONE = {"url": "https://staging.example.com/app-v2.whl", "tested": {"passed": True}}


def strict(plan: dict[str, Any]) -> str:
    return json.dumps(encode_strict_plan(plan))


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.log"
    monkeypatch.setenv("AGENT_SIDE_FILE", str(path))
    return path


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(str(tmp_path / "runs.db"), max_inline_wait=0.0)


def test_rejected_approval_replans_and_reuses_completed_results(
        engine: Engine, openai_server: OpenAIServer, side: Path) -> None:
    openai_server.script(strict(WITH_APPROVAL), strict(TO_STAGING))
    waiting = agent_worker.run(engine, openai_server.base_url, "agent-1")
    assert (waiting.run_id, waiting.status) == ("agent-1:run:0", "waiting")
    engine.reject(waiting.run_id, waiting.pending[0].id, by="bob",
                  reason="deploy to staging first")

    result = agent_worker.run(engine, openai_server.base_url, "agent-1")
    assert (result.run_id, result.status, result.outputs) == ("agent-1:run:1", "completed", DONE)
    assert calls(side) == ["run_tests", "build", "deploy:staging"]
    first, replan = openai_server.requests
    assert REPLAN not in first.prompt
    assert "step 'ok' was rejected: bob said 'deploy to staging first'" in replan.prompt
    assert "- ok (approval): rejected: bob said 'deploy to staging first'" in replan.prompt
    assert '- build (build): succeeded, output {"artifact": "app-v2.whl"}' in replan.prompt
    assert "${inputs.previous.<step id>...}" in replan.prompt
    assert '"previous": {"type": "object", "properties": {"test":' in \
        replan.messages[0]["content"]


def test_finished_agent_replays_without_model_or_tool_calls(
        engine: Engine, openai_server: OpenAIServer, side: Path) -> None:
    openai_server.script(strict(TO_PROD), strict(TO_STAGING))
    first = agent_worker.run(engine, openai_server.base_url, "agent-2")
    again = agent_worker.run(engine, openai_server.base_url, "agent-2")
    assert (first.status, first.outputs) == ("completed", DONE)
    assert (again.run_id, again.outputs) == (first.run_id, first.outputs)
    assert len(openai_server.requests) == 2
    assert calls(side) == ["run_tests", "build", "deploy:prod", "deploy:staging"]
    assert "it failed: step 'deploy': RuntimeError: prod is locked this week" in \
        openai_server.requests[1].prompt


def test_last_failure_is_returned_after_max_replans(
        engine: Engine, openai_server: OpenAIServer, openai_client: Any, side: Path) -> None:
    openai_server.script(strict(TO_PROD))
    result = run_agent(agent_worker.GOAL, tools=agent_worker.TOOLS, client=openai_client,
                       model="m", run_id="agent-3", engine=engine, max_replans=0)
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "RuntimeError"
    assert len(openai_server.requests) == 1


def test_unplannable_goal_returns_the_failed_planning_run(
        engine: Engine, openai_server: OpenAIServer, openai_client: Any) -> None:
    openai_server.responder = lambda request: strict({"steps": [{"id": "go", "tool": "rocket"}]})
    result = run_agent(agent_worker.GOAL, tools=agent_worker.TOOLS, client=openai_client,
                       model="m", run_id="agent-4", engine=engine)
    assert (result.run_id, result.status) == ("agent-4:plan:0", "failed")
    assert result.error is not None and result.error.type == "PlanningFailed"
    assert len(openai_server.requests) == 3  # the first answer and two repair rounds


def test_killed_agent_resumes_without_repeating_completed_calls(
        tmp_path: Path, engine: Engine, openai_server: OpenAIServer, side: Path) -> None:
    store = str(tmp_path / "runs.db")
    openai_server.script(strict(TO_PROD), Reply(strict(TO_STAGING), delay=60))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.agent_worker", store, openai_server.base_url,
         "agent-5", str(side)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while openai_server.count(REPLAN) == 0:
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()

    openai_server.script(strict(TO_STAGING))
    result = agent_worker.run(engine, openai_server.base_url, "agent-5")
    assert (result.status, result.outputs) == ("completed", DONE)
    assert calls(side) == ["run_tests", "build", "deploy:prod", "deploy:staging"]
    assert len(openai_server.requests) - openai_server.count(REPLAN) == 1  # first plan: once
    assert openai_server.count(REPLAN) == 2  # the replan in flight at the kill: again


def test_python_plans_replan_with_previous_call_results(
        engine: Engine, openai_server: OpenAIServer, openai_client: Any, side: Path) -> None:
    first = ("```python\nrun_tests(ref='v2')\nb = build(ref='v2')\n"
             "return deploy(artifact=b['artifact'], env='prod')\n```")
    second = ("```python\nb = build(ref='v2')\n"
              "return deploy(artifact=inputs['previous']['c2']['artifact'], env='staging')\n```")
    openai_server.script(first, second)
    result = run_agent(agent_worker.GOAL, tools=agent_worker.TOOLS, client=openai_client,
                       model="m", run_id="agent-6", engine=engine, kind="python")
    assert (result.run_id, result.status) == ("agent-6:run:1", "completed")
    assert result.outputs == {"url": "https://staging.example.com/app-v2.whl"}
    assert calls(side) == ["run_tests", "build", "deploy:prod", "deploy:staging"]
    replan = openai_server.requests[1].prompt
    assert '- c2 (build): succeeded, output {"artifact": "app-v2.whl"}' in replan
    assert "- c3 (deploy): failed: prod is locked this week" in replan
