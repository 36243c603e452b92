"""Contract 8: a tenant sees, resumes and decides only its own runs, and its plans call only
the shared tools and its own."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentflow import Engine, PlanValidationError, RunNotFound, tool

calls: list[str] = []


@tool
def acme_billing(amount: int) -> int:
    calls.append(f"acme:{amount}")
    return amount


@tool
def shared_echo(text: str) -> str:
    calls.append(f"echo:{text}")
    return text


def gated(tool_name: str) -> dict[str, Any]:
    return {"format": "agentflow/v1", "steps": [
        {"id": "ok", "approval": {"prompt": "charge?"}},
        {"id": "charge", "tool": tool_name, "args": {"amount": 5}, "after": ["ok"]}],
        "outputs": {"charged": "${steps.charge.output}"}}


@pytest.fixture
def engine(store_url: str) -> Engine:
    calls.clear()
    engine = Engine(store_url, tools=[shared_echo])
    engine.tenant("acme", tools=[acme_billing])
    engine.tenant("globex")
    return engine


def snapshot(engine: Engine, tenant: str, run_id: str) -> Any:
    store = engine.store
    return (store.get_run(tenant, run_id), store.list_waits(tenant, run_id),
            store.read_journal(tenant, run_id))


def test_another_tenant_cannot_see_resume_decide_or_cancel_a_run(engine: Engine) -> None:
    acme, globex = engine.tenant("acme"), engine.tenant("globex")
    pending = acme.execute(gated("acme_billing"), run_id="r1").pending[0]
    before = snapshot(engine, "acme", "r1")
    for attempt in (lambda: globex.get_run("r1"), lambda: globex.resume("r1"),
                    lambda: globex.approve("r1", pending.id, by="mallory"),
                    lambda: globex.reject("r1", pending.id, by="mallory"),
                    lambda: globex.send_event("r1", "go"),
                    lambda: globex.cancel("r1"), lambda: globex.journal("r1")):
        with pytest.raises(RunNotFound, match="globex"):
            attempt()
    assert snapshot(engine, "acme", "r1") == before
    assert globex.list_runs() == [] and [r.run_id for r in acme.list_runs()] == ["r1"]
    acme.approve("r1", pending.id, by="alice")
    assert acme.resume("r1").outputs == {"charged": 5}


def test_a_plan_calls_only_its_tenants_tools_and_the_shared_ones(engine: Engine) -> None:
    with pytest.raises(PlanValidationError, match="acme_billing"):
        engine.tenant("globex").execute(gated("acme_billing"), run_id="r1")
    assert engine.store.get_run("globex", "r1") is None
    echo = {"format": "agentflow/v1",
            "steps": [{"id": "e", "tool": "shared_echo", "args": {"text": "hi"}}]}
    assert engine.tenant("globex").execute(echo).status == "completed"
    assert calls == ["echo:hi"]


def test_the_same_run_id_in_two_tenants_is_two_runs(engine: Engine) -> None:
    echo = {"format": "agentflow/v1",
            "steps": [{"id": "e", "tool": "shared_echo", "args": {"text": "${inputs.t}"}}],
            "outputs": {"said": "${steps.e.output}"}}
    a = engine.tenant("acme").execute(echo, inputs={"t": "a"}, run_id="same")
    g = engine.tenant("globex").execute(echo, inputs={"t": "g"}, run_id="same")
    assert (a.outputs, g.outputs) == ({"said": "a"}, {"said": "g"})
    assert (a.tenant_id, g.tenant_id) == ("acme", "globex")
    assert calls == ["echo:a", "echo:g"]


def test_a_worker_for_one_tenant_resumes_only_its_runs(engine: Engine) -> None:
    nap = {"format": "agentflow/v1", "steps": [{"id": "nap", "sleep": 0.3}]}
    engine.max_inline_wait = 0.0
    engine.tenant("acme").execute(nap, run_id="a")
    engine.tenant("globex").execute(nap, run_id="g")
    time.sleep(0.4)
    assert [r.run_id for r in engine.tenant("acme").run_due()] == ["a"]
    assert engine.get_run("g", tenant="globex").status == "waiting"


def test_a_tenant_id_must_be_a_non_empty_string(engine: Engine) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        engine.tenant("  ")


def test_a_tenant_or_run_id_with_whitespace_at_an_end_is_refused(engine: Engine) -> None:
    # "acme " and "acme" would be two tenants, each with its own runs, tools and policy
    for given in (" acme", "acme ", " acme "):
        with pytest.raises(ValueError) as refused:
            engine.tenant(given)
        assert str(refused.value) == (f"tenant {given!r} starts or ends with whitespace; give "
                                      "it as 'acme' (an id is taken exactly as given)")
    with pytest.raises(ValueError, match="run_id 'r1 ' starts or ends with whitespace"):
        engine.tenant("acme").execute(gated("acme_billing"), run_id="r1 ")
    assert engine.tenant("ac me").id == "ac me"  # inside an id, a space is a character
