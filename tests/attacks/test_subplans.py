"""Attacks through sub-plans: a registered plan that runs itself (directly, through another,
by a name computed at run time, in a fan-out), names that look like paths, huge inputs.
A cycle is refused when the plan is registered or fails its call when the name is known
only at run time; no child run is left running.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import Engine, code_plan
from agentflow.errors import PlanValidationError
from tests.attacks.harness import cases

REFUSED_AT_REGISTRATION = {
    "code-plan-runs-itself": code_plan("return run_plan('attack')"),
    "graph-runs-itself": {"steps": [{"id": "a", "plan": "attack"}]},
    "fan-out-of-itself": code_plan("return parallel([lambda: run_plan('attack') "
                                   "for i in range(3)])"),
    "name-like-a-path": code_plan("return run_plan('../../etc/passwd')"),
    "name-with-nul": code_plan("return run_plan('a\\x00')"),
}

FAILS_AT_RUN_TIME = {
    "name-computed-at-run-time": code_plan("return run_plan('att' + 'ack')"),
    "name-computed-in-a-thunk": code_plan("return parallel([lambda: run_plan('att' + 'ack')])"),
    "cycle-caught-and-retried": code_plan("for i in range(3):\n    try:\n"
                                          "        run_plan('att' + 'ack')\n"
                                          "    except ToolCallError:\n        pass\n"
                                          "return run_plan('att' + 'ack')"),
}


@pytest.mark.parametrize("plan", cases(REFUSED_AT_REGISTRATION))
def test_a_self_running_plan_is_refused_when_registered(engine: Engine, plan: Any) -> None:
    with pytest.raises(PlanValidationError):
        engine.tenant("acme").plans.put("attack", plan)
    assert not engine.list_runs(tenant="acme")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("plan", cases(FAILS_AT_RUN_TIME))
def test_a_cycle_found_at_run_time_fails_the_call(engine: Engine, plan: Any) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("attack", plan)
    result = acme.execute("attack")
    assert result.status == "failed" and result.error is not None
    assert "cycle" in result.error.message
    assert not engine.list_runs(tenant="acme", status="running")
    assert len(engine.list_runs(tenant="acme")) == 1  # no child run was started


def test_huge_inputs_to_a_child_are_bounded(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("leaf", code_plan("return inputs"))
    acme.plans.put("attack", code_plan("x = 'a' * 900000\nreturn run_plan('leaf', x=x, y=x)"))
    result = acme.execute("attack")
    assert result.status == "failed" and result.error is not None
    assert "max_value_bytes" in result.error.message
    assert not engine.list_runs(tenant="acme", status="running")
