"""Contracts 1, 3 and 7 (DESIGN.md §2) in one process, on a real store (the backend
AGENTFLOW_TEST_STORE chooses: a SQLite file or a PostgreSQL schema).

1. A completed tool call is never executed again (repeat execution, resume, failed runs,
   two threads racing on one run id).
3. Results are durable before the next step starts: tools read the store with their
   own connection while they run.
7. Bad input gets a clear error and loses nothing: the store is inspected before and
   after each rejected call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest

from agentflow import (
    AgentflowError,
    Engine,
    PlanMismatch,
    PlanValidationError,
    RunLeased,
    RunNotFound,
    RunResult,
    ToolContext,
    execute_plan,
    get_run,
    resume,
    tool,
)
from tests.support.store_rows import dump, journal, row_counts

EMPTY = {"runs": 0, "plans": 0, "journal": 0}


@pytest.fixture
def db(store_url: str) -> str:
    return store_url


def counting_tools(calls: Counter[str]) -> list[Any]:
    @tool
    def add(a: int, b: int, ctx: ToolContext) -> int:
        calls[ctx.call_key] += 1
        return a + b

    @tool
    def explode(ctx: ToolContext) -> int:
        calls[ctx.call_key] += 1
        raise RuntimeError("boom")

    return [add, explode]


CHAIN = {
    "steps": [
        {"id": "one", "tool": "add", "args": {"a": "${inputs.x}", "b": 1}},
        {"id": "two", "tool": "add", "args": {"a": "${steps.one.output}", "b": 10}},
    ],
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    "outputs": {"sum": "${steps.two.output}"},
}


# -- contract 1 ---------------------------------------------------------------------------


def test_execute_again_after_completion_replays_and_runs_no_tool(db: str) -> None:
    calls: Counter[str] = Counter()
    tools = counting_tools(calls)
    first = execute_plan(CHAIN, tools=tools, inputs={"x": 1}, run_id="r1", store=str(db))
    assert (first.status, first.outputs) == ("completed", {"sum": 12})
    before = dump(db)

    again = execute_plan(CHAIN, tools=tools, inputs={"x": 1}, run_id="r1", store=str(db))

    assert again == first
    assert calls == {"one": 1, "two": 1}
    assert dump(db) == before


def test_resume_of_completed_run_runs_no_tool(db: str) -> None:
    calls: Counter[str] = Counter()
    tools = counting_tools(calls)
    first = execute_plan(CHAIN, tools=tools, inputs={"x": 1}, run_id="r1", store=str(db))
    before = dump(db)

    assert resume("r1", tools=tools, store=str(db)) == first
    assert calls == {"one": 1, "two": 1}
    assert dump(db) == before


def test_failed_run_is_final_and_not_rerun(db: str) -> None:
    calls: Counter[str] = Counter()
    tools = counting_tools(calls)
    plan = {"steps": [{"id": "one", "tool": "add", "args": {"a": 1, "b": 1}},
                      {"id": "bad", "tool": "explode", "after": ["one"]}]}
    failed = execute_plan(plan, tools=tools, run_id="f1", store=str(db))
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.step_id, failed.error.type) == ("bad", "RuntimeError")
    before = dump(db)

    assert execute_plan(plan, tools=tools, run_id="f1", store=str(db)) == failed
    assert resume("f1", tools=tools, store=str(db)) == failed
    assert calls == {"one": 1, "bad": 1}
    assert dump(db) == before


def test_two_threads_on_one_run_id_execute_each_call_once(db: str) -> None:
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    @tool
    async def slow(n: int, ctx: ToolContext) -> int:
        with lock:
            calls[ctx.call_key] += 1
        await asyncio.sleep(0.05)
        return n * 2

    plan = {"steps": [{"id": "a", "tool": "slow", "args": {"n": 1}},
                      {"id": "b", "tool": "slow", "args": {"n": "${steps.a.output}"}},
                      {"id": "c", "tool": "slow", "foreach": [1, 2, 3], "args": {"n": "${item}"},
                       "after": ["b"]}],
            "outputs": {"b": "${steps.b.output}", "c": "${steps.c.output}"}}
    answers: list[RunResult | str] = []

    def worker() -> None:
        barrier.wait()
        try:
            answers.append(execute_plan(plan, tools=[slow], run_id="t1", store=str(db)))
        except RunLeased:
            answers.append("RunLeased")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert calls == {"a": 1, "b": 1, "c[0]": 1, "c[1]": 1, "c[2]": 1}
    results = [a for a in answers if isinstance(a, RunResult)]
    assert len(answers) == 2 and results
    assert all(r.outputs == {"b": 4, "c": [2, 4, 6]} for r in results)
    assert [a for a in answers if not isinstance(a, RunResult)] in ([], ["RunLeased"])


def test_lease_is_renewed_during_a_long_call_so_no_second_worker_takes_over(db: str) -> None:
    calls: Counter[str] = Counter()
    started, release = threading.Event(), threading.Event()

    @tool
    def long_call(ctx: ToolContext) -> str:
        calls[ctx.call_key] += 1
        started.set()
        release.wait(30)  # until the second worker has tried
        return "done"

    plan = {"steps": [{"id": "long", "tool": "long_call"}]}
    answers: list[RunResult] = []
    first = threading.Thread(target=lambda: answers.append(
        Engine(str(db), lease_seconds=1.5).execute(plan, tools=[long_call], run_id="lease")))
    first.start()
    try:
        assert started.wait(30)
        second = Engine(str(db), lease_seconds=1.5)
        first_expiry = second.store.get_run("default", "lease").lease_expires_at  # type: ignore[union-attr]
        assert first_expiry is not None
        while time.time() <= first_expiry:  # the first lease, unrenewed, would have lapsed
            time.sleep(0.05)
        with pytest.raises(RunLeased):
            second.execute(plan, tools=[long_call], run_id="lease")
    finally:
        release.set()
        first.join(30)

    assert answers[0].status == "completed"
    assert calls == {"long": 1}


# -- contract 2, in one process ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync-inline", "sync-thread", "async"])
def test_call_interrupted_by_keyboard_interrupt_is_retried_with_same_key(
    db: str, mode: str
) -> None:
    """Ctrl-C inside a tool (a notebook user interrupting a run) propagates, leaves the run
    resumable at once in the same process, and resuming retries exactly that call."""
    seen: list[tuple[str, int, str]] = []

    @tool
    def first(ctx: ToolContext) -> int:
        seen.append((ctx.call_key, ctx.attempt, ctx.idempotency_key))
        return 1

    def body(x: int, ctx: ToolContext) -> int:
        seen.append((ctx.call_key, ctx.attempt, ctx.idempotency_key))
        if len(seen) == 2:  # the first call of `second` only, whatever its attempt says
            raise KeyboardInterrupt
        return x + 1

    if mode == "async":
        @tool(name="second")
        async def second(x: int, ctx: ToolContext) -> int:
            return body(x, ctx)
    else:
        second = tool(name="second")(body)

    step: dict[str, Any] = {"id": "second", "tool": "second",
                            "args": {"x": "${steps.first.output}"}}
    if mode == "sync-thread":
        step["timeout"] = 30
    plan = {"steps": [{"id": "first", "tool": "first"}, step],
            "outputs": {"x": "${steps.second.output}"}}
    with pytest.raises(KeyboardInterrupt):
        execute_plan(plan, tools=[first, second], run_id="ki", store=str(db))
    assert get_run("ki", store=str(db)).status == "running"

    result = resume("ki", tools=[first, second], store=str(db))

    assert (result.status, result.outputs) == ("completed", {"x": 2})
    assert [(key, attempt) for key, attempt, _ in seen] == [
        ("first", 1), ("second", 1), ("second", 2)]
    assert seen[1][2] == seen[2][2] != seen[0][2]
    assert result.steps["second"].attempts == 2


# -- contract 3 ---------------------------------------------------------------------------


def committed(db: str, run_id: str) -> list[tuple[str, str]]:
    return [(row["key"], row["kind"]) for row in journal(db, run_id)]


@pytest.mark.parametrize("mode", ["sync-inline", "sync-thread", "async"])
def test_previous_result_and_own_intent_are_committed_before_a_call(
    db: str, mode: str
) -> None:
    seen: dict[str, list[tuple[str, str]]] = {}

    @tool
    def first() -> int:
        return 41

    if mode == "async":
        @tool
        async def second(x: int, ctx: ToolContext) -> int:
            seen[ctx.call_key] = committed(db, ctx.run_id)
            return x + 1
    else:
        @tool
        def second(x: int, ctx: ToolContext) -> int:
            seen[ctx.call_key] = committed(db, ctx.run_id)
            return x + 1

    step: dict[str, Any] = {"id": "second", "tool": "second",
                            "args": {"x": "${steps.first.output}"}}
    if mode == "sync-thread":
        step["timeout"] = 30  # a timeout sends a sync call to a worker thread
    plan = {"steps": [{"id": "first", "tool": "first"}, step]}
    result = execute_plan(plan, tools=[first, second], run_id="c3", store=str(db))

    assert result.status == "completed"
    assert result.steps["second"].output == 42
    assert seen == {"second": [("first", "intent"), ("first", "result"), ("second", "intent")]}
    assert journal(db, "c3")[1]["data"] == 41


def test_fan_in_step_sees_every_upstream_result_committed(db: str) -> None:
    seen: list[tuple[str, str]] = []

    @tool
    async def leaf(n: int) -> int:
        await asyncio.sleep(0.01 * n)
        return n

    @tool
    def total(values: list[int], ctx: ToolContext) -> int:
        seen.extend(committed(db, ctx.run_id))
        return sum(values)

    plan = {"steps": [
        {"id": "fan", "tool": "leaf", "foreach": [3, 1, 2], "args": {"n": "${item}"}},
        {"id": "solo", "tool": "leaf", "args": {"n": 4}},
        {"id": "sum", "tool": "total",
         "args": {"values": ["${steps.solo.output}", "${steps.fan.output[0]}"]}}]}
    assert execute_plan(plan, tools=[leaf, total], run_id="fi",
                        store=str(db)).steps["sum"].output == 7

    results = {key for key, kind in seen if kind == "result"}
    assert results == {"fan[0]", "fan[1]", "fan[2]", "solo"}
    assert seen[-1] == ("sum", "intent")


# -- contract 7 ---------------------------------------------------------------------------


def test_invalid_plan_lists_every_issue_and_writes_nothing(db: str) -> None:
    calls: Counter[str] = Counter()
    plan = {"steps": [
        {"id": "ok", "tool": "add", "args": {"a": 1, "b": 2}},
        {"id": "ghost", "tool": "no_such_tool"},
        {"id": "dangling", "tool": "add", "args": {"a": "${steps.missing.output}", "b": 1}},
        {"id": "loop_a", "tool": "add", "args": {"a": "${steps.loop_b.output}", "b": 1}},
        {"id": "loop_b", "tool": "add", "args": {"a": "${steps.loop_a.output}", "b": 1}},
    ]}
    with pytest.raises(PlanValidationError) as raised:
        execute_plan(plan, tools=counting_tools(calls), run_id="bad", store=str(db))

    found = {(issue.code, issue.path, issue.step_id) for issue in raised.value.issues}
    assert ("unknown_tool", "$.steps[1].tool", "ghost") in found
    assert ("unknown_step", "$.steps[2].args.a", "dangling") in found
    assert {code for code, _, _ in found} == {"unknown_tool", "unknown_step", "cycle"}
    cycle = next(i for i in raised.value.issues if i.code == "cycle")
    assert "loop_a" in cycle.message and "loop_b" in cycle.message
    assert "no_such_tool" in str(raised.value) and "missing" in str(raised.value)
    assert not calls
    assert row_counts(db) == EMPTY


def test_invalid_inputs_are_rejected_with_their_paths_and_nothing_written(db: str) -> None:
    calls: Counter[str] = Counter()
    with pytest.raises(PlanValidationError) as raised:
        execute_plan(CHAIN, tools=counting_tools(calls), inputs={"x": "seven"}, run_id="i",
                     store=str(db))
    assert str(raised.value).startswith("inputs are invalid")
    assert [issue.path for issue in raised.value.issues] == ["$.inputs.x"]
    assert "integer" in raised.value.issues[0].message

    with pytest.raises(PlanValidationError) as missing:
        execute_plan(CHAIN, tools=counting_tools(calls), inputs={}, run_id="i", store=str(db))
    assert [(i.path, i.message) for i in missing.value.issues] == [
        ("$.inputs.x", "required input is missing")]
    assert not calls
    assert row_counts(db) == EMPTY


@pytest.mark.parametrize("call", ["resume", "get_run"])
def test_unknown_run_id_raises_run_not_found_and_writes_nothing(db: str, call: str) -> None:
    execute_plan(CHAIN, tools=counting_tools(Counter()), inputs={"x": 1}, run_id="known",
                 store=str(db))
    before = dump(db)
    with pytest.raises(RunNotFound, match="'no-such-run'") as raised:
        if call == "resume":
            resume("no-such-run", tools=counting_tools(Counter()), store=str(db))
        else:
            get_run("no-such-run", store=str(db))
    assert raised.value.run_id == "no-such-run"
    assert dump(db) == before


def test_same_run_id_with_another_plan_is_refused_and_store_unchanged(db: str) -> None:
    calls: Counter[str] = Counter()
    tools = counting_tools(calls)
    execute_plan(CHAIN, tools=tools, inputs={"x": 1}, run_id="p", store=str(db))
    before = dump(db)
    other = {**CHAIN, "outputs": {"sum": "${steps.one.output}"}}

    with pytest.raises(PlanMismatch, match="'p'"):
        execute_plan(other, tools=tools, inputs={"x": 1}, run_id="p", store=str(db))
    assert dump(db) == before
    assert calls == {"one": 1, "two": 1}


def test_same_run_id_with_other_inputs_is_refused_and_store_unchanged(db: str) -> None:
    calls: Counter[str] = Counter()
    tools = counting_tools(calls)
    execute_plan(CHAIN, tools=tools, inputs={"x": 1}, run_id="p", store=str(db))
    before = dump(db)

    with pytest.raises(PlanMismatch, match="'p'"):
        execute_plan(CHAIN, tools=tools, inputs={"x": 2}, run_id="p", store=str(db))
    assert dump(db) == before
    assert calls == {"one": 1, "two": 1}


def test_argument_of_wrong_type_at_run_time_fails_the_step_naming_step_and_field(
    db: str,
) -> None:
    used: list[int] = []

    @tool
    def make() -> dict[str, Any]:
        return {"count": "three"}  # the open output schema lets validation pass

    @tool
    def use(count: int) -> int:
        used.append(count)
        return count

    plan = {"steps": [{"id": "make", "tool": "make"},
                      {"id": "consume", "tool": "use",
                       "args": {"count": "${steps.make.output.count}"}}]}
    result = execute_plan(plan, tools=[make, use], run_id="ta", store=str(db))

    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.step_id, result.error.type) == ("consume", "ToolArgumentsError")
    assert "'consume'" in result.error.message and "count" in result.error.message
    assert result.steps["consume"].status == "failed"
    assert result.steps["consume"].error_type == "ToolArgumentsError"
    assert result.steps["make"].status == "succeeded"
    assert not used


class Opaque:
    pass


def test_tool_returning_non_json_value_fails_clearly_and_engine_keeps_working(
    db: str,
) -> None:
    @tool
    def weird() -> Any:
        return {"handle": Opaque()}

    @tool
    def fine() -> int:
        return 1

    plan = {"steps": [{"id": "w", "tool": "weird"}]}
    result = execute_plan(plan, tools=[weird], run_id="nj", store=str(db))

    assert result.status == "failed"
    assert result.error is not None and result.error.step_id == "w"
    assert "Opaque" in result.error.message
    assert get_run("nj", store=str(db)).status == "failed"
    plan_ok = {"steps": [{"id": "f", "tool": "fine"}], "outputs": {"v": "${steps.f.output}"}}
    after = execute_plan(plan_ok, tools=[fine], run_id="next", store=str(db))
    assert (after.status, after.outputs) == ("completed", {"v": 1})


def test_tool_returning_a_set_is_journaled_as_a_json_list(db: str) -> None:
    @tool
    def numbers() -> Any:
        return {3, 1, 2}

    result = execute_plan({"steps": [{"id": "n", "tool": "numbers"}]}, tools=[numbers],
                          run_id="set", store=str(db))
    assert result.status == "completed"
    assert sorted(result.steps["n"].output) == [1, 2, 3]
    assert sorted(journal(db, "set")[-1]["data"]) == [1, 2, 3]


def test_reference_missing_at_run_time_fails_the_step_with_its_path(db: str) -> None:
    @tool
    def make() -> Any:
        return {"a": 1}

    @tool
    def use(text: str) -> str:
        raise AssertionError("must not run")

    plan = {"steps": [{"id": "make", "tool": "make"},
                      {"id": "consume", "tool": "use",
                       "args": {"text": "${steps.make.output.zzz}"}}]}
    result = execute_plan(plan, tools=[make, use], store=str(db))
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.step_id, result.error.type) == ("consume", "ReferenceResolutionError")
    assert "$.steps[1].args.text" in result.error.message and "zzz" in result.error.message


def test_foreach_over_a_non_list_at_run_time_fails_the_step(db: str) -> None:
    @tool
    def make() -> Any:
        return {"a": 1}

    @tool
    def use(x: int) -> int:
        raise AssertionError("must not run")

    plan = {"steps": [{"id": "make", "tool": "make"},
                      {"id": "each", "tool": "use", "foreach": "${steps.make.output}",
                       "args": {"x": "${item}"}}]}
    result = execute_plan(plan, tools=[make, use], store=str(db))
    assert result.status == "failed"
    assert result.error is not None and result.error.step_id == "each"
    assert "list" in result.error.message
    assert result.steps["each"].status == "failed"


def test_invalid_max_concurrency_is_rejected_before_anything_is_written(db: str) -> None:
    with pytest.raises((ValueError, TypeError, AgentflowError)):
        execute_plan(CHAIN, tools=counting_tools(Counter()), inputs={"x": 1}, run_id="mc",
                     store=str(db), max_concurrency=-1)
    assert row_counts(db) == EMPTY
