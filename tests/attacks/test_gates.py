"""Attacks on human approval (issue 9, findings 2-4, and beyond): a plan that weakens,
shortens, auto-approves or re-assigns a gate the host's policy demands, in JSON and in
code; deciders who are not allowed, who are nobody, or whose decision is a flood.

A host gate always holds: the gated tool never runs before a permitted person approves
its exact arguments, and a refused decision changes nothing.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from agentflow import Engine
from agentflow.errors import AgentflowError
from tests.attacks.harness import attack, calls, cases, code_attack

PLAN_GATES: dict[str, dict[str, Any]] = {
    "prompt": {"prompt": "fyi"},
    "auto-approve-at-once": {"prompt": "fyi", "expires_in": 0.01, "on_expiry": "approve"},
    "expire-and-fail": {"prompt": "fyi", "expires_in": 0.01, "on_expiry": "fail"},
    "approvers-mallory": {"prompt": "fyi", "approvers": ["mallory"]},
    "reject-means-skip": {"prompt": "fyi", "on_reject": "skip"},
    "everything": {"prompt": "fyi", "approvers": ["mallory"], "expires_in": 0.01,
                   "on_expiry": "approve", "on_reject": "skip"},
}
GATED = {"deploy": {"target": "production"}, "transfer": {"amount": 1000}}


def gated_step(tool: str, gate: dict[str, Any]) -> dict[str, Any]:
    return {"format": "agentflow/v1", "steps": [
        {"id": "first", "tool": "side_effect", "args": {"label": "before"}},
        {"id": "d", "tool": tool, "args": GATED[tool], "approval": gate, "after": ["first"]}]}


@pytest.mark.parametrize(("tool", "gate"), [
    pytest.param(tool, gate, id=f"{tool}-{name}")
    for (name, gate), tool in itertools.product(PLAN_GATES.items(), GATED)])
def test_a_plan_cannot_weaken_a_host_gate(engine: Engine, tool: str,
                                          gate: dict[str, Any]) -> None:
    attack(engine, gated_step(tool, gate), limits=None, may_wait=True)
    time.sleep(0.05)  # past every expiry the plan asked for
    run = engine.resume("attack")
    assert run.status == "waiting" and not any(key.startswith(tool) for key in calls.labels)
    pending = run.pending[0]
    assert pending.tool == tool and pending.args == GATED[tool] and pending.expires_at is None
    with pytest.raises(AgentflowError):
        engine.approve("attack", pending.id, by="mallory" if tool == "transfer" else "")
    assert engine.resume("attack").status == "waiting"
    engine.approve("attack", pending.id, by="alice")
    assert engine.resume("attack").status == "completed"
    assert sum(count for key, count in calls.labels.items() if key.startswith(tool)) == 1


CODE_GATES = {
    "call-after-an-auto-approving-gate": "approve('ok?', expires_in=0.01, on_expiry='approve')\n"
                                         "deploy(target='production')",
    "call-inside-parallel": "parallel([lambda: deploy(target='production'), "
                            "lambda: transfer(amount=1000)])",
    "call-from-a-generator": "def g():\n    yield deploy(target='production')\nlist(g())",
    "call-after-catching": "for i in range(3):\n    try:\n        deploy(target='production')\n"
                           "    except Exception:\n        pass",
    "call-with-forged-approvers": "approve('x', approvers=['mallory'])\n"
                                  "transfer(amount=1000)",
}


@pytest.mark.parametrize("source", cases(CODE_GATES))
def test_a_code_plan_cannot_get_past_a_host_gate(either_engine: Engine, source: str) -> None:
    code_attack(either_engine, source, may_wait=True)
    time.sleep(0.05)
    run = either_engine.resume("attack")
    assert run.status == "waiting"
    assert not [key for key in calls.labels if key.startswith(("deploy", "transfer"))]


DECISIONS: dict[str, dict[str, Any]] = {
    "nobody": {"by": None},
    "empty-name": {"by": " "},
    "a-list-of-names": {"by": ["alice"]},
    "not-an-approver": {"by": "mallory"},
    "huge-comment": {"by": "alice", "comment": "c" * (2 << 20)},
    "huge-name": {"by": "a" * (2 << 20)},
    "huge-edited-arguments": {"by": "alice", "args": {"amount": 1, "x": "y" * (2 << 20)}},
    "deep-edited-arguments": {"by": "alice", "args": {"amount": 1,
                                                      "x": [[[[[[[[[[[[]]]]]]]]]]]]}},
    "edited-arguments-of-another-type": {"by": "alice", "args": {"amount": "all"}},
    "edited-arguments-nan": {"by": "alice", "args": {"amount": float("nan")}},
}


@pytest.mark.parametrize("decision", cases(DECISIONS))
def test_a_forged_or_flooding_decision_is_refused_and_changes_nothing(
        engine: Engine, decision: dict[str, Any]) -> None:
    attack(engine, gated_step("transfer", {"prompt": "ok?"}), limits=None, may_wait=True)
    pending = engine.get_run("attack").pending[0]
    with pytest.raises(AgentflowError) as refused:
        engine.approve("attack", pending.id, **decision)
    assert len(str(refused.value)) < 2000
    assert engine.get_run("attack").pending[0].status == "pending"
    with pytest.raises(AgentflowError):
        engine.reject("attack", pending.id, by=decision["by"], reason="r" * (2 << 20))
    assert engine.resume("attack").status == "waiting"
    assert not calls.labels["transfer:1000"]


def test_a_flood_of_event_payload_is_refused(engine: Engine) -> None:
    code_attack(engine, "wait_for_event('go')", may_wait=True)
    with pytest.raises(AgentflowError):
        engine.send_event("attack", "go", payload="p" * (2 << 20))
    assert engine.resume("attack").status == "waiting"


@pytest.mark.parametrize("target", ["prod\u0000uction", "\ud800", "a" * 500000],
                         ids=["nul", "lone-surrogate", "long"])
def test_a_gate_prompt_quoting_hostile_arguments_is_stored(engine: Engine, target: str) -> None:
    """The host gate's prompt quotes the arguments; PostgreSQL text refuses NUL."""
    plan = gated_step("deploy", {"prompt": "ok?"})
    plan["steps"][1]["args"] = {"target": target}
    outcome = attack(engine, plan, limits=None, may_wait=True)
    if outcome.status == "waiting":
        assert engine.get_run("attack").pending[0].prompt
    assert not [key for key in calls.labels if key.startswith("deploy")]
