"""Escape attempts against the code-plan sandbox (DESIGN §2 contract 9).

Each attempt must be blocked, either rejected before running (PlanValidationError) or stopped
while running (SandboxViolation, or the executor's Suspension propagating), and must leave the
host as it was: the caller's inputs unchanged and no tool called.
"""

from __future__ import annotations

import ast
import copy
import textwrap
import threading
from typing import Any

import pytest

from agentflow.errors import (
    NonDeterminismError,
    PlanValidationError,
    SandboxViolation,
    Suspension,
)
from agentflow.sandbox.compiler import CompiledCodePlan
from agentflow.sandbox.runtime import run_code_plan
from agentflow.sandbox.transform import PlanTransformer
from tests.support.sandbox_host import FakeHost, compile_source, run_source

REJECTED = PlanValidationError
VIOLATION = SandboxViolation
SUSPENDED = Suspension

DEEP_TUPLE = "t = ()\nfor i in range(300000):\n    t = (t,)\n"

ESCAPES = [
    # Dunder names, introspection, frames.
    pytest.param("return (1).__class__", REJECTED, id="dunder-class"),
    pytest.param("return ().__class__.__bases__[0].__subclasses__()", REJECTED,
                 id="dunder-subclasses"),
    pytest.param("def f():\n    pass\nreturn f.__globals__", REJECTED, id="dunder-globals"),
    pytest.param("return __builtins__", REJECTED, id="dunder-builtins"),
    pytest.param("return inputs.__dict__", REJECTED, id="dunder-dict"),
    pytest.param("g = (x for x in [1])\nreturn g.gi_frame", REJECTED, id="generator-gi-frame"),
    pytest.param("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals", REJECTED,
                 id="frame-f-back-f-globals"),
    pytest.param("g = (x for x in [1])\nreturn g.gi_code", REJECTED, id="generator-gi-code"),
    pytest.param("def f():\n    pass\nreturn f().cr_frame", REJECTED, id="coroutine-cr-frame"),
    pytest.param("try:\n    1 / 0\nexcept ZeroDivisionError as error:\n"
                 "    return error.__traceback__.tb_frame", REJECTED, id="traceback-tb-frame"),
    pytest.param("return ValueError.mro()", REJECTED, id="mro"),
    pytest.param("return ValueError.with_traceback", VIOLATION, id="class-attribute-at-run-time"),
    pytest.param("handler = sorted\nreturn handler.__self__", REJECTED, id="bound-method-self"),
    pytest.param("def f(_getattr_=None, /):\n    return f.__code__\nreturn f()", REJECTED,
                 id="positional-only-shadows-getattr"),
    pytest.param("def f(_write_=lambda x: x, /):\n    return 1\nreturn f()", REJECTED,
                 id="positional-only-shadows-write"),
    pytest.param("Exception = 1\ntry:\n    approve('x')\nexcept Exception:\n    pass", REJECTED,
                 id="rebind-exception-name"),
    pytest.param("return [].copy.__self__.__class__", REJECTED, id="method-self-chain"),
    # Imports.
    pytest.param("import os\nreturn os.environ", REJECTED, id="import"),
    pytest.param("from subprocess import run\nrun('id')", REJECTED, id="from-import"),
    pytest.param("return __import__('os').environ", REJECTED, id="dunder-import"),
    pytest.param("return __builtins__['__import__']('os')", REJECTED,
                 id="import-through-builtins"),
    # Built-ins that must not be reachable.
    pytest.param("return getattr(1, '__class__')", REJECTED, id="builtin-getattr"),
    pytest.param("return vars()", REJECTED, id="builtin-vars"),
    pytest.param("return type('T', (object,), {})", REJECTED, id="builtin-type-three-args"),
    pytest.param("return globals()", REJECTED, id="builtin-globals"),
    pytest.param("return locals()", REJECTED, id="builtin-locals"),
    pytest.param("breakpoint()", REJECTED, id="builtin-breakpoint"),
    pytest.param("help()", REJECTED, id="builtin-help"),
    pytest.param("exit(1)", REJECTED, id="builtin-exit"),
    pytest.param("return compile('1', 'x', 'eval')", REJECTED, id="builtin-compile"),
    pytest.param("exec('import os')", REJECTED, id="builtin-exec"),
    pytest.param("return eval('1')", REJECTED, id="builtin-eval"),
    pytest.param("return memoryview(b'x')", REJECTED, id="builtin-memoryview"),
    pytest.param("return 'abc'.maketrans('a', 'b')", VIOLATION, id="unlisted-method"),
    # Format strings reading attributes (CVE-2023-41039 and string.Formatter).
    pytest.param("return '{0.__class__}'.format(1)", REJECTED, id="format-literal-dunder"),
    pytest.param("template = '{0.' + '__class__}'\nreturn template.format(1)", VIOLATION,
                 id="format-built-template"),
    pytest.param("template = '{x.__init__.__globals__}'\nreturn template.format_map({'x': note})",
                 VIOLATION, id="format-map-globals"),
    pytest.param("template = '{0[secret]}'\nreturn template.format(inputs)", VIOLATION,
                 id="format-item-access"),
    pytest.param("return f'{inputs.__class__}'", REJECTED, id="f-string-dunder"),
    pytest.param("return f'{1:{inputs.__class__}}'", REJECTED, id="f-string-spec-dunder"),
    pytest.param("return string.Formatter().get_field('0.__class__', [1], {})", REJECTED,
                 id="string-formatter"),
    # Files and the environment.
    pytest.param("return open('/etc/passwd').read()", REJECTED, id="open-passwd"),
    pytest.param("return os.environ['HOME']", REJECTED, id="os-environ"),
    pytest.param("return inputs.__class__.__module__", REJECTED, id="inputs-class"),
    pytest.param("return inputs.get.__self__", REJECTED, id="inputs-method-self"),
    # Mutating host objects.
    pytest.param("note.calls = []", REJECTED, id="set-attribute-on-tool"),
    pytest.param("inputs['repo'] = 'evil/repo'", REJECTED, id="write-inputs"),
    pytest.param("alias = inputs\nalias['repo'] = 'evil/repo'", VIOLATION,
                 id="write-inputs-through-alias"),
    pytest.param("alias = inputs\ndel alias['repo']", VIOLATION, id="delete-from-inputs"),
    pytest.param("__builtins__['len'] = lambda x: 0", REJECTED, id="poison-builtins-dict"),
    pytest.param("approve = lambda prompt: True", REJECTED, id="replace-plan-builtin"),
    pytest.param("t = ('a',)\nt[0] = 'b'", VIOLATION, id="write-tuple"),
    # Resource exhaustion.
    pytest.param("while True:\n    pass", VIOLATION, id="infinite-loop"),
    pytest.param("return 'x' * 10**10", VIOLATION, id="string-repetition"),
    pytest.param("return 10**10**10", VIOLATION, id="power-tower"),
    pytest.param("return [0] * 10**9", VIOLATION, id="list-repetition"),
    pytest.param("return list(range(10**12))", VIOLATION, id="huge-range"),
    pytest.param("return len(list(range(5 * 10**6)))", VIOLATION, id="range-materialized"),
    pytest.param("def f():\n    return f()\nreturn f()", VIOLATION, id="deep-recursion"),
    pytest.param("f = lambda n: f(n + 1)\nreturn f(0)", VIOLATION, id="lambda-recursion"),
    pytest.param("def g():\n    yield from g()\nreturn next(g())", VIOLATION,
                 id="generator-recursion"),
    pytest.param("m = [1]\nfor i in range(10000):\n    m = map(abs, m)\nreturn next(m)",
                 VIOLATION, id="nested-iterator-chain"),
    pytest.param("s = 'x'\nwhile True:\n    s = s + s", VIOLATION, id="string-doubling"),
    pytest.param("s = 'x'\nfor i in range(64):\n    s += s", VIOLATION,
                 id="augmented-string-doubling"),
    pytest.param("x = [0]\nx *= 10**9", VIOLATION, id="augmented-list-repetition"),
    pytest.param("x = 2\nfor i in range(64):\n    x = x * x", VIOLATION, id="repeated-squaring"),
    pytest.param("return 1 << 10**10", VIOLATION, id="left-shift"),
    pytest.param("return ''.join('x' for i in range(10**6) for j in range(10**6))", VIOLATION,
                 id="join-huge-generator"),
    pytest.param("return 'x'.ljust(10**10)", VIOLATION, id="str-ljust"),
    pytest.param("return b'x'.center(10**10)", VIOLATION, id="bytes-center"),
    pytest.param("return '{:>10000000000}'.format(1)", VIOLATION, id="format-padding"),
    pytest.param("return f'{1:>10000000000}'", VIOLATION, id="f-string-padding"),
    pytest.param("return '%10000000000d' % 1", VIOLATION, id="percent-padding"),
    pytest.param("return ('x' * 10**6).replace('x', 'y' * 1000)", VIOLATION,
                 id="replace-growth"),
    pytest.param("s = 'x' * 10**6\nreturn str([s] * 1000)", VIOLATION,
                 id="repr-of-shared-references"),
    pytest.param("return round(5, -10**7)", VIOLATION, id="round-huge-digits"),
    pytest.param(DEEP_TUPLE + "return {t: 1}", VIOLATION, id="deep-tuple-dict-key"),
    pytest.param(DEEP_TUPLE + "return t in {1}", VIOLATION, id="deep-tuple-membership"),
    pytest.param(DEEP_TUPLE + "return {0: t}.items() | {1}", VIOLATION,
                 id="deep-tuple-dict-view"),
    # Swallowing the executor's suspension.
    pytest.param("try:\n    approve('x')\nexcept Exception:\n    pass\nnote(text='after')",
                 SUSPENDED, id="except-exception-then-tool"),
    pytest.param("try:\n    approve('x')\nexcept:\n    pass\nnote(text='after')", REJECTED,
                 id="bare-except"),
    pytest.param("try:\n    approve('x')\nexcept BaseException:\n    note(text='after')",
                 REJECTED, id="except-base-exception"),
    pytest.param("try:\n    approve('x')\nexcept (ValueError, BaseException):\n    pass",
                 REJECTED, id="except-tuple-with-base-exception"),
    pytest.param("try:\n    approve('x')\nexcept Suspension:\n    pass", REJECTED,
                 id="except-suspension-by-name"),
    pytest.param("try:\n    approve('x')\nexcept* Exception:\n    pass", REJECTED,
                 id="except-star"),
    pytest.param("try:\n    approve('x')\nfinally:\n    note(text='in finally')", SUSPENDED,
                 id="finally-calls-tool"),
    pytest.param("try:\n    approve('x')\nfinally:\n    return 'swallowed'", REJECTED,
                 id="finally-return"),
    pytest.param("while True:\n    try:\n        approve('x')\n    finally:\n"
                 "        note(text='retry')", SUSPENDED, id="finally-in-loop"),
    pytest.param("try:\n    approve('x')\nfinally:\n    for i in range(10**9):\n        pass",
                 SUSPENDED, id="finally-loops"),
    pytest.param("def g():\n    try:\n        yield 1\n    except GeneratorExit:\n"
                 "        note(text='caught')\n        yield 2\nit = g()\nnext(it)\napprove('x')",
                 REJECTED, id="generator-catches-generator-exit"),
    pytest.param("def g():\n    try:\n        yield 1\n    finally:\n"
                 "        note(text='closing')\nit = g()\nnext(it)\napprove('x')", SUSPENDED,
                 id="generator-finally-calls-tool"),
    pytest.param("with approve('x'):\n    pass", REJECTED, id="context-manager"),
    pytest.param("wait_for_event('deploy')\nnote(text='after')", SUSPENDED,
                 id="wait-for-event-suspends"),
]


@pytest.mark.parametrize(("source", "blocked_by"), ESCAPES)
def test_escape_is_blocked(source: str, blocked_by: type[BaseException]) -> None:
    host = FakeHost()
    inputs: dict[str, Any] = {"repo": "acme/app", "secret": {"token": "t0ken"}, "labels": ["bug"]}
    before = copy.deepcopy(inputs)
    with pytest.raises(blocked_by):
        run_source(source, host, inputs)
    assert inputs == before
    assert host.tool_calls == []


def test_there_are_at_least_forty_escape_attempts() -> None:
    assert len(ESCAPES) >= 40


def test_mutating_inputs_stays_inside_one_execution() -> None:
    inputs = {"repo": "acme/app", "labels": ["bug"]}
    source = "inputs['labels'].append('evil')\nreturn inputs['labels']"
    assert run_source(source, inputs=inputs) == ["bug", "evil"]
    assert run_source(source, inputs=inputs) == ["bug", "evil"]  # not ["bug", "evil", "evil"]
    assert inputs == {"repo": "acme/app", "labels": ["bug"]}


def test_mutating_a_tool_result_leaves_the_host_copy_unchanged() -> None:
    host = FakeHost()
    result = run_source('''
        issues = list_issues(repo="acme/app")
        issues[0]["title"] = "pwned"
        issues.append({"number": 99})
        return issues
    ''', host)
    assert result[0]["title"] == "pwned" and len(result) == 3
    assert host.stored_issues == [{"number": 1, "title": "crash"}, {"number": 2, "title": "typo"}]


def test_arguments_are_copied_before_a_tool_sees_them() -> None:
    host = FakeHost()
    run_source('''
        issue = {"number": 1, "title": "crash"}
        triage(issue=issue)
        issue["title"] = "changed after the call"
    ''', host)
    assert host.tool_calls == [("triage", {"issue": {"number": 1, "title": "crash"}})]


def test_rebinding_a_builtin_does_not_reach_the_next_execution() -> None:
    compiled = compile_source("len = lambda value: 0\nreturn len([1, 2])")
    assert run_code_plan(compiled, FakeHost().bindings(), {}) == 0
    assert run_source("return len([1, 2])") == 2


def test_a_binding_stays_unchanged() -> None:
    host = FakeHost()
    bindings = host.bindings()
    snapshot = {name: dict(vars(function)) for name, function in bindings.items()
                if hasattr(function, "__dict__")}
    with pytest.raises(SandboxViolation):
        run_code_plan(compile_source("alias = note\nalias['x'] = 1"), bindings, {})
    assert snapshot == {name: dict(vars(function)) for name, function in bindings.items()
                        if hasattr(function, "__dict__")}


def test_halting_errors_of_the_executor_cannot_be_swallowed() -> None:
    host = FakeHost()
    bindings = host.bindings()

    def diverged(position: str, **kwargs: Any) -> None:
        raise NonDeterminismError("run-1", "call 3", "note(text='a')", "note(text='b')")

    bindings["close_issue"] = diverged
    compiled = compile_source('''
        try:
            close_issue(number=1)
        except Exception:
            pass
        note(text="after")
        return "done"
    ''')
    with pytest.raises(NonDeterminismError):
        run_code_plan(compiled, bindings, {})
    assert host.tool_calls == []


def test_suspension_in_a_thunk_stops_the_other_threads() -> None:
    host = FakeHost()
    started = threading.Event()

    def slow_note(position: str, **kwargs: Any) -> str:
        started.wait(5)
        return str(kwargs)

    bindings = host.bindings()
    bindings["triage"] = slow_note
    compiled = compile_source('''
        def second():
            triage(issue={})
            note(text="after the suspension")
        parallel([lambda: approve("x"), second])
    ''')
    original_approve = bindings["approve"]

    def approve_then_release(position: str, prompt: str, **details: Any) -> bool:
        try:
            return bool(original_approve(position, prompt, **details))
        finally:
            started.set()

    bindings["approve"] = approve_then_release
    with pytest.raises(Suspension):
        run_code_plan(compiled, bindings, {})
    assert host.tool_calls == []


def test_unfinished_generators_are_closed_when_the_run_ends() -> None:
    host = FakeHost()
    result = run_source("""
        def numbers():
            try:
                yield 1
                yield 2
            finally:
                note(text="cleanup after the run")
        started = numbers()
        return next(started)
    """, host)
    assert result == 1
    assert host.tool_calls == []


def test_a_generator_closed_by_the_plan_cannot_call_tools_in_its_cleanup() -> None:
    host = FakeHost()
    result = run_source("""
        def numbers():
            try:
                yield 1
            finally:
                note(text="cleanup")
        started = numbers()
        first = next(started)
        started.close()
        return [first, note(text="the run goes on")]
    """, host)
    assert result == [1, "the run goes on"]
    assert host.tool_calls == [("note", {"text": "the run goes on"})]


def test_no_function_of_the_plan_reaches_the_host() -> None:
    host = FakeHost()
    compiled = compile_source("note(text=[lambda: note(text='later')])")
    with pytest.raises(TypeError, match=r"an argument of note\(\) is not JSON data"):
        run_code_plan(compiled, host.bindings(), {})
    assert host.tool_calls == []


def compile_unchecked(source: str) -> CompiledCodePlan:
    """Compile with the guards but without any validation, as if a check had been missed."""
    tree = PlanTransformer().visit(ast.parse(textwrap.dedent(source)))
    return CompiledCodePlan("unchecked", source, "", compile(tree, "<plan unchecked>", "exec"))


RUNTIME_ONLY = [
    pytest.param("return (1).__class__", SandboxViolation, id="dunder-attribute"),
    pytest.param("g = (x for x in [1])\nreturn g.gi_frame", SandboxViolation, id="gi-frame"),
    pytest.param("note.calls = []", SandboxViolation, id="set-attribute-on-tool"),
    pytest.param("inputs['repo'] = 'evil/repo'", SandboxViolation, id="write-inputs"),
    pytest.param("import os", ImportError, id="import"),
    pytest.param("return open('/etc/passwd')", NameError, id="open"),
    pytest.param("return getattr(1, 'real')", NameError, id="getattr"),
    pytest.param("try:\n    approve('x')\nexcept:\n    note(text='swallowed')\nreturn 1",
                 Suspension, id="bare-except-swallows"),
    pytest.param("try:\n    approve('x')\nfinally:\n    return 'swallowed'", Suspension,
                 id="finally-return-swallows"),
    pytest.param("for i in range(3):\n    try:\n        approve('x')\n    finally:\n"
                 "        continue\nnote(text='after')", Suspension, id="finally-continue"),
]


@pytest.mark.parametrize(("source", "blocked_by"), RUNTIME_ONLY)
def test_the_runtime_blocks_what_validation_would_have_caught(
        source: str, blocked_by: type[BaseException]) -> None:
    host = FakeHost()
    inputs = {"repo": "acme/app"}
    with pytest.raises(blocked_by):
        run_code_plan(compile_unchecked(source), host.bindings(), inputs)
    assert inputs == {"repo": "acme/app"}
    assert host.tool_calls == []


def test_poisoned_builtins_stay_in_their_own_execution() -> None:
    poisoned = compile_unchecked("__builtins__['len'] = lambda value: 0\nreturn len([1, 2])")
    assert run_code_plan(poisoned, {}, {}) == 0
    assert run_source("return len([1, 2])") == 2
