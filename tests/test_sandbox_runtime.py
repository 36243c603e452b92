"""Running code plans: ordinary Python works as expected; the binding contract holds."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.errors import SandboxViolation, Suspension
from agentflow.sandbox import SandboxLimits, run_code_plan
from agentflow.sandbox.policy import CATCHABLE_EXCEPTIONS, SAFE_BUILTINS
from tests.support.sandbox_host import NOW, FakeHost, compile_source, run_source


def test_the_issue_4_example_runs() -> None:
    host = FakeHost(approved=True)
    result = run_source('''
        issues = list_issues(repo=inputs["repo"], label="bug")
        results = parallel([lambda i=i: triage(issue=i) for i in issues])
        if approve(f"Close {len(issues)} stale issues?"):
            for i in issues:
                close_issue(number=i["number"])
        sleep(hours=1)
        return {"closed": len(issues), "labels": results}
    ''', host)
    assert result == {"closed": 2, "labels": ["bug", "chore"]}
    assert sorted(zip(host.positions, [name for name, _ in host.calls], strict=True)) == [
        ("c1", "list_issues"), ("c2.0.c1", "triage"), ("c2.1.c1", "triage"),
        ("c3", "approve"), ("c4", "close_issue"), ("c5", "close_issue"), ("c6", "sleep")]
    assert ("approve", {"prompt": "Close 2 stale issues?"}) in host.calls


def test_an_approval_suspends_the_plan_before_later_calls() -> None:
    host = FakeHost()
    with pytest.raises(Suspension, match="Close 2 stale issues"):
        run_source('''
            issues = list_issues(repo=inputs["repo"])
            if approve(f"Close {len(issues)} stale issues?"):
                close_issue(number=1)
        ''', host)
    assert [name for name, _ in host.calls] == ["list_issues", "approve"]


def test_ordinary_python_works() -> None:
    result = run_source('''
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        def evens(limit):
            for n in range(limit):
                if n % 2 == 0:
                    yield n

        counts = {}
        for word in "a b a c b a".split():
            counts[word] = counts.get(word, 0) + 1
        counts["a"] += 10
        squares = {n: n * n for n in range(5) if n}
        first, *rest = [3, 1, 2]
        pairs = [(i, c) for i, c in enumerate("xy", start=1)]
        try:
            int("not a number")
        except ValueError as error:
            problem = str(error)
        total = 0
        n = 0
        while True:
            n += 1
            if n > 10:
                break
            if n % 3:
                continue
            total += n
        scale = lambda x, factor=2: x * factor
        return {
            "fib": fib(15), "evens": list(evens(7)), "counts": counts, "squares": squares,
            "unpacked": [first, rest], "pairs": pairs, "problem": problem, "total": total,
            "scaled": list(map(scale, [1, 2])), "filtered": list(filter(None, [0, 1, 2])),
            "sorted": sorted({"b": 2, "a": 1}.items(), key=lambda item: item[1], reverse=True),
            "zipped": dict(zip("ab", [1, 2])), "minmax": [min(4, 2, 8), max([4, 2, 8])],
            "any_all": [any(x > 3 for x in [1, 5]), all(x > 3 for x in [1, 5])],
            "reversed": list(reversed([1, 2, 3])), "sum": sum([[1], [2]], []),
            "sets": sorted({"a": 1, "b": 2}.keys() & {"b", "c"}), "next": next(evens(9), None),
            "types": [isinstance([], list), isinstance({}, (list, dict)), isinstance(1, str)],
            "text": " ".join(["x"] * 3).upper().replace("X", "y").center(7, "-"),
            "power": [2 ** 10, pow(3, 4, 5), 1 << 4, round(3.14159, 2), divmod(7, 2)],
            "strings": ["ab" * 2, "a" + "b", "%s-%05.1f" % ("x", 3.14159), "{} {k}".format(1, k=2)],
        }
    ''')
    assert result == {
        "fib": 610, "evens": [0, 2, 4, 6], "counts": {"a": 13, "b": 2, "c": 1},
        "squares": {1: 1, 2: 4, 3: 9, 4: 16}, "unpacked": [3, [1, 2]],
        "pairs": [(1, "x"), (2, "y")], "problem": "invalid literal for int() with base 10: "
        "'not a number'", "total": 18, "scaled": [2, 4], "filtered": [1, 2],
        "sorted": [("b", 2), ("a", 1)], "zipped": {"a": 1, "b": 2}, "minmax": [2, 8],
        "any_all": [True, False], "reversed": [3, 2, 1], "sum": [1, 2], "sets": ["b"],
        "next": 0, "types": [True, True, False], "text": "-y y y-",
        "power": [1024, 1, 16, 3.14, (3, 1)], "strings": ["abab", "ab", "x-003.1", "1 2"],
    }


def test_f_strings_format_fields_and_specs() -> None:
    result = run_source('''
        name = "ada"
        score = 0.91234
        width = 8
        return [f"{name!r}", f"{score:.2%}", f"{name:>{width}}", f"{len(name)}-{name.title()}",
                f"{3:03d}|{'x':^5}|{name!s:.2}"]
    ''')
    assert result == ["'ada'", "91.23%", "     ada", "3-Ada", "003|  x  |ad"]


def test_a_plan_without_return_returns_none() -> None:
    assert run_source("x = 1") is None


def test_outputs_are_plain_data() -> None:
    result = run_source("return {'inputs': inputs, 'view': inputs.copy()}",
                        inputs={"repo": "acme/app", "tags": ["a"]})
    assert result == {"inputs": {"repo": "acme/app", "tags": ["a"]},
                      "view": {"repo": "acme/app", "tags": ["a"]}}
    assert type(result["inputs"]) is dict


def test_inputs_are_read_only_but_can_be_copied() -> None:
    assert run_source("data = dict(inputs)\ndata['repo'] = 'x'\nreturn [data['repo'], "
                      "inputs['repo'], inputs.get('missing', 'default')]") == [
        "x", "acme/app", "default"]


def test_now_returns_what_the_executor_gives() -> None:
    assert run_source("return [now().isoformat(), now().year]") == [NOW.isoformat(), 2024]


def test_a_failed_tool_call_can_be_caught_by_name() -> None:
    assert run_source('''
        try:
            fail(reason="disk full")
        except ToolCallError as error:
            return [error.tool, error.message, error.step_id, error.error_type]
    ''') == ["fail", "disk full", "call-1", "RuntimeError"]


def test_tools_take_keyword_arguments_only_at_run_time_too() -> None:
    host = FakeHost()
    with pytest.raises(TypeError, match="tool 'note' takes keyword arguments only"):
        run_source("log = note\nlog('hello')", host)
    assert host.tool_calls == []


def test_plan_exceptions_propagate_as_they_are() -> None:
    with pytest.raises(KeyError, match="missing"):
        run_source("return inputs['missing']")
    with pytest.raises(ValueError, match="bad input"):
        run_source("raise ValueError('bad input')")


def test_a_huge_exception_message_is_refused() -> None:
    with pytest.raises(SandboxViolation, match="raised ValueError with a message"):
        run_source("raise ValueError(['x' * 1000000] * 20)")


def test_a_huge_return_value_is_refused() -> None:
    with pytest.raises(SandboxViolation, match="return value could have more than"):
        run_source("big = 'x' * 1000000\nreturn [big] * 20")


def test_a_huge_tool_argument_is_refused_before_the_call() -> None:
    host = FakeHost()
    with pytest.raises(SandboxViolation, match=r"an argument of note\(\)"):
        run_source("big = 'x' * 1000000\nnote(text=[big] * 20)", host)
    assert host.tool_calls == []


def test_parallel_runs_up_to_max_concurrency_thunks_at_once_and_keeps_their_order() -> None:
    host = FakeHost()
    together = threading.Barrier(3, timeout=30)  # breaks unless 3 thunks run at once
    running: list[int] = [0, 0]  # now, most at once
    lock = threading.Lock()
    bindings = host.bindings()

    def note(position: str, text: str) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        together.wait()
        with lock:
            running[0] -= 1
        return text.upper()

    bindings["note"] = note
    compiled = compile_source("return parallel([lambda t=t: note(text=t) for t in 'abcdef'])")
    assert run_code_plan(compiled, bindings, {}, max_concurrency=3) == list("ABCDEF")
    assert running[1] == 3


def test_one_compiled_plan_runs_in_many_threads_at_once() -> None:
    compiled = compile_source('''
        total = 0
        for i in range(2000):
            total += i
        return [inputs["n"], total]
    ''')
    results: dict[int, Any] = {}

    def run(n: int) -> None:
        results[n] = run_code_plan(compiled, {}, {"n": n}, SandboxLimits(max_operations=2100))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: [n, 1999000] for n in range(8)}


def test_every_documented_built_in_is_provided() -> None:
    names = sorted(SAFE_BUILTINS | CATCHABLE_EXCEPTIONS)
    source = "\n".join(f"x{index} = {name}" for index, name in enumerate(names))
    assert run_source(source + "\nreturn 'all defined'") == "all defined"


def test_binding_names_must_be_callable_from_plan_code() -> None:
    with pytest.raises(ValueError, match="binding name 'fetch-issue'"):
        run_code_plan(compile_source("return 1"), {"fetch-issue": lambda: None}, {})


OPERANDS = st.one_of(
    st.integers(-300, 300), st.booleans(), st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=4), st.binary(max_size=3), st.lists(st.integers(0, 3), max_size=3),
    st.tuples(st.integers(0, 3)), st.frozensets(st.integers(0, 3), max_size=3),
)
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "<<", ">>", "|", "&", "^"]


def outcome(compute: Callable[[], Any]) -> tuple[str, Any]:
    """The repr of what `compute` returns (a plan returns JSON data only), or its error."""
    try:
        return ("value", compute())
    except Exception as error:  # the plan and plain Python must fail alike
        return ("error", type(error))


@pytest.mark.parametrize("operator", OPERATORS)
@settings(max_examples=60, deadline=None)
@given(left=OPERANDS, right=OPERANDS)
def test_guarded_operators_keep_python_semantics(operator: str, left: Any, right: Any) -> None:
    expression = f"left {operator} right"
    expected = outcome(lambda: repr(eval(expression, {}, {"left": left, "right": right})))
    inputs = {"left": left, "right": right}
    plan = compile_source(f"left = inputs['left']\nright = inputs['right']\n"
                          f"return repr({expression})")
    assert outcome(lambda: run_code_plan(plan, {}, inputs)) == expected
    statement = f"value = left\nvalue {operator}= right"
    namespace = {"left": copy.deepcopy(left), "right": right}
    expected = outcome(lambda: exec(statement, {}, namespace) or repr(namespace["value"]))
    augmented = compile_source(f"left = inputs['left']\nright = inputs['right']\n{statement}\n"
                               "return repr(value)")
    assert outcome(lambda: run_code_plan(augmented, {}, inputs)) == expected
