"""Limits on JSON plans (issue 9, finding 9, 11 and part 3): each at the limit and just past
it, refused before the call or the journal write it bounds, naming what and where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import agentflow.tools as tools_module
from agentflow import Engine, Limits, code_plan, tool
from agentflow.cli import app
from agentflow.errors import PlanValidationError
from agentflow.executors.limits import value_size
from agentflow.plan.models import MAX_EVENT_NAME_LENGTH
from agentflow.plan.validation import compile_plan
from agentflow.store.base import JOURNAL_PAGE

CALLS: list[Any] = []


@tool
def echo(value: Any) -> Any:
    CALLS.append(value)
    return value


@tool
def emit(n: int) -> str:
    CALLS.append(n)
    return "a" * n


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


def engine_with(tmp_path: Path, **limits: Any) -> Engine:
    return Engine(str(tmp_path / "runs.db"), tools=[echo, emit], limits=Limits(**limits),
                  max_inline_wait=0.0)


def one_step(tool_name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"steps": [{"id": "s", "tool": tool_name, "args": args}],
            "outputs": {"out": "${steps.s.output}"}}


def test_value_size_is_the_compact_json_size() -> None:
    for value in ["é", [1, 2.5, None, True, False], {"a": {"b": []}, "c": "x"}, [], {}]:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert value_size(value, Limits(), "here", "it") == len(text.encode())


def test_arguments_at_the_size_limit_run_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_value_bytes=100)
    at_limit = {"value": "a" * 88}  # {"value":"aaa..."} is 100 bytes
    assert value_size(at_limit, Limits(), "", "") == 100
    assert engine.execute(one_step("echo", at_limit), run_id="ok").status == "completed"
    past = engine.execute(one_step("echo", {"value": "a" * 89}), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert past.error.type == "LimitExceeded" and past.error.step_id == "s"
    assert "step 's' (s): the arguments: more than 100 bytes" in past.error.message
    assert "max_value_bytes=100" in past.error.message
    assert CALLS == ["a" * 88]  # the refused call was never made


def test_a_result_past_the_size_limit_is_not_journaled(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_value_bytes=100)
    assert engine.execute(one_step("emit", {"n": 98}), run_id="ok").steps["s"].output == \
        "a" * 98
    past = engine.execute(one_step("emit", {"n": 99}), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert "step 's' (s): the result: more than 100 bytes" in past.error.message
    kinds = [entry.kind for entry in engine.journal("past")]
    assert "result" not in kinds and kinds[-1] == "error"


def test_an_int_past_pythons_int_to_text_limit_fails_its_step(tmp_path: Path) -> None:
    """4,300 digits is where Python stops writing ints as text (and JSON): one more digit
    fails the step with LimitExceeded naming it, instead of a ValueError out of the engine."""

    @tool
    def digits(n: int) -> int:
        return 10 ** (n - 1)

    engine = Engine(f"sqlite:///{tmp_path}/db.sqlite")
    plan = {"format": "agentflow/v1", "name": "big-int",
            "steps": [{"id": "s", "tool": "digits", "args": {"n": "${inputs.n}"}}],
            "inputs": {"n": {"type": "integer"}}}
    at = engine.execute(plan, tools=[digits], inputs={"n": 4300}, run_id="at")
    assert at.status == "completed" and len(str(at.steps["s"].output)) == 4300
    past = engine.execute(plan, tools=[digits], inputs={"n": 4301}, run_id="past")
    assert past.status == "failed" and past.error is not None
    assert "step 's' (s): the result: an integer too long to write as JSON" \
        in past.error.message
    assert [entry.kind for entry in engine.journal("past")][-1] == "error"


class CountedList(list[Any]):
    """A list that counts the items read from it."""

    read = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            CountedList.read += 1
            yield item


def test_a_huge_result_is_refused_before_it_is_converted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting a result to JSON data costs as much as the result is large: one of a
    million items past the limit is refused having read a few of them, never converted."""
    converted: list[Any] = []  # results converted (plans and inputs are dicts)
    real = tools_module.to_jsonable_python
    monkeypatch.setattr(tools_module, "to_jsonable_python", lambda value: (
        converted.append(value) if isinstance(value, list) else None) or real(value))

    @tool
    def huge(rows: int) -> list[Any]:
        return [CountedList(["abcdefghij"] * 10) for _ in range(rows)]

    engine = Engine(str(tmp_path / "runs.db"), tools=[huge], limits=Limits(max_value_bytes=1000))
    CountedList.read = 0
    past = engine.execute(one_step("huge", {"rows": 10**5}), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert "step 's' (s): the result: more than 1000 bytes" in past.error.message
    assert converted == [] and CountedList.read <= 10
    ok = engine.execute(one_step("huge", {"rows": 7}), run_id="ok")  # 7 * 131 + 8 bytes
    assert ok.status == "completed" and len(converted) == 1
    assert ok.steps["s"].output == [["abcdefghij"] * 10] * 7


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_at_the_depth_limit_runs_and_one_level_more_is_refused(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_value_depth=5)
    # the arguments object is level 0, so 4 lists inside it reach level 4 of 0..4
    assert engine.execute(one_step("echo", {"value": nested(4)}), run_id="ok").status == \
        "completed"
    past = engine.execute(one_step("echo", {"value": nested(5)}), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert "nested more than 5 levels (limit max_value_depth=5)" in past.error.message
    assert [nested(4)] == CALLS


def foreach_plan(items: int) -> dict[str, Any]:
    return {"steps": [
        {"id": "list", "tool": "echo", "args": {"value": list(range(items))}},
        {"id": "each", "tool": "emit", "foreach": "${steps.list.output}",
         "args": {"n": "${item}"}}]}


def test_foreach_at_the_item_limit_runs_and_one_more_item_is_refused(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_foreach_items=3)
    assert engine.execute(foreach_plan(3), run_id="ok").status == "completed"
    assert CALLS[1:] == [0, 1, 2]
    CALLS.clear()
    past = engine.execute(foreach_plan(4), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert past.error.step_id == "each"
    assert "step 'each': foreach gives 4 items (limit max_foreach_items=3)" in \
        past.error.message
    assert CALLS == [[0, 1, 2, 3]]  # no item of the foreach ran


def test_three_steps_repeating_their_input_cannot_build_a_gigabyte(tmp_path: Path) -> None:
    """The amplification of the issue: each step repeats the previous output 1,000 times,
    so the third would be 1,000^3 times the first; with the default limits the second is
    refused before it is called, after measuring no more than the limit."""
    steps: list[dict[str, Any]] = [{"id": "s0", "tool": "emit", "args": {"n": 1000}}]
    for i in (1, 2, 3):
        steps.append({"id": f"s{i}", "tool": "echo",
                      "args": {"value": [f"${{steps.s{i - 1}.output}}"] * 1000}})
    plan = {"steps": steps, "outputs": {"last": "${steps.s3.output}"}}
    assert len(json.dumps(plan)) > 35_000
    engine = Engine(str(tmp_path / "runs.db"), tools=[echo, emit])
    result = engine.execute(plan, run_id="amp")
    assert result.status == "failed" and result.error is not None
    assert result.error.step_id == "s2" and result.error.type == "LimitExceeded"
    assert len(CALLS) == 2  # s0 and s1 ran (1 MB); s2 (1 GB) and s3 never did
    assert engine.store.journal_bytes("default", "amp") < 2 * Limits().max_value_bytes


def test_interpolated_text_cannot_grow_past_the_size_limit(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_value_bytes=1000)
    plan = {"steps": [
        {"id": "a", "tool": "emit", "args": {"n": 10}},
        {"id": "b", "tool": "echo", "args": {"value": "${steps.a.output}" * 200}}]}
    result = engine.execute(plan, run_id="r")
    assert result.status == "failed" and result.error is not None
    assert result.error.step_id == "b"
    assert "$.steps[1].args.value" in result.error.message
    assert "max_value_bytes=1000" in result.error.message
    assert CALLS == [10]


def test_the_run_journal_quota_at_the_limit_and_one_byte_past(tmp_path: Path) -> None:
    probe = engine_with(tmp_path)
    probe.execute(one_step("emit", {"n": 50}), run_id="probe")
    used = probe.store.journal_bytes("default", "probe")
    assert used > 50
    engine = engine_with(tmp_path, max_run_journal_bytes=used)
    assert engine.execute(one_step("emit", {"n": 50}), run_id="ok").status == "completed"
    assert engine.store.journal_bytes("default", "ok") == used
    tight = engine_with(tmp_path, max_run_journal_bytes=used - 1)
    past = tight.execute(one_step("emit", {"n": 50}), run_id="past")
    assert past.status == "failed" and past.error is not None
    assert "the result (52 bytes) would take the journal of run 'past' past its quota" in \
        past.error.message
    assert f"max_run_journal_bytes={used - 1}" in past.error.message


def test_the_tenant_journal_quota_counts_every_run_of_the_tenant_only(tmp_path: Path) -> None:
    engine = engine_with(tmp_path)
    acme = engine.tenant("acme")
    acme.execute(one_step("emit", {"n": 50}), run_id="first")
    one_run = engine.store.journal_bytes("acme", "first")
    engine.tenant("acme", limits=Limits(max_tenant_journal_bytes=2 * one_run))
    assert acme.execute(one_step("emit", {"n": 50}), run_id="second").status == "completed"
    assert engine.store.journal_bytes("acme") == 2 * one_run  # at the quota
    third = acme.execute(one_step("emit", {"n": 50}), run_id="third")
    assert third.status == "failed" and third.error is not None
    assert "journals of tenant 'acme' past their quota" in third.error.message
    other = engine.tenant("other").execute(one_step("emit", {"n": 50}), run_id="first")
    assert other.status == "completed"  # another tenant has its own (the engine's) limits


def test_the_tenant_journal_quota_at_the_limit_and_past_it_across_restarts(
        store_url: str) -> None:
    """The tenant's journal size is a counter in the store: a new engine (a restart)
    finds it where the last one left it, at the quota and one run past it."""
    first = Engine(store_url, tools=[emit])
    first.tenant("acme").execute(one_step("emit", {"n": 50}), run_id="first")
    one_run = first.store.journal_bytes("acme", "first")
    assert first.store.journal_bytes("acme") == one_run
    first.close()
    quota = Limits(max_tenant_journal_bytes=2 * one_run)
    second = Engine(store_url, tools=[emit])
    at_quota = second.tenant("acme", limits=quota).execute(one_step("emit", {"n": 50}),
                                                           run_id="second")
    assert at_quota.status == "completed"
    second.close()
    third = Engine(store_url, tools=[emit])
    assert third.store.journal_bytes("acme") == 2 * one_run
    CALLS.clear()
    past = third.tenant("acme", limits=quota).execute(one_step("emit", {"n": 50}),
                                                      run_id="third")
    assert past.status == "failed" and past.error is not None
    assert f"max_tenant_journal_bytes={2 * one_run}" in past.error.message
    assert f"({2 * one_run} used)" in past.error.message
    third.close()


def test_limits_refuse_nonsense() -> None:
    for bad in ({"max_value_bytes": 0}, {"max_foreach_items": -1},
                {"max_value_depth": None}, {"max_run_journal_bytes": 1.5}):
        with pytest.raises(ValueError, match="must be a whole number >= 1"):
            Limits(**bad)


def test_a_resume_reads_the_journal_page_by_page(tmp_path: Path) -> None:
    engine = engine_with(tmp_path)
    items = JOURNAL_PAGE + 200  # two entries each: more than two pages
    plan = {"steps": [
        {"id": "each", "tool": "emit", "foreach": list(range(items)), "args": {"n": 0}},
        {"id": "gate", "approval": {"prompt": "go on?"}, "after": ["each"]},
        {"id": "last", "tool": "emit", "args": {"n": 1}, "after": ["gate"]}]}
    [pending] = engine.execute(plan, run_id="r").pending
    engine.approve("r", pending.id, by="alice")
    pages: list[int] = []
    store = engine.store
    read_page = store.read_journal_page

    def spy(tenant_id: str, run_id: str, after_seq: int, limit: int) -> Any:
        entries = read_page(tenant_id, run_id, after_seq, limit)
        pages.append(len(entries))
        return entries

    def whole(*args: Any) -> Any:
        raise AssertionError("the resume read the whole journal at once")

    store.read_journal_page = spy  # type: ignore[method-assign]
    store.read_journal = whole  # type: ignore[method-assign]
    CALLS.clear()
    result = engine.resume("r")
    assert result.status == "completed" and CALLS == [1]
    assert len(pages) >= 3 and max(pages) == JOURNAL_PAGE
    assert result.steps["each"].items == items


def test_get_run_and_cli_show_read_the_journal_page_by_page(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(store_url, tools=[emit])
    items = JOURNAL_PAGE + 200  # two entries each: more than two pages
    plan = {"steps": [
        {"id": "each", "tool": "emit", "foreach": list(range(items)), "args": {"n": 0}},
        {"id": "gate", "approval": {"prompt": "go on?"}, "after": ["each"]}]}
    assert engine.execute(plan, run_id="r").status == "waiting"
    rows = len(engine.store.read_journal("default", "r"))
    assert rows > 2 * JOURNAL_PAGE
    pages: list[int] = []
    store_class = type(engine.store)
    read_page = store_class.read_journal_page

    def spy(store: Any, tenant_id: str, run_id: str, after_seq: int, limit: int) -> Any:
        entries = read_page(store, tenant_id, run_id, after_seq, limit)
        pages.append(len(entries))
        return entries

    def whole(*args: Any) -> Any:
        raise AssertionError("the whole journal was read at once")

    monkeypatch.setattr(store_class, "read_journal_page", spy)
    monkeypatch.setattr(store_class, "read_journal", whole)
    result = engine.get_run("r")
    assert result.status == "waiting" and result.steps["each"].items == items
    assert pages == [JOURNAL_PAGE, JOURNAL_PAGE, rows - 2 * JOURNAL_PAGE]
    engine.close()
    pages.clear()
    shown = CliRunner().invoke(app, ["show", "r", "--store", store_url, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["steps"]["each"]["items"] == items
    assert pages == [JOURNAL_PAGE, JOURNAL_PAGE, rows - 2 * JOURNAL_PAGE]


def test_code_plan_calls_are_held_to_the_same_limits(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, max_value_bytes=100)
    ok = engine.execute(code_plan("return emit(n=98)"), run_id="ok")
    assert ok.outputs == "a" * 98
    result = engine.execute(code_plan("return emit(n=99)"), run_id="big-result")
    assert result.status == "failed" and result.error is not None
    assert "call c1: the result: more than 100 bytes" in result.error.message
    assert "result" not in [entry.kind for entry in engine.journal("big-result")]
    CALLS.clear()
    args = engine.execute(code_plan("return echo(value='a' * 89)"), run_id="big-args")
    assert args.status == "failed" and args.error is not None
    assert "call c1: the arguments: more than 100 bytes" in args.error.message
    assert CALLS == []


def test_event_names_at_the_length_limit_are_taken_and_one_longer_is_refused(
        tmp_path: Path) -> None:
    longest, past = "e" * MAX_EVENT_NAME_LENGTH, "e" * (MAX_EVENT_NAME_LENGTH + 1)
    engine = engine_with(tmp_path)
    waits = {"format": "agentflow/v1", "name": "waits",
             "steps": [{"id": "w", "wait_for_event": longest}],
             "outputs": {"got": "${steps.w.output}"}}
    assert engine.execute(waits, run_id="json").status == "waiting"
    assert engine.send_event("json", longest, 1) == 1
    assert engine.resume("json").outputs == {"got": 1}
    with pytest.raises(ValueError) as refused_event:
        engine.send_event("json", past, 1)
    assert str(refused_event.value) == (f"event name {'e' * 40!r}... has 201 characters, more "
                                        "than 200 (the rule wait_for_event names follow)")
    with pytest.raises(PlanValidationError) as invalid:
        compile_plan({**waits, "steps": [{"id": "w", "wait_for_event": past}]}, {})
    assert [(issue.path, issue.message) for issue in invalid.value.issues] == [
        ("$.steps[0].wait_for_event", "String should have at most 200 characters")]
    code = engine.execute(code_plan(f"return wait_for_event({longest!r})"), run_id="code")
    assert code.status == "waiting"
    refused = engine.execute(code_plan(f"return wait_for_event({past!r})"))
    assert refused.status == "failed" and refused.error is not None
    assert refused.error.line == 1
    assert "has 201 characters, more than 200 (the rule of JSON plans" in refused.error.message
