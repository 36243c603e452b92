"""Control flow that hangs, repeats or swallows (issue 9, findings 1, 7, 8, 10 and beyond):
StopIteration in its many forms, generators run past their end or closed with a tool call
in their cleanup, `parallel()` misused, sleeps and waits with values that cannot be
journaled, suspensions a plan tries to swallow.

Every run must end (never hang: the tests' timeout is the safety net), and a call made
before the attack is never made again, also when the run is resumed.
"""

from __future__ import annotations

import pytest

from agentflow import Engine, code_plan
from agentflow.plan.code import CodePlan
from tests.attacks.harness import FIRST, calls, cases, code_attack

ENDS_FAILED = {  # each must end the run "failed", never hang it
    "raise-stop-iteration": "raise StopIteration('x')",
    "next-of-empty": "return next(iter([]))",
    "next-in-parallel": "return parallel([lambda: next(iter([])), lambda: 1])",
    "next-in-nested-parallel": "return parallel([lambda: parallel([lambda: next(iter([]))])])",
    "generator-past-its-end": "def g():\n    yield 1\nx = g()\nnext(x)\nreturn next(x)",
    "stop-iteration-in-generator-expression": "return list(next(iter([])) for i in [1])",
    "stop-iteration-in-generator-body": "def g():\n    yield 1\n    raise StopIteration\n"
                                        "return list(g())",
    "stop-iteration-in-sort-key": "return sorted([1, 2], key=lambda x: next(iter([])))",
    "stop-iteration-from-max-key": "return max([1, 2], key=lambda x: next(iter([])))",
    "stop-iteration-in-thunk-after-call": "return parallel([lambda: side_effect(label='t'), "
                                          "lambda: next(iter([]))])",
    "yield-in-finally": "def g():\n    try:\n        yield 1\n    finally:\n        yield 2\n"
                        "x = g()\nnext(x)\nx.close()\nreturn 1",
    "generator-reenters-itself": "def g():\n    yield next(x)\nx = g()\nreturn next(x)",
    "parallel-of-non-callables": "return parallel([1, 2])",
    "parallel-thunk-needs-argument": "return parallel([lambda x: x])",
    "parallel-of-endless-thunks": "def g():\n    while True:\n        yield lambda: 1\n"
                                  "return parallel(g())",
    "sleep-nan": "sleep(float('nan'))",
    "sleep-minus-infinity": "sleep(float('-inf'))",
    "sleep-nan-text": "sleep('nan')",
    "sleep-infinity-text": "sleep('inf')",
    "sleep-overflowing-text": "sleep('1e400')",
    "sleep-negative": "sleep(-1)",
    "sleep-negative-unit": "sleep(1, minutes=-1)",
    "sleep-overflowing-units": "sleep(1e308, days=1e308)",
    "sleep-huge-integer": "sleep(10**400)",
    "sleep-unknown-unit": "sleep(fortnights=1)",
    "sleep-list": "sleep([1])",
    "sleep-none": "sleep(None)",
    "wait-nan-timeout": "wait_for_event('x', timeout=float('nan'))",
    "wait-text-timeout": "wait_for_event('x', timeout='nan')",
    "wait-bad-event-name": "wait_for_event('a/../b')",
    "wait-nul-event-name": "wait_for_event('a\\x00')",
    "wait-surrogate-event-name": "wait_for_event('\\ud800')",
    "approve-non-json-detail": "approve('x', d={1, 2})",
    "approve-nan-expiry": "approve('x', expires_in=float('nan'))",
    "approve-text-expiry": "approve('x', expires_in='nan')",
    "approve-unknown-on-expiry": "approve('x', expires_in=1, on_expiry='explode')",
    "approve-deep-detail": "d = []\nfor i in range(1000):\n    d = [d]\napprove('x', d=d)",
    "approve-surrogate-prompt": "approve('\\ud800')",
    "return-bytes": "return b'bytes'",
    "return-nan": "return {'x': float('nan')}",
    "return-set": "return {1, 2}",
    "return-generator": "return (i for i in [1])",
    "return-range": "return range(3)",
    "return-tuple-key": "return {(1, 2): 3}",
    "return-huge-integer": "return 2**19999",
    "return-ellipsis": "return ...",
}

COMPLETES = {  # ordinary Python that looks like an attack: it ends, and cleanup calls nothing
    "stop-iteration-inside-map": "return list(map(lambda x: next(iter([])), [1]))",
    "stop-iteration-caught": "for i in range(3):\n    try:\n        next(iter([]))\n"
                             "    except StopIteration:\n        pass\nreturn 1",
    "generator-abandoned-with-tool-in-finally": "def g():\n    try:\n        yield 1\n"
                                                "    finally:\n        side_effect(label='f')\n"
                                                "x = g()\nnext(x)\nreturn 1",
    "generator-closed-with-tool-in-finally": "def g():\n    try:\n        yield 1\n"
                                             "    finally:\n        side_effect(label='f')\n"
                                             "x = g()\nnext(x)\nx.close()\nreturn 1",
    "generator-closed-with-tool-in-except": "def g():\n    try:\n        yield 1\n"
                                            "    except Exception:\n"
                                            "        side_effect(label='f')\n"
                                            "x = g()\nnext(x)\nx.close()\nreturn 1",
    "cleanup-calls-after-catching": "def g():\n    try:\n        yield 1\n    finally:\n"
                                    "        try:\n            1 / 0\n"
                                    "        except ZeroDivisionError:\n"
                                    "            side_effect(label='f')\n"
                                    "x = g()\nnext(x)\nreturn 1",
    "cleanup-of-delegated-generator": "def h():\n    try:\n        yield 1\n    finally:\n"
                                      "        for i in range(2):\n            try:\n"
                                      "                1 / 0\n"
                                      "            except ZeroDivisionError:\n"
                                      "                side_effect(label='f')\n"
                                      "def g():\n    yield from h()\nx = g()\nnext(x)\n"
                                      "return 1",
    "cleanup-in-a-thunk": "def g():\n    try:\n        yield 1\n    finally:\n"
                          "        side_effect(label='f')\nreturn parallel([lambda: next(g())])",
    "cleanup-of-a-lazy-map": "def g():\n    try:\n        yield 1\n        yield 2\n"
                             "    finally:\n        side_effect(label='f')\n"
                             "return next(map(str, g()))",
    "parallel-in-a-generator": "def g():\n    yield parallel([lambda: 1])\nreturn list(g())",
    "many-thunks": "return len(parallel([lambda: 1] * 20000))",
}

WAITS = {  # the run waits at a gate that holds; nothing after it ran
    "approve-huge-prompt": "approve('a' * 900000)",
    "approve-with-forged-approvers": "approve('x', approvers=['mallory'])",
    "approve-auto-approving-on-expiry": "approve('x', expires_in=3600, on_expiry='approve')",
    "approve-nul-prompt": "approve('a\\x00b')",
    "approve-in-a-loop": "for i in range(10000):\n    approve('x' + str(i))",
    "approve-in-thunks": "return parallel([lambda: approve('a'), "
                         "lambda: side_effect(label='p')])",
    "sleep-for-ages": "sleep(10**300)",
    "wait-for-event-without-end": "wait_for_event('never')",
    "suspension-swallowed-by-loop": "for i in range(3):\n    try:\n        approve('x')\n"
                                    "    except Exception:\n        side_effect(label='s')",
    "suspension-swallowed-in-thunk": "def f():\n    try:\n        approve('x')\n"
                                     "    except Exception:\n        side_effect(label='s')\n"
                                     "return parallel([f, f])",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", cases(ENDS_FAILED))
def test_a_hang_or_an_unjournaled_value_fails_the_run(either_engine: Engine,
                                                      source: str) -> None:
    outcome = code_attack(either_engine, source)
    assert outcome.status == "failed", outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", cases(COMPLETES))
def test_cleanup_code_never_calls_a_tool(either_engine: Engine, source: str) -> None:
    result = either_engine.execute(code_plan_of(source), run_id="attack")
    assert result.status == "completed", result.error
    assert calls.labels["f"] == 0 and calls.labels["before"] == 1
    assert either_engine.resume("attack").status == "completed"
    calls.none_twice()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", cases(WAITS))
def test_a_gate_holds_and_nothing_runs_twice(either_engine: Engine, source: str) -> None:
    outcome = code_attack(either_engine, source, may_wait=True)
    assert outcome.status == "waiting", outcome
    assert calls.labels["s"] == 0


def code_plan_of(source: str) -> CodePlan:
    calls.clear()
    return code_plan(FIRST + source)
