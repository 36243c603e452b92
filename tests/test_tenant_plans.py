"""Issue 13, part 1: each tenant's plan registry. A version is the content hash runs are
pinned by; a run started by name keeps the version current when it started."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import Engine, PlanValidationError, tool
from agentflow.errors import PlanInUse, PlanMismatch, PlanNotFound

calls: list[str] = []


@tool
def build(ref: str) -> str:
    calls.append(f"build:{ref}")
    return f"artifact-{ref}"


@tool
def ship(artifact: str) -> str:
    calls.append(f"ship:{artifact}")
    return f"shipped {artifact}"


def release(label: str, gated: bool = True) -> dict[str, Any]:
    """A release plan whose output says which version ran (`label`)."""
    steps: list[dict[str, Any]] = [{"id": "build", "tool": "build",
                                    "args": {"ref": "${inputs.ref}"}}]
    if gated:
        steps.append({"id": "ok", "approval": {"prompt": "ship?"}, "after": ["build"]})
    steps.append({"id": "ship", "tool": "ship", "args": {"artifact": "${steps.build.output}"},
                  "after": ["ok"] if gated else ["build"]})
    return {"format": "agentflow/v1", "name": "release",
            "inputs": {"type": "object", "properties": {"ref": {"type": "string"}},
                       "required": ["ref"]},
            "steps": steps,
            "outputs": {"label": label, "shipped": "${steps.ship.output}"}}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    calls.clear()
    engine = Engine(store_url)
    engine.tenant("acme", tools=[build, ship])
    engine.tenant("globex", tools=[build, ship])
    yield engine
    engine.close()


def test_put_returns_the_content_hash_and_the_same_content_gives_the_same_version(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    v1 = acme.plans.put("release", release("one"))
    assert acme.plans.put("release", release("one")) == v1
    v2 = acme.plans.put("release", release("two"))
    assert v2 != v1 and len(v1) == 64
    assert [v for v, _ in acme.plans.versions("release")] == [v2, v1]
    assert acme.plans.get("release")["outputs"]["label"] == "two"
    assert acme.plans.get("release", v1)["outputs"]["label"] == "one"
    assert acme.plans.get("release", v1[:8])["outputs"]["label"] == "one"
    assert acme.plans.put("release", release("one")) == v1  # an old content is current again
    assert [v for v, _ in acme.plans.versions("release")] == [v1, v2]
    assert [(p.name, p.version, p.versions) for p in acme.plans.list()] == [("release", v1, 2)]


def test_a_plan_is_validated_against_the_tenants_tools_when_it_is_put(engine: Engine) -> None:
    engine.tenant("initech")  # no tools
    with pytest.raises(PlanValidationError, match="build"):
        engine.tenant("initech").plans.put("release", release("one"))
    assert engine.tenant("initech").plans.versions("release") == []
    with pytest.raises(ValueError, match="invalid plan name"):
        engine.tenant("acme").plans.put("release.json", release("one"))


def test_registries_of_two_tenants_are_separate(engine: Engine) -> None:
    engine.tenant("acme").plans.put("release", release("acme"))
    with pytest.raises(PlanNotFound, match="globex"):
        engine.tenant("globex").plans.get("release")
    with pytest.raises(PlanNotFound, match="globex"):
        engine.tenant("globex").execute("release", inputs={"ref": "v1"})
    assert engine.tenant("globex").plans.list() == []
    assert engine.store.list_runs("globex") == []


def test_a_waiting_run_keeps_its_version_when_a_new_one_is_put(engine: Engine) -> None:
    acme = engine.tenant("acme")
    v1 = acme.plans.put("release", release("one"))
    run = acme.execute("release", inputs={"ref": "v1"}, run_id="rel-1")
    assert run.status == "waiting" and engine.store.get_run("acme", "rel-1").plan_hash == v1
    v2 = acme.plans.put("release", release("two"))
    acme.approve("rel-1", run.pending[0].id, by="alice")
    done = acme.resume("rel-1")
    assert done.status == "completed"
    assert done.outputs == {"label": "one", "shipped": "shipped artifact-v1"}
    fresh = acme.execute("release", inputs={"ref": "v2"}, run_id="rel-2")
    assert engine.store.get_run("acme", "rel-2").plan_hash == v2
    assert fresh.status == "waiting"


def test_executing_a_name_again_with_its_run_id_continues_the_run_on_its_version(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    v1 = acme.plans.put("release", release("one"))
    pending = acme.execute("release", inputs={"ref": "v1"}, run_id="rel-1").pending[0]
    acme.plans.put("release", release("two"))
    acme.approve("rel-1", pending.id, by="alice")
    again = acme.execute("release", inputs={"ref": "v1"}, run_id="rel-1")
    assert again.outputs["label"] == "one"
    assert engine.store.get_run("acme", "rel-1").plan_hash == v1
    assert calls == ["build:v1", "ship:artifact-v1"]
    acme.plans.put("other", release("x", gated=False))
    with pytest.raises(PlanMismatch, match="not started from plan 'other'"):
        acme.execute("other", inputs={"ref": "v1"}, run_id="rel-1")


def test_a_version_can_be_named_explicitly(engine: Engine) -> None:
    acme = engine.tenant("acme")
    v1 = acme.plans.put("release", release("one", gated=False))
    acme.plans.put("release", release("two", gated=False))
    assert acme.execute(f"release@{v1[:10]}", inputs={"ref": "a"}).outputs["label"] == "one"
    with pytest.raises(PlanNotFound, match="version 0000"):
        acme.execute("release@0000", inputs={"ref": "a"})


def test_runs_record_their_plan_name_and_the_store_filters_by_it(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("release", release("one"))
    acme.plans.put("hotfix", release("hot", gated=False))
    acme.execute("release", inputs={"ref": "a"}, run_id="r1")
    acme.execute("hotfix", inputs={"ref": "b"}, run_id="h1")
    acme.execute({**release("inline"), "name": "adhoc"}, inputs={"ref": "c"}, run_id="i1")
    assert [r.run_id for r in acme.runs.list(plan="release")] == ["r1"]
    assert [r.run_id for r in acme.runs.list(status="waiting", plan="release")] == ["r1"]
    assert [r.run_id for r in acme.runs.list(status="completed", plan="release")] == []
    assert [r.run_id for r in acme.runs.list(plan="hotfix")] == ["h1"]
    assert [r.run_id for r in acme.runs.list(plan="adhoc")] == ["i1"]  # a plan's own name
    assert acme.runs.get("h1").status == "completed"


def test_delete_is_refused_while_an_unfinished_run_uses_the_version(engine: Engine) -> None:
    acme = engine.tenant("acme")
    v1 = acme.plans.put("release", release("one"))
    v2 = acme.plans.put("release", release("two"))
    run = acme.execute(f"release@{v1}", inputs={"ref": "a"}, run_id="r1")
    with pytest.raises(PlanInUse, match="r1"):
        acme.plans.delete("release", v1)
    assert [v for v, _ in acme.plans.versions("release")] == [v2, v1]
    acme.approve("r1", run.pending[0].id, by="alice")
    acme.resume("r1")
    acme.plans.delete("release", v1)
    assert [v for v, _ in acme.plans.versions("release")] == [v2]
    assert acme.get_run("r1").outputs["label"] == "one"  # the finished run keeps its copy
    acme.plans.delete("release", v2)
    assert acme.plans.versions("release") == [] and engine.store.get_plan("acme", v2) is None
    with pytest.raises(PlanNotFound):
        acme.plans.delete("release", v2)
