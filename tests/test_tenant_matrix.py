"""Issue 13, the cross-tenant matrix: every public operation tried by the wrong tenant is
refused as if the run (or plan) did not exist, and leaves the store's rows unchanged; a
plan reaches only its own tenant's tools, also when its stored copy is edited."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from typer.testing import CliRunner

from agentflow import Engine, PlanValidationError, tool
from agentflow.cli import app
from agentflow.errors import AgentflowError, PendingNotFound, PlanNotFound, RunNotFound
from tests.support.store_rows import dump
from tests.support.stores import backend

calls: list[str] = []


@tool
def acme_charge(amount: int) -> int:
    calls.append(f"acme:{amount}")
    return amount


@tool
def globex_wipe(amount: int) -> int:
    calls.append(f"globex:{amount}")
    return amount


def gated(tool_name: str) -> dict[str, Any]:
    return {"format": "agentflow/v1", "name": "charge", "steps": [
        {"id": "ok", "approval": {"prompt": "charge?"}},
        {"id": "hear", "wait_for_event": "paid", "after": ["ok"]},
        {"id": "charge", "tool": tool_name, "args": {"amount": 5}, "after": ["hear"]}],
        "outputs": {"charged": "${steps.charge.output}"}}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    calls.clear()
    engine = Engine(store_url)
    engine.tenant("acme", tools=[acme_charge])
    engine.tenant("globex", tools=[globex_wipe])
    yield engine
    engine.close()


def acme_state(engine: Engine) -> str:
    """A waiting run of acme's, a registered plan and a policy; the pending approval id."""
    acme = engine.tenant("acme")
    acme.plans.put("charge", gated("acme_charge"))
    acme.policy(max_tool_calls=10)
    return acme.execute("charge", run_id="r1").pending[0].id


def test_every_operation_of_another_tenant_is_refused_and_changes_nothing(
        engine: Engine, store_url: str) -> None:
    pending = acme_state(engine)
    globex = engine.tenant("globex")
    before = dump(store_url)
    refused: list[tuple[str, Callable[[], Any], type[AgentflowError]]] = [
        ("get_run", lambda: globex.get_run("r1"), RunNotFound),
        ("runs.get", lambda: globex.runs.get("r1"), RunNotFound),
        ("resume", lambda: globex.resume("r1"), RunNotFound),
        ("approve", lambda: globex.approve("r1", pending, by="mallory"), RunNotFound),
        ("reject", lambda: globex.reject("r1", pending, by="mallory"), RunNotFound),
        ("send_event", lambda: globex.send_event("r1", "paid"), RunNotFound),
        ("cancel", lambda: globex.cancel("r1"), RunNotFound),
        ("journal", lambda: globex.journal("r1"), RunNotFound),
        ("plan_of", lambda: engine.plan_of("r1", tenant="globex"), RunNotFound),
        ("approval_link", lambda: engine.approval_link("r1", pending, approver="m",
                                                       tenant="globex"), RunNotFound),
        ("wait", lambda: engine.wait("r1", timeout=0.1, tenant="globex"), RunNotFound),
        ("dry_run", lambda: globex.dry_run(gated("globex_wipe"), against="r1"), RunNotFound),
        ("migrate", lambda: globex.migrate("r1", to="0000"), RunNotFound),
        ("fork", lambda: globex.fork("r1", at_step="charge"), RunNotFound),
        ("execute by name", lambda: globex.execute("charge", run_id="r1"), PlanNotFound),
        ("plans.get", lambda: globex.plans.get("charge"), PlanNotFound),
        ("plans.delete", lambda: globex.plans.delete(
            "charge", engine.tenant("acme").plans.version("charge")), PlanNotFound),
        ("approve via acme's run, wrong pending", lambda: engine.tenant("acme").approve(
            "r1", "charge@approval:nope", by="alice"), PendingNotFound),
    ]
    for name, attempt, error in refused:
        with pytest.raises(error) as caught:
            attempt()
        if error is RunNotFound:
            assert "globex" in str(caught.value), name
        assert dump(store_url) == before, f"{name} changed the store"
    assert globex.list_runs() == [] and globex.runs.list(plan="charge") == []
    assert globex.plans.list() == [] and globex.plans.versions("charge") == []
    assert globex.current_policy().max_tool_calls is None
    assert globex.run_due() == [] and globex.prune(older_than=0) == []
    assert dump(store_url) == before
    acme = engine.tenant("acme")
    acme.approve("r1", pending, by="alice")
    acme.send_event("r1", "paid")
    assert acme.resume("r1").outputs == {"charged": 5}
    assert calls == ["acme:5"]


def test_a_plan_naming_another_tenants_tool_is_rejected_at_validation(engine: Engine) -> None:
    acme = engine.tenant("acme")
    for attempt in (lambda: acme.validate(gated("globex_wipe")),
                    lambda: acme.plans.put("wipe", gated("globex_wipe")),
                    lambda: acme.execute(gated("globex_wipe"), run_id="w1"),
                    lambda: engine.submit(gated("globex_wipe"), run_id="w2", tenant="acme")):
        with pytest.raises(PlanValidationError, match="globex_wipe"):
            attempt()
    assert engine.store.list_runs("acme") == [] and acme.plans.list() == []


def _edit_stored_plans(store_url: str, old: str, new: str) -> None:
    """Rewrite every stored plan body behind the engine's back, as an attacker with write
    access to the database would."""
    if backend() == "postgres":
        import psycopg
        schema = dict(parse_qsl(urlsplit(store_url).query))["schema"]
        with psycopg.connect(store_url.split("?")[0], autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.plans SET body = replace(body, %s, %s)", (old, new))
        return
    import sqlite3

    with sqlite3.connect(store_url) as conn:
        conn.execute("UPDATE plans SET body = replace(body, ?, ?)", (old, new))
    conn.close()


def test_a_stored_plan_edited_to_call_another_tenants_tool_is_refused_at_execution(
        engine: Engine, store_url: str) -> None:
    pending = acme_state(engine)
    acme = engine.tenant("acme")
    acme.approve("r1", pending, by="alice")
    acme.send_event("r1", "paid")
    _edit_stored_plans(store_url, "acme_charge", "globex_wipe")
    with pytest.raises(PlanValidationError, match="globex_wipe"):
        acme.resume("r1")
    # a worker holding every tenant's tools refuses it too: the body no longer has the
    # hash the run is pinned to
    assert engine.run_due(tools=[acme_charge, globex_wipe]) == []
    assert calls == []  # globex's tool never ran for acme's run
    assert engine.store.get_run("acme", "r1").status != "completed"


def test_cli_commands_cannot_reach_another_tenants_run(
        engine: Engine, store_url: str, tmp_path: Path) -> None:
    if backend() == "postgres":
        pytest.skip("the CLI test uses the SQLite file as its --store")
    pending = acme_state(engine)
    plan_file = tmp_path / "charge.json"
    plan_file.write_text(json.dumps(gated("acme_charge")))
    before = dump(store_url)
    runner = CliRunner()
    by_tenant = [["fork", "r1", "--at-step", "charge"],
                 ["fork", "r1", "--at-step", "charge", "--result", "charge=1"],
                 ["dry-run", str(plan_file), "--against", "r1"],
                 ["migrate", "r1", "--to", "0000"]]
    for args in (["show", "r1"], ["logs", "r1"], ["approve", "r1", pending, "--by", "m"],
                 ["reject", "r1", pending, "--by", "m"], ["resume", "r1"],
                 ["cancel", "r1"], ["send-event", "r1", "paid"],
                 ["wait", "r1", "--timeout", "0.1"], ["plans", "show", "charge"],
                 ["run", "charge", "--run-id", "r1"], *by_tenant,
                 *([*args, "--tenant", "globex"] for args in by_tenant),
                 ["plans", "show", "charge", "--tenant", "globex"]):
        result = runner.invoke(app, [*args, "--store", store_url])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: no "), (args, result.stderr)
        assert dump(store_url) == before, args
    listed = runner.invoke(app, ["runs", "--json", "--store", store_url])
    assert listed.exit_code == 0 and listed.stdout.strip() == "[]"
    policy = runner.invoke(app, ["policy", "show", "--tenant", "globex", "--json",
                                 "--store", store_url])  # acme's max_tool_calls=10 stays
    assert policy.exit_code == 0 and json.loads(policy.stdout)["max_tool_calls"] is None
    assert dump(store_url) == before
