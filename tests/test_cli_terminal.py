"""The `agentflow` command as a user runs it: a separate process (`python -m agentflow.cli`
and the installed script), and `run --interactive` answered at a real pseudo-terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow import Engine
from tests.support import cli_tools
from tests.support.terminal import Terminal

ROOT = Path(__file__).resolve().parent.parent
GATED = "tests/support/gated_deploy.json"
TOOLS = "tests.support.cli_tools"
SCRIPT = Path(sys.executable).with_name("agentflow")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AGENTFLOW_DEMO_DELAY": "0",
            "AGENTFLOW_STORE": str(tmp_path / "runs.db"), "TERM": "xterm-256color",
            "PYTHONUNBUFFERED": "1"}


def agentflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentflow.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_run_ci_pipeline_in_a_process(env: dict[str, str]) -> None:
    done = agentflow(env, "run", "plans/ci_pipeline.json", "--tools", "agentflow.demo",
                     "--run-id", "ci-7")
    assert done.returncode == 0, done.stderr
    progress, summary = done.stdout.split("run ci-7 completed in ")
    assert progress.splitlines()[0].split() == ["step", "status", "attempts", "items",
                                                "retries", "elapsed"]
    assert len([line for line in progress.splitlines() if " succeeded " in line]) == 6
    assert "artifact" in summary and "dist/app-" in summary
    assert done.stderr == ""


@pytest.mark.skipif(not SCRIPT.exists(), reason="the agentflow script is not installed")
def test_the_installed_script_reports_user_errors_in_one_line(env: dict[str, str]) -> None:
    Engine(env["AGENTFLOW_STORE"]).close()
    done = subprocess.run([str(SCRIPT), "show", "missing-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: no run 'missing-run' for tenant 'default'\n"
    usage = subprocess.run([str(SCRIPT), "run"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "missing argument 'plan'" in usage.stderr.lower()


def test_worker_resumes_due_runs_until_sigterm(env: dict[str, str]) -> None:
    engine = Engine(env["AGENTFLOW_STORE"], tools=cli_tools.TOOLS)
    [pending] = engine.execute(ROOT / GATED, run_id="w1").pending
    engine.approve("w1", pending.id, by="ann")
    worker = subprocess.Popen([sys.executable, "-m", "agentflow.cli", "worker", "--poll", "0.05",
                               "--tools", TOOLS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline() == "run w1 completed\n"  # so its signal handlers are set
    worker.send_signal(signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=20)
    assert (worker.returncode, stdout, stderr) == (0, "", "")
    assert engine.get_run("w1").status == "completed"
    engine.close()


def interactive(env: dict[str, str], run_id: str) -> Terminal:
    """`agentflow run --interactive` on a terminal, up to its approve/reject/edit question."""
    terminal = Terminal([sys.executable, "-m", "agentflow.cli", "run", GATED, "--tools", TOOLS,
                         "--interactive", "--by", "tester", "--run-id", run_id],
                        cwd=ROOT, env=env)
    shown = terminal.expect("Approve, reject or edit? [a/r/e]:")
    assert f"approval needed run {run_id}, step deploy, tool deploy" in shown
    assert "Deploy to prod?" in shown
    assert '"target": "prod",' in shown and '"replicas": 1' in shown  # pretty-printed args
    return terminal


def decision(env: dict[str, str], run_id: str) -> tuple[str, dict[str, object] | None]:
    engine = Engine(env["AGENTFLOW_STORE"])
    try:
        [wait] = engine.store.list_waits("default", run_id)
        return wait.status, wait.decision
    finally:
        engine.close()


def stored(env: dict[str, str], run_id: str) -> tuple[str, object]:
    engine = Engine(env["AGENTFLOW_STORE"])
    try:
        result = engine.get_run(run_id)
        return result.status, result.outputs
    finally:
        engine.close()


def test_interactive_approve(env: dict[str, str]) -> None:
    terminal = interactive(env, "i-approve")
    terminal.type("x")
    terminal.expect("please answer approve / reject / edit (or their first letter)")
    terminal.type("a")
    terminal.expect("approved")
    terminal.expect("run i-approve completed")
    assert terminal.finish() == 0
    assert stored(env, "i-approve") == (
        "completed", {"deployed": {"target": "prod", "replicas": 1},
                      "notice": "deploy succeeded"})
    assert decision(env, "i-approve") == ("approved",
                                          {"by": "tester", "comment": None, "args": None})


def test_interactive_edit_after_an_invalid_attempt(env: dict[str, str]) -> None:
    terminal = interactive(env, "i-edit")
    terminal.type("edit")
    assert 'current: {"target":"prod","replicas":1}' in terminal.expect("(empty line: back)")
    terminal.type('{"target": 7}')
    refused = terminal.expect("(empty line: back)")
    assert "args.target: 7 is not of type 'string'" in refused
    assert decision(env, "i-edit")[0] == "pending"
    terminal.type('{"target": "canary", "replicas": 2}')
    terminal.expect("approved with edited arguments")
    terminal.expect("run i-edit completed")
    assert terminal.finish() == 0
    assert stored(env, "i-edit") == (
        "completed", {"deployed": {"target": "canary", "replicas": 2},
                      "notice": "deploy succeeded"})
    assert decision(env, "i-edit") == (
        "approved", {"by": "tester", "comment": None,
                     "args": {"target": "canary", "replicas": 2}})


def test_interactive_reject_with_a_reason(env: dict[str, str]) -> None:
    terminal = interactive(env, "i-reject")
    terminal.type("R")
    terminal.expect("Reason")
    terminal.type("freeze week")
    terminal.expect("rejected")
    terminal.expect("run i-reject completed")
    assert terminal.finish() == 0
    assert stored(env, "i-reject") == ("completed",
                                       {"deployed": None, "notice": "deploy rejected"})
    assert decision(env, "i-reject") == ("rejected", {"by": "tester", "reason": "freeze week"})
