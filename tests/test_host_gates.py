"""A plan can add approval gates but never weaken the host's (issue 9, findings 2 and 4).

The matrix puts every plan-side approval setting (prompt, approvers, expires_in, on_expiry,
on_reject) on a call of a tool declared `requires_approval=True`, with and without
host-declared approvers: the call never runs before a person the host allows approves it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, NotAnApprover, code_plan, tool
from agentflow.errors import DecisionRefused

PLAN_GATES = [
    {"prompt": prompt, **({"approvers": approvers} if approvers else {}),
     **({"expires_in": expires_in} if expires_in else {}),
     "on_expiry": on_expiry, "on_reject": on_reject}
    for prompt, approvers, expires_in, on_expiry, on_reject in itertools.product(
        ["fyi, nothing to see"], [None, ["mallory"]], [None, 0.01],
        ["reject", "approve", "fail"], ["fail", "skip", "continue"])]


def _deploy_tool(ran: list[str], approvers: list[str] | None) -> Any:
    @tool(requires_approval=True, approvers=approvers)
    def deploy(target: str) -> str:
        ran.append(target)
        return target
    return deploy


@pytest.mark.parametrize("host_approvers", [None, ["ops"]], ids=["anyone", "ops"])
@pytest.mark.parametrize("gate", PLAN_GATES, ids=lambda gate: "-".join(
    f"{key}={value}" for key, value in gate.items() if key != "prompt"))
def test_a_plan_gate_never_weakens_the_host_gate(
        tmp_path: Path, gate: dict[str, Any], host_approvers: list[str] | None) -> None:
    ran: list[str] = []
    engine = Engine(str(tmp_path / "runs.db"), tools=[_deploy_tool(ran, host_approvers)],
                    max_inline_wait=0.0)
    plan = {"steps": [{"id": "ship", "tool": "deploy", "args": {"target": "production"},
                       "approval": gate}], "outputs": {"shipped": "${steps.ship.output}"}}
    waiting = engine.execute(plan, run_id="r")
    assert waiting.status == "waiting" and ran == []
    [pending] = waiting.pending
    assert pending.expires_at is None  # the plan cannot make the host gate expire
    assert pending.prompt.startswith('Run deploy with {"target": "production"}?')
    assert "fyi, nothing to see" in pending.prompt  # the plan's words, after the host's

    time.sleep(0.05)  # past any expiry the plan asked for
    assert engine.resume("r").status == "waiting" and ran == []

    with pytest.raises(NotAnApprover):
        engine.approve("r", pending.id, by=None)  # type: ignore[arg-type]
    if host_approvers:
        with pytest.raises(NotAnApprover):
            engine.approve("r", pending.id, by="mallory")  # the plan cannot choose
    approver = host_approvers[0] if host_approvers else "alice"  # nor narrow to mallory
    engine.approve("r", pending.id, by=approver)
    done = engine.resume("r")
    assert (done.status, done.outputs, ran) == ("completed", {"shipped": "production"},
                                                ["production"])


@pytest.mark.parametrize(("on_reject", "status"),
                         [("fail", "failed"), ("skip", "completed"), ("continue", "completed")])
def test_after_a_refusal_the_plan_decides_what_follows(tmp_path: Path, on_reject: str,
                                                        status: str) -> None:
    ran: list[str] = []
    engine = Engine(str(tmp_path / "runs.db"), tools=[_deploy_tool(ran, None)],
                    max_inline_wait=0.0)
    plan = {"steps": [{"id": "ship", "tool": "deploy", "args": {"target": "production"},
                       "approval": {"prompt": "ok?", "on_reject": on_reject}}]}
    [pending] = engine.execute(plan, run_id="r").pending
    engine.reject("r", pending.id, by="bob", reason="freeze")
    result = engine.resume("r")
    assert result.status == status and ran == []


def test_a_gate_the_plan_adds_keeps_its_settings_but_the_hosts_approvers(
        tmp_path: Path) -> None:
    ran: list[str] = []

    @tool(approvers=["ops"])
    def restart(service: str) -> str:
        ran.append(service)
        return service

    engine = Engine(str(tmp_path / "runs.db"), tools=[restart], max_inline_wait=0.0)
    plan = {"steps": [{"id": "go", "tool": "restart", "args": {"service": "db"},
                       "approval": {"prompt": "restart?", "approvers": ["mallory"],
                                    "expires_in": 3600}}]}
    [pending] = engine.execute(plan, run_id="r").pending
    assert pending.prompt == "restart?" and pending.expires_at is not None
    with pytest.raises(NotAnApprover):
        engine.approve("r", pending.id, by="mallory")
    engine.approve("r", pending.id, by="ops")
    assert engine.resume("r").status == "completed" and ran == ["db"]


def test_approve_without_a_name_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"), max_inline_wait=0.0)
    plan = {"steps": [{"id": "gate", "approval": {"prompt": "go?"}}]}
    [pending] = engine.execute(plan, run_id="r").pending
    before = engine.store.list_waits("default", "r")
    for nobody in (None, "", "  "):
        with pytest.raises(DecisionRefused, match="must name who decides"):
            engine.approve("r", pending.id, by=nobody)  # type: ignore[arg-type]
        with pytest.raises(DecisionRefused, match="must name who decides"):
            engine.reject("r", pending.id, by=nobody)  # type: ignore[arg-type]
    assert engine.store.list_waits("default", "r") == before


def test_host_approvers_must_be_a_list_of_names() -> None:
    for bad in ("alice", [], [""], [None]):
        with pytest.raises(ValueError, match="approvers must be a non-empty list"):
            tool(approvers=bad)(lambda: None)  # type: ignore[arg-type]


CODE_PLAN = code_plan('''
approve("fyi", expires_in=0.01, on_expiry="approve", approvers=["mallory"])
return deploy(target="production")
''')


def test_a_code_plan_cannot_approve_a_host_gate_for_itself(tmp_path: Path) -> None:
    ran: list[str] = []
    engine = Engine(str(tmp_path / "runs.db"), tools=[_deploy_tool(ran, ["ops"])],
                    max_inline_wait=0.0)
    first = engine.execute(CODE_PLAN, run_id="r")
    assert first.status == "waiting"
    time.sleep(0.05)  # the plan's own approve() expires, as approved
    second = engine.resume("r")
    assert second.status == "waiting" and ran == []
    [gate] = second.pending
    assert gate.tool == "deploy" and gate.expires_at is None
    with pytest.raises(NotAnApprover):
        engine.approve("r", gate.id, by="mallory")
    engine.approve("r", gate.id, by="ops")
    assert engine.resume("r").outputs == "production" and ran == ["production"]


def test_bad_approve_settings_in_a_code_plan_are_a_clean_error(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"))
    result = engine.execute(code_plan('approve("go?", expires_in=-1)'), run_id="r")
    assert result.status == "failed" and result.error is not None
    assert "approve() settings are invalid: expires_in" in result.error.message
