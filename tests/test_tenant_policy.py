"""Issue 13, part 2: a tenant's policy and quotas are durable state. A call that would pass
a limit is never made; what was spent survives a SIGKILL and a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, PlanValidationError, ToolContext, code_plan, tool
from agentflow.errors import TooManyRuns
from tests.support import quota_worker
from tests.support.stores import store_url_for

ROOT = Path(__file__).resolve().parent.parent
calls: list[str] = []


@tool
def charge(label: str, ctx: ToolContext) -> str:
    calls.append(label)
    ctx.charge(tokens=100, cost_usd=0.5)
    return label


@tool
def deploy(target: str) -> str:
    calls.append(f"deploy:{target}")
    return target


def chain(*labels: str, foreach: list[str] | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"id": label, "tool": "charge", "args": {"label": label},
         **({"after": [labels[i - 1]]} if i else {})} for i, label in enumerate(labels)]
    if foreach is not None:
        steps.append({"id": "fan", "tool": "charge", "foreach": foreach, "max_parallel": 1,
                      "args": {"label": "${item}"}})
    return {"format": "agentflow/v1", "name": "chain", "steps": steps}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    calls.clear()
    engine = Engine(store_url)
    engine.tenant("acme", tools=[charge, deploy])
    yield engine
    engine.close()


def test_the_policy_is_kept_in_the_store(engine: Engine, store_url: str) -> None:
    set_policy = engine.tenant("acme").policy(
        requires_approval={"deploy"}, max_steps=500, max_tool_calls=2_000,
        max_concurrent_runs=20, budget={"llm_tokens": 200_000, "cost_usd": 5.0})
    other = Engine(store_url)
    assert other.tenant("acme").current_policy() == set_policy
    assert other.tenant("globex").current_policy().max_steps is None
    other.close()
    with pytest.raises(ValueError, match="max_steps"):
        engine.tenant("acme").policy(max_steps=-1)
    with pytest.raises(ValueError, match="budget keys"):
        engine.tenant("acme").policy(budget={"dollars": 1})


@pytest.mark.parametrize("limit, made", [(3, ["a", "b", "c"]), (2, ["a", "b"])])
def test_a_call_past_max_tool_calls_is_never_made(engine: Engine, limit: int,
                                                  made: list[str]) -> None:
    acme = engine.tenant("acme")
    acme.policy(max_tool_calls=limit)
    result = acme.execute(chain(foreach=["a", "b", "c"]))
    assert calls == made
    if limit == 3:
        assert result.status == "completed"
    else:
        assert result.status == "failed" and result.error is not None
        assert "tool_calls" in result.error.message and result.error.type == "BudgetExceeded"


@pytest.mark.parametrize("limit, made", [(1.0, ["a", "b"]), (1.01, ["a", "b", "c"])])
def test_charged_cost_stops_the_next_call_at_the_budget(engine: Engine, limit: float,
                                                        made: list[str]) -> None:
    acme = engine.tenant("acme")
    acme.policy(budget={"cost_usd": limit})
    result = acme.execute(chain("a", "b", "c"))
    assert calls == made  # 0.5 per call: at 1.0 spent, a call is made only under 1.01
    assert result.status == ("completed" if len(made) == 3 else "failed")
    assert engine.store.charged("acme", result.run_id) == (100 * len(made), 0.5 * len(made))


def test_a_runs_own_budget_and_the_policy_the_smaller_wins(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(budget={"llm_tokens": 1_000})
    result = acme.execute(chain("a", "b", "c"), budget={"llm_tokens": 150})
    assert calls == ["a", "b"] and result.status == "failed"


def test_policy_approval_gates_a_tool_that_declares_none(engine: Engine) -> None:
    acme = engine.tenant("acme")
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "ship", "tool": "deploy", "args": {"target": "prod"}}]}
    assert acme.execute(plan, run_id="free").status == "completed"
    acme.policy(requires_approval={"deploy"})
    waiting = acme.execute(plan, run_id="gated")
    assert waiting.status == "waiting" and calls == ["deploy:prod"]
    assert waiting.pending[0].tool == "deploy"
    acme.approve("gated", waiting.pending[0].id, by="alice")
    assert acme.resume("gated").status == "completed"
    assert calls == ["deploy:prod", "deploy:prod"]


def test_allowed_tools_and_max_steps_are_checked_at_validation(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(allowed_tools={"charge"}, max_steps=2)
    deploy_plan = {"format": "agentflow/v1", "steps": [
        {"id": "ship", "tool": "deploy", "args": {"target": "prod"}}]}
    with pytest.raises(PlanValidationError, match="deploy"):
        acme.execute(deploy_plan)
    with pytest.raises(PlanValidationError, match="max_steps=2"):
        acme.validate(chain("a", "b", "c"))
    with pytest.raises(PlanValidationError, match="max_steps=2"):
        acme.plans.put("too-long", chain("a", "b", "c"))
    assert calls == [] and engine.store.list_runs("acme") == []
    maybe = chain("a", "b")
    maybe["steps"].append({"id": "c", "tool": "charge", "args": {"label": "c"},
                           "after": ["b"], "when": "inputs.more == true"})
    maybe["inputs"] = {"type": "object", "properties": {"more": {"type": "boolean"}}}
    acme.validate(maybe)  # may stay within the limit: accepted, then held at run time
    assert acme.execute(maybe, inputs={"more": False}).status == "completed"
    refused = acme.execute(maybe, inputs={"more": True})
    assert refused.status == "failed" and "steps" in (refused.error.message or "")
    assert calls == ["a", "b", "a", "b"]


def test_max_concurrent_runs_refuses_a_run_past_the_cap(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(max_concurrent_runs=1)
    refusals: list[str] = []

    @tool
    def start_another() -> str:
        try:
            acme.execute(chain("inner"), run_id="inner")
        except TooManyRuns as error:
            refusals.append(str(error))
        return "tried"

    acme.register(start_another)
    outer = {"format": "agentflow/v1", "steps": [
        {"id": "s", "tool": "start_another", "args": {}}]}
    assert acme.execute(outer, run_id="outer").status == "completed"
    assert refusals and "max_concurrent_runs is 1" in refusals[0]
    assert engine.store.get_run("acme", "inner") is None
    assert acme.execute(chain("later"), run_id="later").status == "completed"


def test_racing_processes_never_start_more_runs_than_the_cap(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    cap, racers = 3, 7
    engine.tenant("acme").policy(max_concurrent_runs=cap)
    go, release = tmp_path / "go", tmp_path / "release"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.support.cap_racer", store_url, f"race-{i}", str(go),
         str(release)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, text=True) for i in range(racers)]
    try:
        assert [proc.stdout.readline() for proc in procs] == ["ready\n"] * racers  # type: ignore[union-attr]
        go.touch()  # all at once
        first = sorted(proc.stdout.readline().strip() for proc in procs)  # type: ignore[union-attr]
        # At the cap, runs start; one past it, they are refused, whoever counted first.
        assert first == ["refused"] * (racers - cap) + ["started"] * cap
        assert engine.store.count_leased("acme") == cap
        release.touch()
        outcomes = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    finally:
        release.touch()
        for proc in procs:
            proc.kill() if proc.poll() is None else None
    assert sorted(outcomes) == [""] * (racers - cap) + ["completed"] * cap
    assert len(engine.list_runs(tenant="acme", limit=100)) == cap  # the refused wrote nothing
    assert engine.store.count_leased("acme") == 0


def _side(side: Path) -> list[dict[str, Any]]:
    if not side.exists():
        return []
    return [json.loads(line) for line in side.read_text().splitlines()]


@pytest.mark.parametrize("policy", [{"budget": {"cost_usd": 3.0}}, {"max_tool_calls": 2}])
def test_counters_survive_a_sigkill_and_a_call_past_the_limit_never_runs(
        tmp_path: Path, policy: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    side = tmp_path / "side.jsonl"
    with store_url_for(tmp_path) as url:
        setup = Engine(url)
        setup.tenant("acme").policy(**policy)
        setup.close()
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.support.quota_worker", url, str(side), "spend-1"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "QUOTA_HANG_ON": "2"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(_side(side)) < 2:  # the second call started (and charged)
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        monkeypatch.setenv("QUOTA_SIDE", str(side))
        engine = Engine(url, lease_seconds=30)
        acme = engine.tenant("acme", tools=[quota_worker.spend])
        run = engine.store.get_run("acme", "spend-1")
        assert run is not None
        engine.store.acquire_lease("acme", "spend-1", "test", 0.0, time.time(),
                                   take_over_from=run.lease_owner)
        result = acme.resume("spend-1")
        engine.close()
    made = [(c["item"], c["attempt"]) for c in _side(side)]
    # the call in flight at the kill is retried; the next one would pass the limit
    assert made == [(1, 1), (2, 1), (2, 2)]
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "BudgetExceeded"


def test_on_limit_approval_holds_the_call_until_a_person_lets_it_past(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(max_tool_calls=2, on_limit="approval")
    waiting = acme.execute(chain("a", "b", "c", "d"), run_id="r")
    assert waiting.status == "waiting" and calls == ["a", "b"]  # "c" never ran
    [ask] = waiting.pending
    assert ask.kind == "approval" and "tool_calls" in (ask.prompt or "")
    acme.approve("r", ask.id, by="alice")
    again = acme.resume("r")
    assert calls == ["a", "b", "c"] and again.status == "waiting"  # "d" asks again
    acme.reject("r", again.pending[0].id, by="bob", reason="enough")
    done = acme.resume("r")
    assert done.status == "failed" and calls == ["a", "b", "c"]
    assert done.steps["d"].status == "failed"
    with pytest.raises(ValueError, match="on_limit"):
        acme.policy(on_limit="later")  # type: ignore[arg-type]


def test_on_limit_approval_holds_a_code_plans_call_too(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(max_tool_calls=2, on_limit="approval")
    plan = code_plan("return [charge(label=label) for label in ['a', 'b', 'c', 'd']]")
    waiting = acme.execute(plan, run_id="r")
    assert waiting.status == "waiting" and calls == ["a", "b"]  # "c" never ran
    [ask] = waiting.pending
    assert (ask.kind, ask.step_id, ask.args) == ("approval", "c3", {"label": "c"})
    assert "tool_calls" in (ask.prompt or "")
    acme.approve("r", ask.id, by="alice")
    again = acme.resume("r")
    assert calls == ["a", "b", "c"] and again.status == "waiting"  # "d" asks again
    acme.reject("r", again.pending[0].id, by="bob", reason="enough")
    done = acme.resume("r")
    assert calls == ["a", "b", "c"]
    assert done.status == "failed" and done.error is not None
    assert (done.error.type, done.error.step_id) == ("BudgetExceeded", "c4")


def test_validate_rejects_a_code_plan_whose_certain_calls_exceed_max_steps(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.policy(max_steps=2)
    three = 'charge(label="a")\nx = charge(label=charge(label="b"))\n'
    with pytest.raises(PlanValidationError, match="always makes 3 tool calls") as refused:
        acme.validate(code_plan(three))
    assert refused.value.issues[0].path == "$.source" and calls == []
    acme.validate(code_plan('charge(label="a")\nreturn charge(label="b")\ncharge(label="c")'))
    acme.validate(code_plan('charge(label="a")\nif inputs.get("x"):\n    return 1\n'
                            'charge(label="b")\ncharge(label="c")'))
    acme.validate(code_plan('charge(label="a")\nx = inputs.get("x") and charge(label="b")\n'
                            'parallel([lambda: charge(label="c")])\n'
                            'f = lambda: 1\nf()\nf()\nf()'))
