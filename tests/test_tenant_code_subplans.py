"""Issue 13, part 3: `run_plan(name, **inputs)` runs a registered plan of the tenant from a
code plan as a durable child run, through the isolate's message channel like a tool call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import Engine, PlanValidationError, code_plan
from agentflow.sandbox import Isolation
from tests.test_tenant_subplans import build, calls, deploy

CHILD = {"format": "agentflow/v1", "name": "ship",
         "inputs": {"type": "object", "properties": {"artifact": {"type": "string"}},
                    "required": ["artifact"], "additionalProperties": False},
         "steps": [{"id": "ok", "approval": {"prompt": "ship ${inputs.artifact}?"}},
                   {"id": "deploy", "tool": "deploy", "args": {"artifact": "${inputs.artifact}"},
                    "after": ["ok"]}],
         "outputs": {"deployed": "${steps.deploy.output}", "tags": ["a"]}}

PARENT = code_plan('''
artifact = build(ref=inputs["ref"])
shipped = run_plan("ship", artifact=artifact)
shipped["tags"].append("changed by the parent")
return {"shipped": shipped["deployed"], "tags": shipped["tags"]}
''', "release")


@pytest.fixture(params=["process", "none"])
def engine(store_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    isolation: Isolation = request.param
    calls.clear()
    engine = Engine(store_url, isolation=isolation)
    acme = engine.tenant("acme", tools=[build, deploy])
    acme.plans.put("ship", CHILD)
    yield engine
    engine.close()


def approval_of(run: Any) -> str:
    [approval] = [p for p in run.pending if p.kind == "approval"]
    return str(approval.id)


def test_the_childs_approval_shows_on_the_parent_and_a_decision_there_resumes_both(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    run = acme.execute(PARENT, inputs={"ref": "v1"}, run_id="rel-1")
    assert run.status == "waiting"
    child = engine.store.get_run("acme", "rel-1/c2")  # the call's position names the child
    assert child is not None and (child.status, child.plan_name) == ("waiting", "ship")
    assert [p.prompt for p in run.pending if p.kind == "approval"] == ["ship artifact-v1?"]
    acme.approve("rel-1", approval_of(run), by="alice")  # through the parent's handle
    done = acme.resume("rel-1")
    assert done.status == "completed"
    # the parent changed its copy of the outputs, not the child's
    assert done.outputs == {"shipped": "deployed artifact-v1",
                            "tags": ["a", "changed by the parent"]}
    assert acme.get_run("rel-1/c2").outputs == {"deployed": "deployed artifact-v1",
                                                "tags": ["a"]}
    assert calls == ["build:v1", "deploy:artifact-v1"]
    assert acme.get_run("rel-1").pending == []
    fork = acme.fork("rel-1", at_step="c2", results={"c2": {"deployed": "edited", "tags": []}})
    assert fork.outputs == {"shipped": "edited", "tags": ["changed by the parent"]}
    assert calls == ["build:v1", "deploy:artifact-v1"]  # no child ran for the fork


def test_a_registered_version_can_be_named(engine: Engine) -> None:
    acme = engine.tenant("acme")
    first = acme.plans.version("ship")
    acme.plans.put("ship", {**CHILD, "outputs": {"deployed": "second version"}})
    plan = code_plan(f'return run_plan("ship@{first[:12]}", artifact="x")["deployed"]')
    run = acme.execute(plan, run_id="rel-2")
    acme.approve("rel-2", approval_of(run), by="alice")
    assert acme.resume("rel-2").outputs == "deployed x"
    assert engine.store.get_run("acme", "rel-2/c1").plan_hash == first


def test_literal_names_and_inputs_are_checked_at_validation(engine: Engine) -> None:
    acme = engine.tenant("acme")
    with pytest.raises(PlanValidationError, match="unknown plan 'nope'") as unknown:
        acme.execute(code_plan('return run_plan("nope", artifact="x")'))
    assert unknown.value.issues[0].path == "$.source:1:17"
    with pytest.raises(PlanValidationError, match="missing the required input 'artifact'"):
        acme.validate(code_plan('return run_plan("ship")'))
    with pytest.raises(PlanValidationError, match="plan 'ship' has no input 'colour'"):
        acme.validate(code_plan('return run_plan("ship", artifact="x", colour="red")'))
    with pytest.raises(PlanValidationError, match="keyword arguments only"):
        acme.validate(code_plan('return run_plan("ship", "x")'))
    with pytest.raises(PlanValidationError, match="needs the plan's name first"):
        acme.validate(code_plan('return run_plan(artifact="x")'))
    assert engine.store.list_runs("acme") == [] and calls == []


def test_inputs_known_only_at_run_time_are_checked_against_the_childs_schema(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    plan = code_plan('''
try:
    run_plan(inputs["name"], artifact=7)
except ToolCallError as error:
    return [error.tool, error.error_type, error.message]
''')
    run = acme.execute(plan, inputs={"name": "ship"}, run_id="rel-3")
    tool_name, error_type, message = run.outputs
    assert (tool_name, error_type) == ("run_plan", "PlanValidationError")
    assert "artifact" in message
    assert engine.store.get_run("acme", "rel-3/c1") is None
    missing = acme.execute(plan, inputs={"name": "nope"}, run_id="rel-4")
    assert missing.outputs[1] == "PlanNotFound"


def test_a_child_failure_is_a_catchable_error_of_that_call(engine: Engine) -> None:
    acme = engine.tenant("acme")
    tolerant = code_plan('''
try:
    return run_plan("ship", artifact=build(ref="broken"))
except ToolCallError as error:
    return {"failed": error.error_type, "why": error.message}
''')
    run = acme.execute(tolerant, run_id="rel-5")
    acme.approve("rel-5", approval_of(run), by="alice")
    done = acme.resume("rel-5")
    assert done.status == "completed" and done.outputs["failed"] == "SubPlanFailed"
    assert "the cluster refused it" in done.outputs["why"]
    strict = code_plan('return run_plan("ship", artifact=build(ref="broken"))')
    run = acme.execute(strict, run_id="rel-6")
    acme.approve("rel-6", approval_of(run), by="alice")
    failed = acme.resume("rel-6")
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.step_id == "c2" and "the cluster refused it" in failed.error.message
    assert calls == ["build:broken", "deploy:artifact-broken"] * 2


def test_cancelling_the_parent_cancels_the_child(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(PARENT, inputs={"ref": "v1"}, run_id="rel-7")
    assert acme.cancel("rel-7").status == "cancelled"
    child = acme.get_run("rel-7/c2")
    assert child.status == "cancelled" and child.pending == []
    assert calls == ["build:v1"]


def test_cycles_through_literal_names_are_rejected_at_validation(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("a", code_plan('return build(ref="x")'))
    acme.plans.put("b", code_plan('return run_plan("a")'))
    with pytest.raises(PlanValidationError, match="a -> b -> a"):
        acme.plans.put("a", code_plan('return run_plan("b")'))
    acme.plans.put("c", code_plan('return build(ref="x")'))
    with pytest.raises(PlanValidationError, match="c -> c"):
        acme.plans.put("c", code_plan('return run_plan("c")'))
    assert acme.plans.get("a").source == 'return build(ref="x")'


def test_cycles_through_computed_names_are_refused_at_execution(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("loop", code_plan('''
try:
    return run_plan(inputs["next"], next=inputs["next"])
except ToolCallError as error:
    return error.message
'''))
    run = acme.execute("loop", inputs={"next": "loop"}, run_id="rel-8")
    assert run.status == "completed" and "sub-plans form a cycle: loop -> loop" in run.outputs
    assert engine.store.get_run("acme", "rel-8/c1") is None
    acme.plans.put("hop", code_plan('return run_plan("loop", next="hop")'))
    run = acme.execute("loop", inputs={"next": "hop"}, run_id="rel-9")
    assert run.status == "completed"
    assert "loop -> hop -> loop" in run.outputs
    assert [r.run_id for r in acme.runs.list(plan="hop")] == ["rel-9/c1"]


def test_an_ad_hoc_plan_that_shares_a_registered_name_is_no_cycle(engine: Engine) -> None:
    acme = engine.tenant("acme")
    own = code_plan('return run_plan(inputs["name"], artifact="x")["deployed"]', "ship")
    run = acme.execute(own, inputs={"name": "ship"}, run_id="rel-10")
    acme.approve("rel-10", approval_of(run), by="alice")
    assert acme.resume("rel-10").outputs == "deployed x"


def test_a_changed_call_at_a_childs_position_is_non_deterministic(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(PARENT, inputs={"ref": "v1"}, run_id="rel-11")
    [entry] = [e for e in acme.journal("rel-11") if e.key == "c2" and e.kind == "call"]
    assert entry.tool == "run_plan" and entry.data["plan"] == "ship"
    replay = acme.dry_run(code_plan('''
artifact = build(ref=inputs["ref"])
return run_plan("ship", artifact=artifact + "!")
''', "release"), against="rel-11")
    assert not replay.matches and "c2" in (replay.mismatch or "")


def test_a_dry_run_stops_at_a_child_the_journal_does_not_answer(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(PARENT, inputs={"ref": "v1"}, run_id="rel-12")
    report = acme.dry_run(PARENT, against="rel-12")
    assert report.matches and report.replayed == ["c1"] and "c2@plan" in report.waiting
    assert calls == ["build:v1"]  # no tool called by the dry run
    assert [r.run_id for r in acme.runs.list()] == ["rel-12/c2", "rel-12"]


def test_children_started_in_parallel_each_run_once(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("one", {"format": "agentflow/v1",
                           "inputs": {"type": "object", "properties": {"a": {"type": "string"}}},
                           "steps": [{"id": "d", "tool": "deploy",
                                      "args": {"artifact": "${inputs.a}"}}],
                           "outputs": {"x": "${steps.d.output}"}})
    plan = code_plan('out = parallel([lambda a=a: run_plan("one", a=a) for a in "pqr"])\n'
                     'return [o["x"] for o in out]')
    done = acme.execute(plan, run_id="par")
    assert done.outputs == ["deployed p", "deployed q", "deployed r"]
    assert sorted(calls) == ["deploy:p", "deploy:q", "deploy:r"]
    assert sorted(r.run_id for r in acme.runs.list(plan="one")) == [
        "par/c1.0.c1", "par/c1.1.c1", "par/c1.2.c1"]


def test_a_childs_inputs_and_outputs_are_held_to_the_limits(store_url: str) -> None:
    from agentflow.executors.limits import Limits

    calls.clear()
    engine = Engine(store_url)
    big = {"format": "agentflow/v1", "steps": [
        {"id": "b", "tool": "build", "args": {"ref": "${inputs.ref}"}}],
        "outputs": {"a": "${steps.b.output}", "b": "${steps.b.output}",
                    "c": "${steps.b.output}"}}
    plan = code_plan('''
try:
    run_plan("big", ref=inputs["ref"])
except ToolCallError as error:
    return [error.error_type, error.message]
''')
    values = engine.tenant("values", tools=[build], limits=Limits(max_value_bytes=200))
    values.plans.put("big", big)
    refused = values.execute(plan, inputs={"ref": "x" * 300}, run_id="in")
    assert refused.outputs[0] == "LimitExceeded" and "the inputs" in refused.outputs[1]
    assert engine.store.get_run("values", "in/c1") is None and calls == []  # never started
    # the parent's journal quota: the child (150 bytes of journal) fits in its own, the
    # outputs it returns (234 bytes) do not fit in what the parent has left
    quota = engine.tenant("quota", tools=[build], limits=Limits(max_run_journal_bytes=450))
    quota.plans.put("big", big)
    full = quota.execute(plan, inputs={"ref": "y" * 60}, run_id="out")
    assert full.outputs[0] == "LimitExceeded" and "the outputs" in full.outputs[1]
    assert quota.get_run("out/c1").status == "completed"  # its outputs stay with the child
    graph = {"format": "agentflow/v1", "steps": [
        {"id": "big", "plan": "big", "inputs": {"ref": "${inputs.ref}"}}]}
    failed = quota.execute(graph, inputs={"ref": "y" * 60}, run_id="graph-out")
    assert failed.status == "failed" and "max_run_journal_bytes=450" in str(failed.error)
    engine.close()
