"""The example code plans in plans/ run end to end through the public API, approvals included."""

from __future__ import annotations

from pathlib import Path

import pytest

import agentflow
import agentflow.demo
from agentflow import RunResult
from tests.support import code_triage_tools

PLANS = Path(__file__).resolve().parent.parent / "plans"


@pytest.fixture(autouse=True)
def _fast_demo_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    code_triage_tools.CALLS.clear()


def run_approving(plan: str, store: str, tools: list[agentflow.Tool], *, approve: bool = True,
                  **inputs: str) -> tuple[RunResult, RunResult]:
    """(the waiting result, the final one): execute, decide the approval, resume."""
    waiting = agentflow.execute_plan(str(PLANS / plan), tools=tools, inputs=inputs,
                                     store=store)
    assert waiting.status == "waiting", waiting.error
    [pending] = waiting.pending
    if approve:
        agentflow.approve(waiting.run_id, pending.id, by="tester", store=store)
    else:
        agentflow.reject(waiting.run_id, pending.id, by="tester", reason="no", store=store)
    return waiting, agentflow.resume(waiting.run_id, tools=tools, store=store)


def test_ci_pipeline_deploys_once_approved(tmp_path: Path) -> None:
    waiting, done = run_approving("ci_pipeline.py", str(tmp_path / "runs.db"),
                                  agentflow.demo.TOOLS, ref="v1.2")
    sha = agentflow.demo.checkout.fn(ref="v1.2")["sha"]
    assert waiting.pending[0].prompt == f"Deploy dist/app-{sha}.tar.gz to staging?"
    # Python 3.12 fails its first attempt; run_tests' own retry policy retries it
    assert waiting.steps["c3.2.c1"].attempts == 2
    assert done.status == "completed", done.error
    outputs = done.outputs
    assert (outputs["sha"], outputs["artifact"]) == (sha, f"dist/app-{sha}.tar.gz")
    assert [cell["python"] for cell in outputs["tests"]] == ["3.10", "3.11", "3.12", "3.13"]
    assert outputs["url"].startswith("https://staging.example.test/")
    notice = [step.output for step in done.steps.values() if step.output and "sent" in step.output]
    assert notice == [{"sent": f"v1.2 at {sha}: deployed to {outputs['url']}"}]


def test_ci_pipeline_does_not_deploy_when_rejected(tmp_path: Path) -> None:
    _, done = run_approving("ci_pipeline.py", str(tmp_path / "runs.db"),
                            agentflow.demo.TOOLS, approve=False, environment="production")
    assert (done.status, done.outputs["url"]) == ("completed", None)


def test_triage_draft_runs_with_stand_in_tools(tmp_path: Path) -> None:
    waiting, done = run_approving("triage.py", str(tmp_path / "runs.db"),
                                  code_triage_tools.TOOLS, repo="x/y")
    assert waiting.pending[0].prompt == "Close 2 stale issues in x/y: [2, 4]?"
    assert done.outputs == {"labels": [{"number": 1, "label": "crash"},
                                       {"number": 2, "label": "crash"},
                                       {"number": 3, "label": "ui"},
                                       {"number": 4, "label": "crash"}],
                            "closed": [2, 4]}
    assert [c for c in code_triage_tools.CALLS if c[0] == "close_issue"] == [
        ("close_issue", 2), ("close_issue", 4)]
    assert len(code_triage_tools.CALLS) == 1 + 4 + 4 + 2  # no call ran twice


def test_triage_runs_with_the_demo_tools(tmp_path: Path) -> None:
    _, done = run_approving("triage.py", str(tmp_path / "runs.db"), agentflow.demo.TOOLS)
    assert done.status == "completed"
