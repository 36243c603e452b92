"""Issue 13, part 3: a `plan` step runs another registered plan of the tenant as a durable
child run."""

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

from agentflow import Engine, PlanValidationError, tool
from tests.support.stores import store_url_for

ROOT = Path(__file__).resolve().parent.parent
calls: list[str] = []


@tool
def build(ref: str) -> str:
    calls.append(f"build:{ref}")
    return f"artifact-{ref}"


@tool
def deploy(artifact: str) -> str:
    calls.append(f"deploy:{artifact}")
    if artifact == "artifact-broken":
        raise RuntimeError("the cluster refused it")
    return f"deployed {artifact}"


CHILD = {"format": "agentflow/v1", "name": "ship",
         "inputs": {"type": "object", "properties": {"artifact": {"type": "string"}},
                    "required": ["artifact"]},
         "steps": [{"id": "ok", "approval": {"prompt": "ship ${inputs.artifact}?"}},
                   {"id": "deploy", "tool": "deploy", "args": {"artifact": "${inputs.artifact}"},
                    "after": ["ok"]}],
         "outputs": {"deployed": "${steps.deploy.output}"}}


def parent(**extra: Any) -> dict[str, Any]:
    return {"format": "agentflow/v1", "name": "release",
            "inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
            "steps": [{"id": "build", "tool": "build", "args": {"ref": "${inputs.ref}"}},
                      {"id": "ship", "plan": "ship",
                       "inputs": {"artifact": "${steps.build.output}"}, **extra}],
            "outputs": {"shipped": "${steps.ship.output.deployed}"}}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    calls.clear()
    engine = Engine(store_url)
    acme = engine.tenant("acme", tools=[build, deploy])
    acme.plans.put("ship", CHILD)
    yield engine
    engine.close()


def test_the_childs_approval_shows_on_the_parent_and_a_decision_there_resumes_both(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    run = acme.execute(parent(), inputs={"ref": "v1"}, run_id="rel-1")
    assert run.status == "waiting"
    child = engine.store.get_run("acme", "rel-1/ship")
    assert child is not None and child.status == "waiting" and child.plan_name == "ship"
    [approval] = [p for p in run.pending if p.kind == "approval"]
    assert approval.prompt == "ship artifact-v1?"
    acme.approve("rel-1", approval.id, by="alice")  # through the parent's handle
    done = acme.resume("rel-1")
    assert done.status == "completed" and done.outputs == {"shipped": "deployed artifact-v1"}
    assert acme.get_run("rel-1/ship").status == "completed"
    assert calls == ["build:v1", "deploy:artifact-v1"]
    assert acme.get_run("rel-1").pending == []


def test_inputs_are_checked_against_the_childs_schema(engine: Engine) -> None:
    acme = engine.tenant("acme")
    bad = parent()
    bad["steps"][1]["inputs"] = {"artifact": 7}
    with pytest.raises(PlanValidationError, match="artifact"):
        acme.validate(bad)
    unknown = parent()
    unknown["steps"][1]["plan"] = "nope"
    with pytest.raises(PlanValidationError, match="unknown plan 'nope'"):
        acme.execute(unknown, inputs={"ref": "v1"})
    assert engine.store.list_runs("acme") == [] and calls == []


def test_references_into_a_childs_outputs_are_typed_by_its_outputs(engine: Engine) -> None:
    acme = engine.tenant("acme")
    unknown = parent()
    unknown["outputs"] = {"shipped": "${steps.ship.output.shiped}"}
    with pytest.raises(PlanValidationError, match="steps.ship.output has no field 'shiped' "
                       r"\(fields: deployed\) in the outputs of plan 'ship'"):
        acme.validate(unknown)
    acme.plans.put("count", {"format": "agentflow/v1", "steps": [
        {"id": "b", "tool": "build", "args": {"ref": "x"}}],
        "outputs": {"n": 3, "label": "three", "all": {"n": "${steps.b.output}"}}})
    typed = {"format": "agentflow/v1", "steps": [
        {"id": "count", "plan": "count"},
        {"id": "deploy", "tool": "deploy", "args": {"artifact": "${steps.count.output.n}"}}]}
    with pytest.raises(PlanValidationError, match="integer") as wrong:
        acme.validate(typed)
    assert [issue.path for issue in wrong.value.issues] == ["$.steps[1].args.artifact"]
    typed["steps"][1]["args"] = {"artifact": "${steps.count.output.label}"}
    acme.validate(typed)
    typed["steps"][1]["args"] = {"artifact": "${steps.count.output.all.m}"}
    with pytest.raises(PlanValidationError, match="no field 'm'"):
        acme.validate(typed)


def test_a_child_failure_fails_the_parents_step(engine: Engine) -> None:
    acme = engine.tenant("acme")
    run = acme.execute(parent(), inputs={"ref": "broken"}, run_id="rel-2")
    acme.approve("rel-2", run.pending[-1].id, by="alice")
    failed = acme.resume("rel-2")
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.step_id == "ship" and "the cluster refused it" in failed.error.message
    tolerant = acme.execute(parent(continue_on_error=True), inputs={"ref": "broken"},
                            run_id="rel-3")
    acme.approve("rel-3", tolerant.pending[-1].id, by="alice")
    assert acme.resume("rel-3").steps["ship"].status == "failed"


def test_a_plan_step_with_retry_runs_a_failed_child_again_as_a_new_run(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    flaky = {"format": "agentflow/v1", "name": "flaky",
             "inputs": {"type": "object", "properties": {"artifact": {"type": "string"}}},
             "steps": [{"id": "deploy", "tool": "deploy",
                        "args": {"artifact": "${inputs.artifact}"}}],
             "outputs": {"deployed": "${steps.deploy.output}"}}
    acme.plans.put("flaky", flaky)
    retry = {"max_attempts": 3, "initial_delay": 0, "jitter": 0}
    plan = {"format": "agentflow/v1", "steps": [
        {"id": "ship", "plan": "flaky", "inputs": {"artifact": "artifact-broken"},
         "retry": retry}]}
    failed = acme.execute(plan, run_id="rt-1")
    assert failed.status == "failed" and "'rt-1/ship~3') failed" in str(failed.error)
    assert [(r.run_id, r.status) for r in acme.runs.list(plan="flaky")] == [
        ("rt-1/ship~3", "failed"), ("rt-1/ship~2", "failed"), ("rt-1/ship", "failed")]
    assert calls == ["deploy:artifact-broken"] * 3
    assert acme.resume("rt-1").status == "failed" and len(calls) == 3  # replayed: no 4th
    tolerant = {"format": "agentflow/v1", "steps": [
        {"id": "ship", "plan": "flaky", "inputs": {"artifact": "artifact-broken"},
         "retry": {**retry, "max_attempts": 2}, "continue_on_error": True},
        {"id": "after", "tool": "build", "args": {"ref": "x"}, "after": ["ship"]}]}
    done = acme.execute(tolerant, run_id="rt-2")
    assert done.status == "completed" and done.steps["ship"].status == "failed"
    assert calls.count("deploy:artifact-broken") == 5 and calls[-1] == "build:x"
    only_cancelled = acme.execute(parent(retry=retry), inputs={"ref": "v1"}, run_id="rt-3")
    assert only_cancelled.status == "waiting"
    acme.cancel("rt-3/ship")  # stopped on purpose: not retried
    assert acme.resume("rt-3").status == "failed"
    assert engine.store.get_run("acme", "rt-3/ship~2") is None
    with pytest.raises(PlanValidationError, match="retry only applies to a tool step or a "
                       "plan step"):
        acme.validate({"format": "agentflow/v1", "steps": [
            {"id": "ok", "approval": {"prompt": "?"}, "retry": retry}]})


def test_cancelling_the_parent_cancels_the_child(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(parent(), inputs={"ref": "v1"}, run_id="rel-4")
    assert acme.cancel("rel-4").status == "cancelled"
    child = acme.get_run("rel-4/ship")
    assert child.status == "cancelled" and child.pending == []
    assert calls == ["build:v1"]


def test_cycles_between_plans_are_rejected(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("a", {"format": "agentflow/v1", "steps": [
        {"id": "b", "tool": "build", "args": {"ref": "x"}}]})
    acme.plans.put("b", {"format": "agentflow/v1", "steps": [{"id": "a", "plan": "a"}]})
    with pytest.raises(PlanValidationError, match="a -> b -> a"):
        acme.plans.put("a", {"format": "agentflow/v1", "steps": [{"id": "b", "plan": "b"}]})
    acme.plans.put("self", {"format": "agentflow/v1", "steps": [
        {"id": "b", "tool": "build", "args": {"ref": "x"}}]})
    with pytest.raises(PlanValidationError, match="self -> self"):
        acme.plans.put("self", {"format": "agentflow/v1", "steps": [{"id": "s",
                                                                       "plan": "self"}]})


def _side(side: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in side.read_text().splitlines()] if side.exists() else []


@pytest.mark.parametrize(("kind", "child"), [("graph", "rel-9/ship"), ("code", "rel-9/c2")])
def test_a_sigkill_during_the_childs_execution_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, child: str) -> None:
    """A `plan` step's child, and a code plan's `run_plan` child (at call position c2)."""
    from tests.support import subplan_worker

    side = tmp_path / "side.jsonl"
    with store_url_for(tmp_path) as url:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.support.subplan_worker", url, str(side), "rel-9",
             kind],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "SUBPLAN_HANG": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not any(call["tool"] == "deploy" for call in _side(side)):
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)  # the child's deploy is in flight
        worker.wait()
        monkeypatch.setenv("SUBPLAN_SIDE", str(side))
        engine = Engine(url, lease_seconds=1.0)
        acme = engine.tenant("acme", tools=[subplan_worker.build, subplan_worker.deploy])
        deadline = time.monotonic() + 60
        while any((run.lease_expires_at or 0) >= time.time()
                  for run in engine.store.list_runs("acme")):  # the dead worker's leases
            assert time.monotonic() < deadline
            time.sleep(0.1)
        done = acme.resume("rel-9")
        engine.close()
    assert done.status == "completed"
    assert done.outputs == {"shipped": "deployed artifact-v1"}
    made = [(call["tool"], call["run"], call["attempt"]) for call in _side(side)]
    # build ran once; the deploy in flight at the kill ran again, with the same key
    assert made == [("build", "rel-9", 1), ("deploy", child, 1), ("deploy", child, 2)]
    keys = [call["key"] for call in _side(side) if call["tool"] == "deploy"]
    assert keys[0] == keys[1]


def test_the_plans_example_with_a_sub_plan_runs_to_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentflow.demo import TOOLS

    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    engine = Engine(str(tmp_path / "runs.db"))
    acme = engine.tenant("acme", tools=TOOLS)
    acme.plans.put("deploy_service", ROOT / "plans" / "deploy_service.json")
    run = acme.execute(ROOT / "plans" / "release_with_subplan.json", run_id="rel")
    for environment in ("staging", "production"):
        [approval] = [p for p in run.pending if p.kind == "approval"]
        assert approval.prompt is not None and environment in approval.prompt
        acme.approve("rel", approval.id, by="alice")
        run = acme.resume("rel")
    assert run.status == "completed"
    assert set(run.outputs) == {"staging", "production"}
    assert "production" in run.outputs["production"]
    assert [r.run_id for r in acme.runs.list(plan="deploy_service")] == [
        "rel/production", "rel/staging"]
    engine.close()


def test_the_code_plan_example_with_sub_plans_runs_to_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentflow.demo import TOOLS

    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    engine = Engine(str(tmp_path / "runs.db"))
    acme = engine.tenant("acme", tools=TOOLS)
    acme.plans.put("deploy_service", ROOT / "plans" / "deploy_service.json")
    run = acme.execute(ROOT / "plans" / "release_with_subplan.py", run_id="rel")
    [staging] = [p for p in run.pending if p.kind == "approval"]
    assert staging.prompt is not None and "to staging?" in staging.prompt
    acme.approve("rel", staging.id, by="alice")
    run = acme.resume("rel")
    [production] = [p for p in run.pending if p.kind == "approval"]
    assert production.prompt is not None and "to production?" in production.prompt
    acme.reject("rel", production.id, by="bob", reason="friday")
    done = acme.resume("rel")
    assert done.status == "completed"
    assert done.outputs["staging"].startswith("https://staging.example.test/")
    assert done.outputs["production"] == "not deployed: refused"
    assert [(r.run_id, r.status) for r in acme.runs.list(plan="deploy_service")] == [
        ("rel/c4", "completed"), ("rel/c3", "completed")]
    cancelled = acme.execute(ROOT / "plans" / "release_with_subplan.py", run_id="rel-2")
    acme.approve("rel-2", cancelled.pending[-1].id, by="alice")
    acme.resume("rel-2")
    acme.cancel("rel-2/c4")  # the production child ends without completing
    failed = acme.resume("rel-2").outputs["production"]
    assert failed.startswith("not deployed: sub-plan 'deploy_service'")
    engine.close()


def test_a_worker_alone_takes_parent_and_child_to_the_end(engine: Engine) -> None:
    acme = engine.tenant("acme")
    run = engine.execute(parent(), tools=[build, deploy], inputs={"ref": "v2"},
                         run_id="rel-5", tenant="acme")  # the engine's API: nothing driven
    assert run.status == "waiting"
    assert engine.store.get_run("acme", "rel-5/ship").status == "waiting"
    assert [r.run_id for r in acme.run_due()] == ["rel-5/ship"]  # the child, due at once
    [approval] = [p for p in acme.get_run("rel-5").pending if p.kind == "approval"]
    acme.approve("rel-5", approval.id, by="alice")
    assert [r.run_id for r in acme.run_due()] == ["rel-5/ship"]   # the child completes ...
    assert [(r.run_id, r.status) for r in acme.run_due()] == [("rel-5", "completed")]
    assert acme.get_run("rel-5").outputs == {"shipped": "deployed artifact-v2"}


def test_a_fork_of_a_childs_run_does_not_report_to_the_parent(engine: Engine) -> None:
    acme = engine.tenant("acme")
    run = acme.execute(parent(), inputs={"ref": "v1"}, run_id="rel-6")
    acme.approve("rel-6", run.pending[-1].id, by="alice")
    assert acme.resume("rel-6").status == "completed"
    fork = acme.fork("rel-6/ship", at_step="deploy", new_run_id="ship-again")
    assert fork.status == "completed" and "parent" not in engine.store.get_run(
        "acme", "ship-again").options
    assert [e.name for e in engine.store.list_events("acme", "rel-6")] == [
        "subplan:rel-6/ship"]


def test_a_plan_model_with_a_plan_step_runs_like_its_dict(engine: Engine) -> None:
    from agentflow.plan import parse_plan

    run = engine.tenant("acme").execute(parse_plan(parent()), inputs={"ref": "m"},
                                        run_id="model")
    assert run.status == "waiting" and engine.store.get_run("acme", "model/ship") is not None
