"""Issue 13, part 5 (fork and dry run) and migrate (part 1): replaying a run's journal under
another plan or with edited results. A dry run calls no tool and writes nothing."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import Engine, code_plan, tool
from agentflow.errors import PlanMismatch
from tests.support.store_rows import dump

calls: Counter[str] = Counter()


@tool
def build(ref: str) -> dict[str, str]:
    calls[f"build:{ref}"] += 1
    return {"artifact": f"art-{ref}"}


@tool
def check(artifact: str) -> str:
    calls[f"check:{artifact}"] += 1
    return f"checked {artifact}"


@tool
def lint(ref: str) -> str:
    calls[f"lint:{ref}"] += 1
    return "clean"


def step(sid: str, tool_name: str, args: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": sid, "tool": tool_name, "args": args, **more}


def pipeline(*extra: dict[str, Any], ref: str = "${inputs.ref}", gated: bool = False,
             drop_check: bool = False) -> dict[str, Any]:
    steps = [step("build", "build", {"ref": ref}), step("lint", "lint", {"ref": ref})]
    if gated:
        steps.append({"id": "ok", "approval": {"prompt": "go?"}, "after": ["build"]})
    if not drop_check:
        steps.append(step("check", "check", {"artifact": "${steps.build.output.artifact}"},
                          **({"after": ["ok"]} if gated else {})))
    return {"format": "agentflow/v1", "name": "pipeline",
            "inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
            "steps": steps + list(extra),
            "outputs": {"check": "${steps.check.output}" if not drop_check else "none"}}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    calls.clear()
    engine = Engine(store_url)
    engine.tenant("acme", tools=[build, check, lint])
    yield engine
    engine.close()


def test_a_dry_run_calls_no_tool_and_changes_nothing(engine: Engine, store_url: str) -> None:
    acme = engine.tenant("acme")
    assert acme.execute(pipeline(), inputs={"ref": "v1"}, run_id="r1").status == "completed"
    made = dict(calls)
    before = dump(store_url)
    same = acme.dry_run(pipeline(), against="r1")
    assert (sorted(same.replayed), same.would_run, same.mismatch, same.matches) == (
        ["build", "check", "lint"], [], None, True)
    grown = acme.dry_run(pipeline(step("again", "lint", {"ref": "x"}, after=["check"])),
                         against="r1")
    assert grown.would_run == ["again"] and grown.matches
    changed = acme.dry_run(pipeline(ref="v2"), against="r1")
    assert changed.mismatch is not None and "build" in changed.mismatch
    assert not changed.matches
    shrunk = acme.dry_run(pipeline(drop_check=True), against="r1")
    assert shrunk.unreplayed == ["check"] and not shrunk.matches
    assert dict(calls) == made  # not one tool call
    assert dump(store_url) == before


def test_a_dry_run_of_a_code_plan_reports_the_first_non_deterministic_call(
        engine: Engine) -> None:
    acme = engine.tenant("acme")
    source = "a = build(ref='v1')\nb = lint(ref='v1')\nreturn a"
    assert acme.execute(code_plan(source), run_id="c1").status == "completed"
    made = dict(calls)
    assert acme.dry_run(code_plan(source), against="c1").matches
    swapped = acme.dry_run(code_plan("a = build(ref='v1')\nb = lint(ref='v2')\nreturn a"),
                           against="c1")
    assert swapped.mismatch is not None and "lint" in swapped.mismatch
    assert swapped.replayed == ["c1"]  # the position before the mismatch
    longer = acme.dry_run(code_plan(source.replace("return a", "c = lint(ref='z')\nreturn a")),
                          against="c1")
    assert longer.mismatch is None and len(longer.would_run) == 1
    assert dict(calls) == made


def test_migrate_moves_a_waiting_run_only_when_the_journal_replays(
        engine: Engine, store_url: str) -> None:
    acme = engine.tenant("acme")
    acme.plans.put("pipeline", pipeline(gated=True))
    waiting = acme.execute("pipeline", inputs={"ref": "v1"}, run_id="r1")
    assert waiting.status == "waiting"
    bad = acme.plans.put("pipeline", pipeline(gated=True, ref="v9"))
    before = dump(store_url)
    with pytest.raises(PlanMismatch, match="build"):
        acme.migrate("r1", to=bad)
    assert dump(store_url) == before
    good = acme.plans.put("pipeline", pipeline(
        step("again", "lint", {"ref": "late"}, after=["check"]), gated=True))
    report = acme.migrate("r1", to=good[:10])
    assert sorted(report.replayed) == ["build", "lint"] and report.would_run == []
    assert engine.store.get_run("acme", "r1").plan_hash == good
    pending = acme.get_run("r1").pending[0]
    acme.approve("r1", pending.id, by="alice")
    done = acme.resume("r1")
    assert done.status == "completed" and done.steps["again"].status == "succeeded"
    assert calls["build:v1"] == 1 and calls["lint:late"] == 1


def test_a_fork_with_an_edited_result_reexecutes_only_the_dependents(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(pipeline(), inputs={"ref": "v1"}, run_id="r1")
    assert dict(calls) == {"build:v1": 1, "lint:v1": 1, "check:art-v1": 1}
    fork = acme.fork("r1", at_step="check", results={"build": {"artifact": "b2"}},
                     new_run_id="r1-b2")
    assert fork.run_id == "r1-b2" and fork.status == "completed"
    assert fork.outputs == {"check": "checked b2"}
    assert dict(calls) == {"build:v1": 1, "lint:v1": 1, "check:art-v1": 1, "check:b2": 1}
    assert acme.get_run("r1").outputs == {"check": "checked art-v1"}  # the original stays
    with pytest.raises(ValueError, match="no step 'nope'"):
        acme.fork("r1", at_step="nope")
    with pytest.raises(PlanMismatch, match="exists already"):
        acme.fork("r1", at_step="check", new_run_id="r1-b2")


def test_forks_without_an_id_get_ids_of_their_own(engine: Engine) -> None:
    """The default id is RUN-fork-XXXXXXXX with 8 random hex digits: two forks of one run
    from one process are two runs (the id once took the host and pid, and collided)."""
    acme = engine.tenant("acme")
    acme.execute(pipeline(), inputs={"ref": "v1"}, run_id="r1")
    first = acme.fork("r1", at_step="check")
    second = acme.fork("r1", at_step="check")
    assert first.run_id != second.run_id
    assert all(re.fullmatch(r"r1-fork-[0-9a-f]{8}", f.run_id) for f in (first, second))
    assert (first.status, second.status) == ("completed", "completed")


def test_a_fork_edits_a_foreach_steps_items_and_reruns_its_dependents(engine: Engine) -> None:
    acme = engine.tenant("acme")
    plan = {"format": "agentflow/v1", "steps": [
        step("builds", "build", {"ref": "${item}"}, foreach=["a", "b"]),
        step("checks", "check", {"artifact": "${item.artifact}"},
             foreach="${steps.builds.output}"),
        step("lint", "lint", {"ref": "x"})],
        "outputs": {"checks": "${steps.checks.output}"}}
    acme.execute(plan, run_id="f1")
    made = dict(calls)
    fork = acme.fork("f1", at_step="checks", new_run_id="f1-edit",
                     results={"builds": [{"artifact": "A"}, {"artifact": "B"}]})
    assert fork.outputs == {"checks": ["checked A", "checked B"]}
    assert dict(calls) == {**made, "check:A": 1, "check:B": 1}  # builds and lint reused
    again = acme.fork("f1", at_step="builds", new_run_id="f1-again")
    assert again.outputs == {"checks": ["checked art-a", "checked art-b"]}
    assert calls["build:a"] == 2 and calls["check:art-a"] == 2 and calls["lint:x"] == 1
    with pytest.raises(ValueError, match="list of the items' outputs"):
        acme.fork("f1", at_step="checks", results={"builds": {"artifact": "A"}})


CODE_PIPELINE = code_plan('''
built = build(ref=inputs["ref"])
clean = lint(ref=inputs["ref"])
return [check(artifact=built["artifact"]), clean, now() > 0]
''')


def test_a_code_plan_fork_reuses_the_calls_before_its_position(engine: Engine) -> None:
    acme = engine.tenant("acme")
    acme.execute(CODE_PIPELINE, inputs={"ref": "v1"}, run_id="k1")
    assert dict(calls) == {"build:v1": 1, "lint:v1": 1, "check:art-v1": 1}
    fork = acme.fork("k1", at_step="c3", results={"c1": {"artifact": "b2"}},
                     new_run_id="k1-b2")
    assert fork.status == "completed" and fork.outputs == ["checked b2", "clean", True]
    # c1 (edited) and c2 are reused; c3 and what follows run again
    assert dict(calls) == {"build:v1": 1, "lint:v1": 1, "check:art-v1": 1, "check:b2": 1}
    at_lint = acme.fork("k1", at_step="c2", new_run_id="k1-lint")
    assert at_lint.outputs == ["checked art-v1", "clean", True]
    assert calls["lint:v1"] == 2 and calls["build:v1"] == 1 and calls["check:art-v1"] == 2
    edited_here = acme.fork("k1", at_step="c3", results={"c3": "edited"}, new_run_id="k1-c3")
    assert edited_here.outputs == ["edited", "clean", True] and calls["check:art-v1"] == 2
    with pytest.raises(ValueError, match="no call at position 'c9'"):
        acme.fork("k1", at_step="c9")
    with pytest.raises(ValueError, match="position 'c3': fork edits"):
        acme.fork("k1", at_step="c2", results={"c3": "after the fork point"})
    with pytest.raises(ValueError, match="position 'c4': fork edits"):
        acme.fork("k1", at_step="c4", results={"c4": 1.0})  # now(), not a tool call
