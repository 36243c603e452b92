"""Attack plans through the whole engine, with isolates: classic escapes and exhaustion.

Every plan first calls a tool with a side effect, then attacks. Each must be stopped
cleanly: refused before running (nothing runs, no run is created), or the run ends `failed`
with an agentflow error; the run is never left "running", the side effect ran once (also
after a resume), and the engine runs the next plan as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow import Engine, RunNotFound, SandboxLimits, code_plan, tool
from agentflow.errors import PlanValidationError
from agentflow.sandbox import IsolatePool

effects: list[str] = []


@tool
def side_effect(label: str) -> str:
    effects.append(label)
    return label


@pytest.fixture
def engine(tmp_path: Path, pool: IsolatePool) -> Engine:
    effects.clear()
    return Engine(f"sqlite:///{tmp_path / 'runs.db'}", tools=[side_effect], isolates=pool)


FIRST = "side_effect(label='before')\n"

ESCAPES = {  # refused by validation: nothing runs
    "format-string-dunder": "return '{0.__class__.__mro__}'.format(1)",
    "format-map-dunder": "return '{x.__class__}'.format_map({'x': 1})",
    "fstring-dunder": "x = 1\nreturn f'{x.__class__}'",
    "subclasses": "return ().__class__.__bases__[0].__subclasses__()",
    "generator-frame": "g = (i for i in [1])\nreturn g.gi_frame.f_back.f_globals",
    "traceback-frame": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                       "    return e.__traceback__.tb_frame.f_globals",
    "positional-only-guard": "def f(_getattr_=None, /):\n    return 1\nreturn f()",
    "import": "import os\nreturn os.environ",
    "dunder-import": "return __import__('os').system('id')",
    "builtins-dict": "return __builtins__",
    "getattr": "return getattr(side_effect, 'fn')",
    "type-three-args": "return type('X', (), {})",
    "catch-base-exception": "try:\n    approve('x')\nexcept BaseException:\n    return 1",
    "exec": "return exec('1')",
    "global": "def f():\n    global side_effect\n    side_effect = None\nf()",
    "class": "class X:\n    pass\nreturn X",
    "format-field-attribute": "return '{0.real}'.format(1)",
    "write-inputs": "inputs['x'] = 1",
    "set-attribute-on-tool": "side_effect.fn = None",
    "return-in-finally": "try:\n    approve('x')\nfinally:\n    return 'swallowed'",
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_classic_escape_is_refused_before_anything_runs(engine: Engine, source: str) -> None:
    with pytest.raises(PlanValidationError) as refused:
        engine.execute(code_plan(FIRST + source), run_id="attack")
    assert refused.value.issues and all(issue.message for issue in refused.value.issues)
    assert effects == []
    with pytest.raises(RunNotFound):
        engine.get_run("attack")


LIMITS = SandboxLimits(max_seconds=2.0, max_memory_growth=200 << 20, max_depth=50)
STOPPED = {  # valid plans stopped while they run
    "busy-loop": "while True:\n    pass",
    "recursion": "def f(n):\n    return f(n + 1)\nreturn f(0)",
    "recursion-through-parallel": "def f():\n    return parallel([f])\nreturn f()",
    "huge-string": "return len('a' * 10**10)",
    "huge-int": "return 10 ** 10 ** 8",
    "huge-shift": "return 1 << 10**9",
    "memory-hog": "chunks = []\nwhile True:\n    chunks.append('x' * 10**6)",
    "deep-tuple-hash": "t = ()\nfor i in range(300000):\n    t = (t,)\nreturn {t: 1}",
    "huge-error-message": "raise ValueError('x' * 9000000 + 'y' * 9000000)",
    "huge-format-width": "return '{:>99999999999}'.format(1)",
    "percent-format": "return '%*d' % (10**12, 1)",
    "repr-of-shared-big": "big = 'a' * 10**7\nreturn len(repr([big] * 1000))",
    # two distinct strings: a list of one shared string sorts fast (identity shortcut)
    "c-level-sort": "a = 'a' * 10**7\nb = a[1:] + 'b'\nreturn len(sorted([a, b] * 4000))",
    "swallow-suspension": "for i in range(3):\n    try:\n        approve('x')\n"
                          "    except Exception:\n        side_effect(label='swallowed')",
    "generator-bomb": "def g():\n    while True:\n        yield 1\nreturn list(g())",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", STOPPED.values(), ids=STOPPED.keys())
def test_an_attack_at_run_time_is_stopped_cleanly(engine: Engine, source: str) -> None:
    result = engine.execute(code_plan(FIRST + source), run_id="attack", limits=LIMITS)
    if result.status == "waiting":  # the suspension held: nothing ran after the approval
        assert "approve" in source
    else:
        assert result.status == "failed" and result.error is not None
        assert result.error.type in ("SandboxViolation", "IsolateTimedOut",
                                     "IsolateCpuExceeded", "IsolateOutOfMemory"), result.error
        assert result.error.message
    assert engine.get_run("attack").status == result.status
    engine.resume("attack")
    assert effects == ["before"]  # executed once, replayed on resume
    assert engine.execute(code_plan("return side_effect(label='next')")).outputs == "next"


def test_a_poisoned_namespace_stays_in_its_own_run(engine: Engine) -> None:
    first = engine.execute(code_plan("len = lambda value: 0\nreturn len([1, 2])"))
    assert first.outputs == 0
    assert engine.execute(code_plan("return len([1, 2])")).outputs == 2
