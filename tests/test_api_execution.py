"""How a JSON step-graph plan executes (issue 2): sync/async tools and APIs, step results,
retries, timeouts, conditions, foreach, concurrency limits, pydantic results and the tool
context. Each test runs real tools against a SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import ToolContext, aexecute_plan, execute_plan, tool
from agentflow.executors.calls import stray_calls
from tests.support.store_rows import journal
from tests.test_faults_timeouts import wait_until


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "runs.db")


class Peak:
    """Counts calls running at once, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.now = 0
        self.max = 0

    @contextmanager
    def running(self, until: int) -> Iterator[None]:
        """Run a call, holding it until `until` calls have run at once (or 30 s passed): the
        peak is then reached by order, not by how fast the machine starts threads."""
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)
            self.lock.notify_all()
            self.lock.wait_for(lambda: self.max >= until, timeout=30)
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1


# -- sync and async ----------------------------------------------------------------------


@tool
def double(x: int) -> int:
    return x * 2


@tool
async def increment(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


MIXED = {"steps": [
    {"id": "a", "tool": "double", "args": {"x": "${inputs.x}"}},
    {"id": "b", "tool": "increment", "args": {"x": "${steps.a.output}"}},
    {"id": "c", "tool": "double", "args": {"x": "${steps.b.output}"}},
], "outputs": {"c": "${steps.c.output}"}}


def test_sync_and_async_tools_in_one_plan(db: str) -> None:
    result = execute_plan(MIXED, tools=[double, increment], inputs={"x": 3}, store=db)
    assert (result.status, result.outputs) == ("completed", {"c": 14})


def test_async_api(db: str) -> None:
    result = asyncio.run(aexecute_plan(MIXED, tools=[double, increment], inputs={"x": 1},
                                       run_id="async", store=db))
    assert (result.run_id, result.status, result.outputs) == ("async", "completed", {"c": 6})


def test_sync_api_inside_a_running_event_loop(db: str) -> None:
    async def notebook_cell() -> Any:
        return execute_plan(MIXED, tools=[double, increment], inputs={"x": 2}, store=db)

    result = asyncio.run(notebook_cell())
    assert (result.status, result.outputs) == ("completed", {"c": 10})


def test_step_results_have_status_output_and_attempts(db: str) -> None:
    result = execute_plan(MIXED, tools=[double, increment], inputs={"x": 3}, store=db)
    assert {sid: (s.status, s.output, s.attempts) for sid, s in result.steps.items()} == {
        "a": ("succeeded", 6, 1), "b": ("succeeded", 7, 1), "c": ("succeeded", 14, 1)}
    assert all(s.started_at is not None and s.finished_at is not None
               for s in result.steps.values())


# -- retries and timeouts ----------------------------------------------------------------


def flaky_tool(failures: int, error: type[Exception]) -> Any:
    attempts: list[int] = []

    @tool
    def flaky(ctx: ToolContext) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) <= failures:
            raise error(f"failure {len(attempts)}")
        return "ok"

    flaky.attempts = attempts  # type: ignore[attr-defined]
    return flaky


def retry_plan(max_attempts: int = 3, **retry: Any) -> dict[str, Any]:
    return {"steps": [{"id": "s", "tool": "flaky", "retry": {
        "max_attempts": max_attempts, "initial_delay": 0, **retry}}]}


def test_retry_until_success_journals_each_error(db: str) -> None:
    flaky = flaky_tool(2, ConnectionError)
    result = execute_plan(retry_plan(), tools=[flaky], run_id="rt", store=db)

    assert result.status == "completed"
    assert (result.steps["s"].status, result.steps["s"].output,
            result.steps["s"].attempts) == ("succeeded", "ok", 3)
    assert flaky.attempts == [1, 2, 3]
    errors = [(r["attempt"], r["data"]["type"], r["data"]["message"], r["data"]["final"])
              for r in journal(Path(db), "rt") if r["kind"] == "error"]
    assert errors == [(1, "ConnectionError", "failure 1", False),
                      (2, "ConnectionError", "failure 2", False)]


def test_retries_exhausted_fail_the_step_with_the_last_error(db: str) -> None:
    flaky = flaky_tool(5, ConnectionError)
    result = execute_plan(retry_plan(max_attempts=2), tools=[flaky], store=db)
    assert result.status == "failed"
    assert result.steps["s"].attempts == 2
    assert result.error is not None
    assert (result.error.step_id, result.error.type, result.error.message) == (
        "s", "ConnectionError", "failure 2")


def test_retry_on_skips_errors_not_listed(db: str) -> None:
    flaky = flaky_tool(1, ValueError)
    result = execute_plan(retry_plan(retry_on=["ConnectionError"]), tools=[flaky], store=db)
    assert result.status == "failed"
    assert flaky.attempts == [1]
    assert result.steps["s"].error_type == "ValueError"


def test_retry_on_matches_base_class_names(db: str) -> None:
    flaky = flaky_tool(2, KeyError)
    result = execute_plan(retry_plan(retry_on=["LookupError"]), tools=[flaky], store=db)
    assert result.status == "completed"
    assert flaky.attempts == [1, 2, 3]


def test_async_tool_timeout_is_a_step_timeout(db: str) -> None:
    finished: list[str] = []

    @tool
    async def hang() -> str:
        await asyncio.sleep(30)
        finished.append("hang")
        return "late"

    result = execute_plan({"steps": [{"id": "h", "tool": "hang", "timeout": 0.1}]},
                          tools=[hang], store=db)
    assert finished == []  # the run did not wait for the tool
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.step_id, result.error.type) == ("h", "StepTimeout")
    assert "0.1s" in result.error.message


def test_timeouts_are_retried_when_retry_on_names_step_timeout(db: str) -> None:
    attempts: list[int] = []

    @tool
    async def slow_once(ctx: ToolContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return ctx.attempt

    plan = {"steps": [{"id": "s", "tool": "slow_once", "timeout": 0.1, "retry": {
        "max_attempts": 2, "initial_delay": 0, "retry_on": ["StepTimeout"]}}]}
    result = execute_plan(plan, tools=[slow_once], store=db)
    assert (result.status, result.steps["s"].output, attempts) == ("completed", 2, [1, 2])


def test_timeouts_are_not_retried_when_retry_on_omits_them(db: str) -> None:
    attempts: list[int] = []

    @tool
    async def slow(ctx: ToolContext) -> int:
        attempts.append(ctx.attempt)
        await asyncio.sleep(5)
        return 0

    plan = {"steps": [{"id": "s", "tool": "slow", "timeout": 0.1, "retry": {
        "max_attempts": 3, "initial_delay": 0, "retry_on": ["ConnectionError"]}}]}
    result = execute_plan(plan, tools=[slow], store=db)
    assert (result.status, result.steps["s"].error_type, attempts) == (
        "failed", "StepTimeout", [1])


def test_sync_tool_timeout_is_a_retryable_step_timeout(db: str) -> None:
    # The first attempt ends once the engine has timed it out (a retry waits for its end);
    # the second has the whole timeout to return, 2 s: a loaded machine may not run a
    # thread within 0.1 s (it was 0.1 s, and the first attempt ended after 30 s).
    attempts: list[int] = []
    strays = stray_calls()

    @tool
    def blocking(ctx: ToolContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            wait_until(lambda: stray_calls() > strays)
        return ctx.attempt

    plan = {"steps": [{"id": "s", "tool": "blocking", "timeout": 2, "retry": {
        "max_attempts": 2, "initial_delay": 0, "retry_on": ["StepTimeout"]}}]}
    result = execute_plan(plan, tools=[blocking], run_id="st", store=db)
    assert (result.status, result.steps["s"].output, attempts) == ("completed", 2, [1, 2])
    errors = [r["data"]["type"] for r in journal(Path(db), "st") if r["kind"] == "error"]
    assert errors == ["StepTimeout"]


def test_sync_tool_timeout_returns_without_waiting_for_the_tool(db: str) -> None:
    release = threading.Event()
    finished: list[str] = []

    @tool
    def stuck() -> int:
        release.wait(30)
        finished.append("stuck")
        return 0

    try:
        result = execute_plan({"steps": [{"id": "s", "tool": "stuck", "timeout": 0.1}]},
                              tools=[stuck], store=db)
        assert finished == []  # returned while the tool still ran
    finally:
        release.set()
    assert result.steps["s"].error_type == "StepTimeout"


# -- failure handling and conditions -----------------------------------------------------


@tool
def fail(message: str) -> str:
    raise RuntimeError(message)


@tool
def echo(text: str) -> str:
    return text


def test_continue_on_error_keeps_the_run_and_dependents_going(db: str) -> None:
    plan = {"steps": [
        {"id": "risky", "tool": "fail", "args": {"message": "nope"}, "continue_on_error": True},
        {"id": "after", "tool": "echo", "args": {"text": "risky was ${steps.risky.status}"}},
    ], "outputs": {"text": "${steps.after.output}"}}
    result = execute_plan(plan, tools=[fail, echo], store=db)
    assert (result.status, result.outputs) == ("completed", {"text": "risky was failed"})
    assert (result.steps["risky"].status, result.steps["risky"].error) == ("failed", "nope")
    assert result.error is None


def test_false_condition_skips_the_step_and_its_dependents(db: str) -> None:
    plan = {"inputs": {"type": "object", "properties": {"go": {"type": "boolean"}}},
            "steps": [
                {"id": "gate", "tool": "echo", "args": {"text": "x"}, "when": "inputs.go"},
                {"id": "child", "tool": "echo", "args": {"text": "${steps.gate.output}"}},
                {"id": "grandchild", "tool": "echo", "args": {"text": "${steps.child.output}"}},
                {"id": "other", "tool": "echo", "args": {"text": "y"}}],
            "outputs": {"other": "${steps.other.output}"}}
    result = execute_plan(plan, tools=[echo], inputs={"go": False}, store=db)
    assert result.status == "completed"
    assert {sid: s.status for sid, s in result.steps.items()} == {
        "gate": "skipped", "child": "skipped", "grandchild": "skipped", "other": "succeeded"}
    assert result.outputs == {"other": "y"}


def test_true_condition_runs_the_step(db: str) -> None:
    plan = {"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}},
                      {"id": "b", "tool": "echo", "args": {"text": "b"},
                       "when": "steps.a.output == 'x' and not (1 > 2)"}]}
    result = execute_plan(plan, tools=[echo], store=db)
    assert result.steps["b"].status == "succeeded"


def test_always_cleanup_runs_after_a_failure_and_the_run_stays_failed(db: str) -> None:
    plan = {"steps": [
        {"id": "work", "tool": "fail", "args": {"message": "disk full"}},
        {"id": "next", "tool": "echo", "args": {"text": "${steps.work.output}"}},
        {"id": "cleanup", "tool": "echo", "after": ["work"], "when": "always()",
         "args": {"text": "cleanup after ${steps.work.status}"}}]}
    result = execute_plan(plan, tools=[fail, echo], store=db)
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.step_id, result.error.type, result.error.message) == (
        "work", "RuntimeError", "disk full")
    assert result.steps["next"].status == "skipped"
    assert (result.steps["cleanup"].status, result.steps["cleanup"].output) == (
        "succeeded", "cleanup after failed")


@pytest.mark.parametrize(("message", "expected"), [(None, "skipped"), ("bad", "succeeded")])
def test_failure_condition_runs_only_after_a_failure(
    db: str, message: str | None, expected: str
) -> None:
    work: dict[str, Any] = ({"tool": "echo", "args": {"text": "fine"}} if message is None
                            else {"tool": "fail", "args": {"message": message}})
    plan = {"steps": [{"id": "work", **work},
                      {"id": "alert", "tool": "echo", "args": {"text": "alert"},
                       "after": ["work"], "when": "failure()"}]}
    result = execute_plan(plan, tools=[fail, echo], store=db)
    assert result.steps["alert"].status == expected
    assert result.status == ("completed" if message is None else "failed")


# -- foreach and concurrency -------------------------------------------------------------


def test_foreach_over_a_runtime_list_respects_max_parallel(db: str) -> None:
    peak = Peak()

    @tool
    def items() -> list[int]:
        return list(range(8))

    @tool
    def work(n: int) -> int:
        with peak.running(until=3):
            return n * n

    plan = {"steps": [{"id": "list", "tool": "items"},
                      {"id": "each", "tool": "work", "foreach": "${steps.list.output}",
                       "args": {"n": "${item}"}, "max_parallel": 3}],
            "outputs": {"squares": "${steps.each.output}"}}
    result = execute_plan(plan, tools=[items, work], store=db)
    assert result.outputs == {"squares": [0, 1, 4, 9, 16, 25, 36, 49]}
    assert (result.steps["each"].items, result.steps["each"].attempts) == (8, 8)
    assert peak.max == 3


def test_foreach_output_keeps_input_order_when_items_finish_out_of_order(db: str) -> None:
    finished: list[int] = []

    @tool
    async def delayed(n: int, index: int) -> str:
        for _ in range(30_000):  # each item finishes after the next one, the last first
            if n == 4 or n + 1 in finished:
                break
            await asyncio.sleep(0.001)
        finished.append(n)
        return f"{index}:{n}"

    plan = {"steps": [{"id": "each", "tool": "delayed", "foreach": [1, 2, 3, 4],
                       "args": {"n": "${item}", "index": "${index}"}}],
            "outputs": {"out": "${steps.each.output}"}}
    result = execute_plan(plan, tools=[delayed], store=db)
    assert finished == [4, 3, 2, 1]
    assert result.outputs == {"out": ["0:1", "1:2", "2:3", "3:4"]}


def test_empty_foreach_succeeds_with_an_empty_list(db: str) -> None:
    plan = {"steps": [{"id": "each", "tool": "echo", "foreach": [], "args": {"text": "${item}"}}],
            "outputs": {"out": "${steps.each.output}"}}
    result = execute_plan(plan, tools=[echo], store=db)
    assert (result.status, result.outputs) == ("completed", {"out": []})


def test_max_concurrency_bounds_calls_across_steps(db: str) -> None:
    peak = Peak()

    @tool
    def busy(n: int) -> int:
        with peak.running(until=2):
            return n

    plan = {"steps": [{"id": f"s{i}", "tool": "busy", "args": {"n": i}} for i in range(6)]
            + [{"id": "fan", "tool": "busy", "foreach": [1, 2, 3, 4], "args": {"n": "${item}"}}]}
    result = execute_plan(plan, tools=[busy], store=db, max_concurrency=2)
    assert result.status == "completed"
    assert peak.max == 2


def test_independent_steps_run_concurrently_by_default(db: str) -> None:
    peak = Peak()

    @tool
    def busy(n: int) -> int:
        with peak.running(until=4):
            return n

    plan = {"steps": [{"id": f"s{i}", "tool": "busy", "args": {"n": i}} for i in range(4)]}
    assert execute_plan(plan, tools=[busy], store=db).status == "completed"
    assert peak.max == 4


# -- results and context -----------------------------------------------------------------


class FileInfo(BaseModel):
    path: str
    lines: int


class Checkout(BaseModel):
    sha: str
    files: list[FileInfo]


@tool
def checkout(ref: str) -> Checkout:
    return Checkout(sha=f"sha-{ref}", files=[FileInfo(path="a.py", lines=3),
                                             FileInfo(path="b.py", lines=7)])


def test_pydantic_results_are_journaled_as_json_and_referenceable(db: str) -> None:
    plan = {"steps": [
        {"id": "co", "tool": "checkout", "args": {"ref": "main"}},
        {"id": "say", "tool": "echo",
         "args": {"text": "${steps.co.output.sha}:${steps.co.output.files[1].path}"}}],
        "outputs": {"lines": "${steps.co.output.files[0].lines}", "say": "${steps.say.output}"}}
    result = execute_plan(plan, tools=[checkout, echo], run_id="pd", store=db)
    assert result.outputs == {"lines": 3, "say": "sha-main:b.py"}
    stored = next(r["data"] for r in journal(Path(db), "pd")
                  if r["key"] == "co" and r["kind"] == "result")
    assert stored == {"sha": "sha-main", "files": [{"path": "a.py", "lines": 3},
                                                   {"path": "b.py", "lines": 7}]}


def test_tool_context_fields_and_stable_idempotency_key(db: str) -> None:
    seen: list[tuple[str, str, str, int, str]] = []

    @tool
    def record(fail_first: bool, ctx: ToolContext) -> int:
        seen.append((ctx.run_id, ctx.step_id, ctx.call_key, ctx.attempt, ctx.idempotency_key))
        if fail_first and ctx.attempt == 1:
            raise ConnectionError("transient")
        return ctx.attempt

    plan = {"steps": [
        {"id": "once", "tool": "record", "args": {"fail_first": True},
         "retry": {"max_attempts": 2, "initial_delay": 0}},
        {"id": "many", "tool": "record", "foreach": [False, False],
         "args": {"fail_first": "${item}"}, "after": ["once"]}]}
    execute_plan(plan, tools=[record], run_id="ctx-1", store=db)
    execute_plan(plan, tools=[record], run_id="ctx-2", store=db)

    first_run = sorted(entry[:4] for entry in seen if entry[0] == "ctx-1")
    assert first_run == [("ctx-1", "many", "many[0]", 1), ("ctx-1", "many", "many[1]", 1),
                         ("ctx-1", "once", "once", 1), ("ctx-1", "once", "once", 2)]
    key = {(run, call): {e[4] for e in seen if e[0] == run and e[2] == call}
           for run, _, call, _, _ in seen}
    assert all(len(keys) == 1 for keys in key.values())  # retries share their call's key
    assert len({next(iter(keys)) for keys in key.values()}) == 6  # one per run and position
