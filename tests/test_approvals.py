"""Human approvals: pause, decide from anywhere, resume without re-running finished calls.

Each refusal (unknown, expired, double, stale, invalid edit) is checked to change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    AlreadyDecided,
    DecisionExpired,
    Engine,
    NotAnApprover,
    PendingNotFound,
    RunNotFound,
    StaleDecision,
    ToolArgumentsError,
    tool,
)
from agentflow.store.base import WaitRecord
from tests.support.approval_plan import PLAN, TOOLS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.log"
    monkeypatch.setenv("APPROVAL_SIDE_FILE", str(path))
    return path


@pytest.fixture
def engine(store_url: str) -> Engine:
    return Engine(store_url, tools=TOOLS, max_inline_wait=0.0)


def calls(side: Path) -> list[str]:
    if not side.exists():
        return []
    return [json.loads(line)["key"] for line in side.read_text().splitlines()]


def snapshot(engine: Engine, run_id: str) -> Any:
    store = engine.store
    return (store.get_run("default", run_id), store.list_waits("default", run_id),
            store.read_journal("default", run_id))


def test_a_run_waits_at_the_gate_with_its_pending_approval(engine: Engine, side: Path) -> None:
    result = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1")
    assert result.status == "waiting"
    [pending] = result.pending
    assert (pending.kind, pending.step_id, pending.prompt) == (
        "approval", "ok", "Deploy app-v2.tar.gz?")
    assert result.steps["ok"].status == "waiting"
    assert result.steps["deploy"].status == "pending"
    assert calls(side) == ["build"]
    assert engine.store.get_run("default", "r1").lease_owner is None  # type: ignore[union-attr]


def test_pause_exit_approve_and_resume_in_three_processes(store_url: str, tmp_path: Path) -> None:
    store, side = store_url, str(tmp_path / "side.log")

    def step(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "tests.support.approval_plan", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    started = step("start", store, side, "deploy-42")
    assert started["status"] == "waiting"
    step("approve", store, side, "deploy-42", started["pending"][0])
    finished = step("resume", store, side, "deploy-42")
    assert finished["status"] == "completed"
    assert finished["outputs"] == {"url": "https://prod.example.test/app-v2.tar.gz",
                                   "notice": "deploy succeeded"}
    assert calls(Path(side)) == ["build", "deploy", "notify"]


def test_approval_output_and_decision_are_journaled(engine: Engine, side: Path) -> None:
    pending = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1").pending[0]
    decided = engine.approve("r1", pending.id, by="alice", comment="ship it")
    assert decided.status == "approved"
    result = engine.resume("r1")
    assert result.steps["ok"].output == {"approved": True, "by": "alice",
                                         "comment": "ship it", "reason": None}
    [decision] = [e for e in engine.store.read_journal("default", "r1") if e.kind == "decision"]
    assert decision.data["by"] == "alice" and decision.data["comment"] == "ship it"


def test_reject_skips_the_gated_step_and_cleanup_still_runs(engine: Engine, side: Path) -> None:
    pending = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1").pending[0]
    engine.reject("r1", pending.id, by="bob", reason="freeze week")
    result = engine.resume("r1")
    assert result.status == "completed"
    assert result.steps["ok"].status == "rejected"
    assert result.steps["deploy"].status == "skipped"
    assert result.outputs == {"url": None, "notice": "deploy skipped"}
    assert calls(side) == ["build", "notify"]


def test_reject_reason_is_data_for_later_steps(store_url: str) -> None:
    @tool
    def explain(text: str) -> str:
        return text

    plan = {"format": "agentflow/v1", "steps": [
        {"id": "gate", "approval": {"prompt": "go?", "on_reject": "continue"}},
        {"id": "why", "tool": "explain",
         "args": {"text": "rejected: ${steps.gate.output.reason}"},
         "when": "not steps.gate.output.approved"}],
        "outputs": {"why": "${steps.why.output}"}}
    engine = Engine(store_url, tools=[explain])
    pending = engine.execute(plan, run_id="r1").pending[0]
    engine.reject("r1", pending.id, by="bob", reason="freeze week")
    assert engine.resume("r1").outputs == {"why": "rejected: freeze week"}


def test_reject_with_on_reject_fail_fails_the_run(store_url: str) -> None:
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "gate", "approval": {"prompt": "go?", "on_reject": "fail"}}]}
    engine = Engine(store_url)
    pending = engine.execute(plan, run_id="r1").pending[0]
    engine.reject("r1", pending.id, by="bob", reason="no")
    result = engine.resume("r1")
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "ApprovalRejected"
    assert "bob" in result.error.message


@pytest.mark.parametrize(("on_expiry", "status", "approved"), [
    ("reject", "completed", False), ("approve", "completed", True), ("fail", "failed", None)])
def test_expiry_applies_its_action(store_url: str, on_expiry: str, status: str,
                                   approved: bool | None) -> None:
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "gate", "approval": {"prompt": "go?", "expires_in": 0.5,
                                    "on_expiry": on_expiry, "on_reject": "continue"}}],
        "outputs": {"approved": "${steps.gate.output.approved}"}}
    engine = Engine(store_url, max_inline_wait=0.0)
    waiting = engine.execute(plan, run_id="r1")
    assert waiting.status == "waiting" and waiting.pending[0].expires_at is not None
    time.sleep(0.6)
    [due] = engine.store.due_runs(time.time())
    assert due.run_id == "r1"
    result = engine.resume("r1")
    assert result.status == status
    if approved is not None:
        assert result.outputs == {"approved": approved}
    else:
        assert result.error is not None and result.error.type == "ApprovalExpired"
    [wait] = engine.store.list_waits("default", "r1")
    assert wait.status == "expired"


def test_deciding_an_expired_approval_is_refused_and_changes_nothing(
    store_url: str
) -> None:
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "gate", "approval": {"prompt": "go?", "expires_in": 0.5}}]}
    engine = Engine(store_url, max_inline_wait=0.0)
    pending = engine.execute(plan, run_id="r1").pending[0]
    time.sleep(0.6)
    before = snapshot(engine, "r1")
    with pytest.raises(DecisionExpired):
        engine.approve("r1", pending.id, by="alice")
    assert snapshot(engine, "r1") == before


def test_double_decision_is_refused_and_changes_nothing(engine: Engine, side: Path) -> None:
    pending = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1").pending[0]
    engine.approve("r1", pending.id, by="alice")
    before = snapshot(engine, "r1")
    with pytest.raises(AlreadyDecided, match="alice"):
        engine.reject("r1", pending.id, by="bob", reason="late")
    assert snapshot(engine, "r1") == before


def test_unknown_run_or_approval_is_refused(engine: Engine, side: Path) -> None:
    engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1")
    before = snapshot(engine, "r1")
    with pytest.raises(RunNotFound, match="nope"):
        engine.approve("nope", "ok:1234", by="alice")
    with pytest.raises(PendingNotFound):
        engine.approve("r1", "ok:00000000", by="alice")
    assert snapshot(engine, "r1") == before


def test_stale_approval_bound_to_other_arguments_is_refused(engine: Engine, side: Path) -> None:
    waiting = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="r1")
    current = waiting.pending[0]
    # An approval this call asked for earlier with other arguments (say, a previous
    # evaluation of the prompt) must not be decidable once the executor asks anew.
    run = engine.store.get_run("default", "r1")
    assert run is not None
    old = WaitRecord(tenant_id="default", run_id="r1", wait_id="ok:deadbeef", key="ok",
                     kind="approval", plan_hash=run.plan_hash, step_id="ok",
                     prompt="Deploy something else?", args_hash="deadbeef" * 4)
    engine.store.acquire_lease("default", "r1", "test", 30, time.time())
    engine.store.put_waits("default", "r1", "test", [old])
    engine.store.finish_run("default", "r1", "test", "waiting")
    assert engine.resume("r1").status == "waiting"
    before = snapshot(engine, "r1")
    with pytest.raises(StaleDecision):
        engine.approve("r1", "ok:deadbeef", by="alice")
    assert snapshot(engine, "r1") == before
    engine.approve("r1", current.id, by="alice")
    assert engine.resume("r1").status == "completed"


@tool(requires_approval=True)
def transfer(account: str, amount: int) -> dict[str, Any]:
    return {"account": account, "amount": amount}


TRANSFER_PLAN = {"format": "agentflow/v1", "steps": [
    {"id": "pay", "tool": "transfer", "args": {"account": "acme", "amount": 50}}],
    "outputs": {"paid": "${steps.pay.output}"}}


def test_approve_with_edited_arguments_runs_the_edited_call(store_url: str) -> None:
    engine = Engine(store_url, tools=[transfer])
    waiting = engine.execute(TRANSFER_PLAN, run_id="r1")
    [pending] = waiting.pending
    assert (pending.tool, pending.args) == ("transfer", {"account": "acme", "amount": 50})
    engine.approve("r1", pending.id, by="alice", args={"account": "acme", "amount": 40})
    assert engine.resume("r1").outputs == {"paid": {"account": "acme", "amount": 40}}
    [decision] = [e for e in engine.store.read_journal("default", "r1")
                  if e.kind == "decision"]
    assert decision.data["args"] == {"account": "acme", "amount": 40}


def test_invalid_edited_arguments_are_refused_and_change_nothing(
    store_url: str
) -> None:
    engine = Engine(store_url, tools=[transfer])
    pending = engine.execute(TRANSFER_PLAN, run_id="r1").pending[0]
    before = snapshot(engine, "r1")
    with pytest.raises(ToolArgumentsError, match="amount"):
        engine.approve("r1", pending.id, by="alice", args={"account": "acme", "amount": "40"})
    assert snapshot(engine, "r1") == before


def test_tool_policy_gates_only_the_calls_it_names(store_url: str) -> None:
    @tool(requires_approval=lambda args: args["amount"] > 100)
    def refund(order: str, amount: int) -> int:
        return amount

    plan = {"format": "agentflow/v1", "steps": [
        {"id": "small", "tool": "refund", "args": {"order": "a", "amount": 20}},
        {"id": "big", "tool": "refund", "args": {"order": "b", "amount": 500}}]}
    engine = Engine(store_url, tools=[refund])
    result = engine.execute(plan, run_id="r1")
    assert result.status == "waiting"
    assert result.steps["small"].status == "succeeded"
    assert [p.step_id for p in result.pending] == ["big"]
    engine.reject("r1", result.pending[0].id, by="bob", reason="too much")
    final = engine.resume("r1")
    assert final.status == "failed"  # a policy gate fails the run when rejected
    assert final.steps["big"].status == "failed"


def test_approvers_are_enforced(store_url: str) -> None:
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "gate", "approval": {"prompt": "go?", "approvers": ["alice"]}}]}
    engine = Engine(store_url)
    pending = engine.execute(plan, run_id="r1").pending[0]
    with pytest.raises(NotAnApprover):
        engine.approve("r1", pending.id, by="mallory")
    engine.approve("r1", pending.id, by="alice")
    assert engine.resume("r1").status == "completed"


def test_two_processes_approve_and_resume_at_once_run_each_step_once(
    store_url: str, tmp_path: Path
) -> None:
    store, side = store_url, tmp_path / "side.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APPROVAL_SIDE_FILE": str(side)}
    engine = Engine(store, tools=TOOLS)
    os.environ["APPROVAL_SIDE_FILE"] = str(side)
    pending = engine.execute(PLAN, inputs={"ref": "v2"}, run_id="race").pending[0]
    racers = [subprocess.Popen(
        [sys.executable, "-m", "tests.support.approval_plan", "approve-and-resume", store,
         str(side), "race", pending.id], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for racer in racers:
        racer.communicate(timeout=60)
        assert racer.returncode == 0
    final = engine.resume("race")
    assert final.status == "completed"
    assert calls(side) == ["build", "deploy", "notify"]
