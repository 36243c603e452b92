"""Sandbox limits: each one stops plan code with a clear SandboxViolation, and nothing lingers.

Every limit names itself and the plan line in its error, cannot be caught away by plan code,
and leaves the engine able to run the next plan normally.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from agentflow.errors import SandboxViolation
from agentflow.sandbox import SandboxLimits, run_code_plan, runtime
from agentflow.sandbox import bindings as bindings_module
from tests.support.sandbox_host import FakeHost, compile_source, run_source

NORMAL_PLAN = '''
issues = list_issues(repo=inputs["repo"])
return {"titles": sorted(issue["title"] for issue in issues), "count": len(issues)}
'''
NORMAL_RESULT = {"titles": ["crash", "typo"], "count": 2}


def violation(source: str, limits: SandboxLimits, host: FakeHost | None = None) -> SandboxViolation:
    with pytest.raises(SandboxViolation) as caught:
        run_source(source, host, limits=limits)
    return caught.value


def test_operation_budget_is_configurable() -> None:
    source = "total = 0\nfor i in range(100):\n    total += i\nreturn total"
    assert run_source(source, limits=SandboxLimits(max_operations=150)) == 4950
    error = violation(source, SandboxLimits(max_operations=50))
    assert (error.limit, error.line) == ("max_operations", 2)  # the loop that ran too long
    assert "more than 50 operations (SandboxLimits.max_operations) (line 2)" in str(error)


def test_binding_calls_count_against_the_budget() -> None:
    source = "for i in range(10):\n    now()"
    assert run_source(source, limits=SandboxLimits(max_operations=20)) is None
    assert violation(source, SandboxLimits(max_operations=19)).limit == "max_operations"


def test_items_drawn_from_lazy_iterators_count() -> None:
    error = violation("return sum(x for x in range(1000))", SandboxLimits(max_operations=500))
    assert error.limit == "max_operations"


def test_time_limit_stops_plan_code() -> None:
    error = violation("while True:\n    pass", SandboxLimits(max_seconds=0.2,
                                                          max_operations=10**12))
    assert (error.limit, error.line) == ("max_seconds", 1)


def test_time_spent_in_bindings_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a clock that only the bindings move: plan code takes no time on it, so a loaded
    # machine pausing the plan between calls cannot push it past its limit.
    clock = [0.0]
    for module in (runtime, bindings_module):
        monkeypatch.setattr(module, "monotonic", lambda: clock[0])
    host = FakeHost()
    bindings = host.bindings()

    def slow_now(position: str) -> float:
        clock[0] += 0.15
        return 0.0

    bindings["now"] = slow_now
    compiled = compile_source("for i in range(3):\n    now()\nreturn 'done'")
    assert run_code_plan(compiled, bindings, {}, SandboxLimits(max_seconds=0.2)) == "done"


def test_depth_limit_is_configurable() -> None:
    source = "def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)\nreturn down(30)"
    assert run_source(source, limits=SandboxLimits(max_depth=31)) == 30
    error = violation(source, SandboxLimits(max_depth=30))
    assert (error.limit, error.line) == ("max_depth", 2)


def test_depth_limit_must_leave_room_below_the_interpreter_limit() -> None:
    with pytest.raises(ValueError, match="recursion limit"):
        run_source("return 1", limits=SandboxLimits(max_depth=100_000))


def test_sequence_length_is_configurable() -> None:
    assert run_source("return len('ab' * 50)", limits=SandboxLimits(max_sequence_length=100)) == 100
    error = violation("return 'ab' * 51", SandboxLimits(max_sequence_length=100))
    assert error.limit == "max_sequence_length"
    assert "would have 102 items" in str(error)


def test_integer_size_is_configurable() -> None:
    assert run_source("return (2 ** 400).bit_length()",
                      limits=SandboxLimits(max_int_bits=500)) == 401
    assert violation("return 2 ** 600", SandboxLimits(max_int_bits=500)).limit == "max_int_bits"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_growth_backstop_catches_many_allocations_within_limits() -> None:
    source = "big = 'x' * 10**7\nkept = []\nfor i in range(200):\n    kept.append(big.upper())"
    error = violation(source, SandboxLimits(max_memory_growth=100 << 20))
    assert error.limit == "max_memory_growth"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_operations must be positive"):
        SandboxLimits(max_operations=0)


def test_a_violation_cannot_be_caught_and_ignored() -> None:
    host = FakeHost()
    source = '''
        try:
            while True:
                pass
        except Exception:
            note(text="recovered")
        return "finished anyway"
    '''
    error = violation(source, SandboxLimits(max_operations=1000), host)
    assert error.limit == "max_operations"
    assert host.tool_calls == []


VIOLATIONS = [
    pytest.param("while True:\n    pass", SandboxLimits(max_operations=10_000), id="operations"),
    pytest.param("while True:\n    pass", SandboxLimits(max_seconds=0.1, max_operations=10**12),
                 id="time"),
    pytest.param("def f():\n    return f()\nf()", SandboxLimits(), id="depth"),
    pytest.param("return 'x' * 10**10", SandboxLimits(), id="sequence-length"),
    pytest.param("return 7 ** 10**9", SandboxLimits(), id="int-bits"),
    pytest.param("t = ()\nfor i in range(1000):\n    t = (t,)\nreturn {t}", SandboxLimits(),
                 id="tuple-nesting"),
]


@pytest.mark.parametrize(("source", "limits"), VIOLATIONS)
def test_the_engine_keeps_working_after_a_violation(source: str, limits: SandboxLimits) -> None:
    compiled = compile_source(NORMAL_PLAN)
    with pytest.raises(SandboxViolation):
        run_source(source, limits=limits)
    assert run_code_plan(compiled, FakeHost().bindings(), {"repo": "acme/app"}) == NORMAL_RESULT


def test_the_budget_is_shared_by_parallel_threads() -> None:
    source = '''
        def spin():
            for i in range(400):
                pass
        parallel([spin, spin, spin])
    '''
    assert run_source(source, limits=SandboxLimits(max_operations=1400)) is None
    error = violation(source, SandboxLimits(max_operations=1000))
    assert error.limit == "max_operations"


def test_each_thread_has_its_own_depth() -> None:
    source = '''
        def down(n):
            return 0 if n == 0 else 1 + down(n - 1)
        return parallel([lambda: down(25) for i in range(4)])
    '''
    assert run_source(source, limits=SandboxLimits(max_depth=30)) == [25, 25, 25, 25]


def test_limits_apply_per_execution() -> None:
    compiled = compile_source("for i in range(600):\n    pass\nreturn 'ok'")
    limits = SandboxLimits(max_operations=1000)
    results: list[Any] = [run_code_plan(compiled, {}, {}, limits) for _ in range(3)]
    assert results == ["ok", "ok", "ok"]


def test_nested_parallel_never_runs_on_more_threads_than_its_cap() -> None:
    host = FakeHost()
    threads: set[int] = set()
    bindings = host.bindings()

    def note(position: str, text: str) -> str:
        threads.add(threading.get_ident())
        return text

    bindings["note"] = note
    compiled = compile_source('''
        def leaf(i):
            return note(text=str(i))
        def middle(i):
            return parallel([lambda j=j: leaf(i * 4 + j) for j in range(4)])
        def top(i):
            return parallel([lambda j=j: middle(i * 4 + j) for j in range(4)])
        return parallel([lambda i=i: top(i) for i in range(4)])
    ''')
    result = run_code_plan(compiled, bindings, {}, max_concurrency=3)
    assert len([leaf for top in result for middle in top for leaf in middle]) == 64
    assert len(threads) <= 3  # one cap for the whole execution, however deep it nests


def test_depth_counts_across_parallel() -> None:
    error = violation("def down(n):\n    return parallel([lambda: down(n + 1)])[0]\n"
                      "return down(0)", SandboxLimits(max_depth=30))
    assert error.limit == "max_depth"

