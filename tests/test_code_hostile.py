"""Hostile and accidental code plans (issue 9, findings 1, 7, 8, 10, 13; issue 10, item 2).

Each plan must end its run cleanly: `failed` with a clear agentflow error (or `completed`
where the plan is legitimate), never hanging, never left "running", and no completed tool
call executed twice. Every test runs in both isolation modes: the guarantees belong to the
sandbox runtime, which the isolates run too.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pydantic
import pytest

from agentflow import Engine, RunResult, SandboxLimits, code_plan, tool
from agentflow.sandbox import IsolatePool

calls: Counter[str] = Counter()
side_effect_done = threading.Event()


@tool
def note(text: str) -> str:
    calls[f"note:{text}"] += 1
    return text


@tool
def side_effect(n: int) -> int:
    calls["side_effect"] += 1
    side_effect_done.set()
    return n


@tool
def interrupt() -> str:
    """Raises KeyboardInterrupt once its sibling thunk's call has completed (first time only)."""
    calls["interrupt"] += 1
    if calls["interrupt"] == 1:
        assert side_effect_done.wait(30)
        raise KeyboardInterrupt
    return "calm"


@tool
def read_secret(name: str) -> str:
    calls["read_secret"] += 1
    raise FileNotFoundError(2, "No such file or directory", f"/root/private/{name}")


class Ticket(pydantic.BaseModel):
    number: int


@tool
def validate_ticket(raw: dict[str, Any]) -> int:
    return Ticket.model_validate(raw).number


TOOLS = [note, side_effect, interrupt, read_secret, validate_ticket]


@pytest.fixture(params=["process", "none"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, pool: IsolatePool) -> Engine:
    calls.clear()
    side_effect_done.clear()
    return Engine(f"sqlite:///{tmp_path / 'runs.db'}", tools=TOOLS, isolation=request.param,
                  isolates=pool)


def run(engine: Engine, source: str, **options: Any) -> RunResult:
    result = engine.execute(code_plan(source), **options)
    assert engine.get_run(result.run_id).status == result.status  # nothing left "running"
    return result


def failure(result: RunResult) -> tuple[str, str]:
    assert result.status == "failed" and result.error is not None, result
    return result.error.type, result.error.message


# Finding 1: StopIteration in its many forms used to hang execute_plan forever.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", [
    "raise StopIteration('x')",
    "return next(iter([]))",
    "return parallel([lambda: next(iter([])), lambda: 1])",
    "def numbers():\n    yield 1\ng = numbers()\nnext(g)\nreturn next(g)",
], ids=["raise", "next-of-empty", "inside-parallel", "generator-past-its-end"])
def test_stop_iteration_fails_the_run_instead_of_hanging(engine: Engine, source: str) -> None:
    kind, _ = failure(run(engine, source))
    assert kind == "StopIteration"


# Finding 10: values that cannot be journaled, and sleeps that cannot end.
@pytest.mark.parametrize(("source", "message"), [
    ("return b'bytes'", "the plan's return value is not JSON data"),
    ("return {'x': float('nan')}", "the plan's return value is not JSON data"),
    ("return {1, 2}", "the plan's return value is not JSON data"),
    ("sleep(float('-inf'))", "an argument of sleep() is not JSON data"),
    ("sleep(float('nan'))", "an argument of sleep() is not JSON data"),
    ("sleep(-1)", "sleep() needs a finite, non-negative duration"),
    ("sleep(1e308, days=1e308)", "sleep() needs a finite, non-negative duration"),
    ("sleep('1')", "sleep() needs a number of seconds, not '1' (a str)"),
    ("sleep(0, minutes=True)", "sleep() needs a number of minutes, not True (a bool)"),
], ids=["bytes", "nan", "set", "sleep-minus-inf", "sleep-nan", "sleep-negative",
        "sleep-overflowing", "sleep-text", "sleep-bool"])
def test_values_that_cannot_be_journaled_fail_the_run_clearly(
        engine: Engine, source: str, message: str) -> None:
    result = run(engine, source)
    assert message in failure(result)[1]
    assert engine.resume(result.run_id).status == "failed"


def test_chained_short_sleeps_suspend_once_they_add_up(engine: Engine) -> None:
    result = run(engine, "for i in range(50):\n    sleep(0.3)\n    note(text=str(i))")
    assert result.status == "waiting"
    assert len(calls) <= 4  # at most max_inline_wait (1 s) of the sleeps were sat out


# Finding 7: parallel() multiplied threads, and each thread started again at depth 0.
def test_recursion_through_parallel_counts_against_the_depth_limit(engine: Engine) -> None:
    result = run(engine, "def down(n):\n    return parallel([lambda: down(n + 1)])[0]\n"
                         "return down(0)", limits=SandboxLimits(max_depth=40))
    kind, message = failure(result)
    assert kind == "SandboxViolation" and "max_depth" in message


def test_nested_parallel_under_a_small_cap_completes_in_order(engine: Engine) -> None:
    result = run(engine, "def leaf(i):\n    return note(text=str(i))\n"
                         "def middle(i):\n    return parallel([lambda j=j: leaf(i * 10 + j) "
                         "for j in range(4)])\n"
                         "return parallel([lambda i=i: middle(i) for i in range(4)])",
                 max_concurrency=3)
    assert result.outputs == [[str(i * 10 + j) for j in range(4)] for i in range(4)]


# Finding 8: a tool called from a generator's cleanup, after catching another exception.
@pytest.mark.parametrize("ending", ["g.close()", "pass"], ids=["closed", "abandoned"])
def test_generator_cleanup_cannot_call_tools_whatever_it_caught(
        engine: Engine, ending: str) -> None:
    source = f"""
def numbers():
    try:
        yield 1
    finally:
        try:
            1 / 0
        except ZeroDivisionError:
            note(text="from cleanup")
g = numbers()
first = next(g)
{ending}
return first
"""
    assert run(engine, source).outputs == 1
    assert calls["note:from cleanup"] == 0


# Finding 13: leaks.
def test_reprs_in_plan_code_name_nothing_of_the_host(engine: Engine) -> None:
    result = run(engine, """
def plan_function():
    yield 1
values = [str, list, repr, sorted, parallel, approve, note, plan_function, lambda: 1,
          "text".upper, plan_function(), map(str, [1])]
return [repr(value) for value in values]
""")
    assert result.status == "completed", result.error
    for text in result.outputs:
        for leak in ("_Execution", "agentflow", "<locals>", "bound method", "_lazy"):
            assert leak not in text, text


def test_a_tool_error_reaches_plan_code_without_host_paths(engine: Engine) -> None:
    result = run(engine, "try:\n    read_secret(name='key.pem')\n"
                         "except ToolCallError as error:\n    return [error.message, "
                         "error.error_type]")
    assert result.outputs == ["[Errno 2] No such file or directory: '<path>'",
                              "FileNotFoundError"]
    journaled = [entry.data for entry in engine.store.read_journal("default", result.run_id)
                 if entry.kind == "error"]
    assert "/root/private/key.pem" in journaled[0]["message"]  # the operator sees it all


def test_a_pydantic_error_reaches_plan_code_as_plain_data(engine: Engine) -> None:
    result = run(engine, "try:\n    validate_ticket(raw={'number': 'x'})\n"
                         "except Exception as error:\n"
                         "    return [isinstance(error, ToolCallError), error.error_type, "
                         "repr(error)[:40]]")
    assert result.outputs[:2] == [True, "ValidationError"]
    assert "pydantic" not in result.outputs[2]


# Issue 10, item 2: KeyboardInterrupt from a tool while a sibling thunk's call completes.
@pytest.mark.timeout(120)
def test_completed_thunk_calls_are_journaled_before_an_interrupt_leaves(engine: Engine) -> None:
    source = "return parallel([lambda: interrupt(), lambda: side_effect(n=7)])"
    with pytest.raises(KeyboardInterrupt):
        engine.execute(code_plan(source), run_id="interrupted")
    assert calls["side_effect"] == 1
    resumed = engine.resume("interrupted")
    assert (resumed.status, resumed.outputs) == ("completed", ["calm", 7])
    assert calls["side_effect"] == 1  # replayed from the journal, never executed again
