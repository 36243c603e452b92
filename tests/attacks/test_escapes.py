"""Classic Python and RestrictedPython sandbox escapes, as code plans (issue 9, the corpus).

Each plan first makes a call with a side effect, then tries to reach the host: dunders and
the class hierarchy, frames, builtins, imports, dynamic code, format strings, unicode
spellings, guard shadowing, statements plans do not support. Most are refused before
anything runs; the rest are stopped by the sandbox at run time. `tests/test_attacks.py` and
`tests/test_sandbox_escapes.py` hold the first examples; these go further.
"""

from __future__ import annotations

import pytest

from agentflow import Engine
from tests.attacks.harness import cases, code_attack, next_plan_runs

REFUSED = {
    # Dunders, the class hierarchy and introspection.
    "fullwidth-dunder": "return (1).\uff3f\uff3fclass\uff3f\uff3f",
    "fullwidth-dunder-import": "return \uff3f\uff3fimport\uff3f\uff3f('os')",
    "mathematical-bold-format": "return \U0001d41f\U0001d428\U0001d42b\U0001d426\U0001d41a"
                                "\U0001d42d(1, 'x')",
    "nfkc-ligature-name": "return \ufb01le",
    "class-of-int": "return (1).__class__",
    "base-of-list": "return [].__class__.__base__",
    "subclasses-of-exception": "return ToolCallError.__subclasses__()",
    "mro-of-exception": "return ValueError.mro()",
    "init-of-exception": "return ValueError.__init__",
    "dict-of-error": "return ToolCallError('t', 'm').__dict__",
    "class-of-inputs": "return inputs.__class__",
    "builtins-dict": "return __builtins__.__dict__",
    "reduce": "return (1).__reduce__()",
    "reduce-ex": "return [].__reduce_ex__(2)",
    "str-new": "return str.__new__(str)",
    "dunder-add": "return 'a'.__add__('b')",
    "class-of-range": "return range(3).__class__",
    "self-of-builtin": "return next.__self__",
    "self-of-approve": "return approve.__self__",
    "private-attribute-call": "return side_effect._call",
    "private-attribute-text": "return side_effect._text",
    "class-of-error-arg": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                          "    return e.args[0].__class__",
    # Functions: code, globals, closures, defaults.
    "function-globals": "def f():\n    pass\nreturn f.__globals__",
    "lambda-code": "f = lambda: 1\nreturn f.__code__",
    "function-defaults": "def f(a=1):\n    return a\nreturn f.__defaults__",
    "lambda-kwdefaults": "f = lambda *, a=1: a\nreturn f.__kwdefaults__",
    "function-closure": "def f():\n    x = 1\n    return lambda: x\nreturn f().__closure__",
    "function-name": "def f():\n    pass\nreturn f.__name__",
    "function-qualname": "def f():\n    pass\nreturn f.__qualname__",
    "function-wrapped": "def f():\n    pass\nreturn f.__wrapped__",
    # Frames of generators, coroutines and tracebacks.
    "generator-frame": "def g():\n    yield 1\nreturn g().gi_frame",
    "generator-code": "def g():\n    yield 1\nreturn g().gi_code",
    "generator-yieldfrom": "def g():\n    yield 1\nreturn g().gi_yieldfrom",
    "generator-expression-frame-back": "g = (i for i in [1])\nreturn g.gi_frame.f_back.f_globals",
    "coroutine-frame": "async def f():\n    pass\nreturn f().cr_frame",
    "traceback": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    return e.__traceback__",
    "traceback-frame-globals": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                               "    return e.__traceback__.tb_frame.f_globals['sys']",
    "exception-context": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                         "    return e.__context__",
    "frame-f-back-chain": "g = (i for i in [1])\nf = g.gi_frame\nreturn f.f_back.f_back.f_locals",
    # Built-ins that must not exist for plans.
    "import": "import os\nreturn os.environ",
    "from-import": "from subprocess import run\nrun(['id'])",
    "import-in-try": "try:\n    import os\nexcept Exception:\n    pass",
    "dunder-import": "return __import__('os').environ",
    "getattr": "return getattr(1, '__class__')",
    "getattr-escaped-name": "return getattr(1, '\\x5f_class__')",
    "getattr-through-map": "return list(map(getattr, [1], ['__class__']))",
    "setattr": "setattr(side_effect, 'fn', None)",
    "hasattr": "return hasattr(1, 'real')",
    "vars": "return vars()",
    "dir": "return dir()",
    "globals": "return globals()",
    "locals": "return locals()",
    "type-three-args": "return type('T', (), {})",
    "type-one-arg": "return type(1)",
    "super": "return super()",
    "object": "return object()",
    "id": "return id(1)",
    "hash": "return hash('x')",
    "issubclass": "return issubclass(bool, int)",
    "classmethod": "return classmethod(len)",
    "property": "return property(len)",
    "exec": "exec('import os')",
    "eval": "return eval('1')",
    "compile": "return compile('1', 'x', 'eval')",
    "open": "return open('/etc/passwd').read()",
    "print": "print(1)",
    "input": "return input()",
    "breakpoint": "breakpoint()",
    "memoryview": "return memoryview(b'x')",
    "bytearray": "return bytearray(10)",
    "format-builtin": "return format(1, 'x')",
    "ascii": "return ascii('x')",
    "exit": "exit(1)",
    # Format strings that read attributes or items.
    "format-attribute": "return '{0.__class__.__mro__}'.format(1)",
    "format-item": "return '{0[0]}'.format(inputs)",
    "format-map-attribute": "return '{a.real}'.format_map({'a': 1})",
    "format-item-dunder-key": "return '{0[__class__]}'.format({'__class__': 1})",
    "format-nested-spec-attribute": "return '{0:{1.__class__}}'.format(1, 2)",
    "format-escaped-dunder": "return '{0.\\x5f_class__}'.format(1)",
    "format-unicode-escape": "return '{0.\\u005f_class__}'.format(1)",
    "format-named-escape": "return '{0.\\N{LOW LINE}_class__}'.format(1)",
    "fstring-dunder": "x = 1\nreturn f'{x.__class__}'",
    "nested-fstring-dunder": "return f'{f\"{1}\".__class__}'",
    # Shadowing the guards RestrictedPython injects.
    "positional-only-getattr": "def f(_getattr_=None, /):\n    return 1\nreturn f()",
    "keyword-only-write": "def f(*, _write_=1):\n    return 1\nreturn f()",
    "varargs-getiter": "def f(*_getiter_):\n    return 1\nreturn f()",
    "kwargs-getattr": "def f(**_getattr_):\n    return 1\nreturn f()",
    "lambda-default-getattr": "f = lambda _getattr_=1: 1\nreturn f()",
    "walrus-getattr": "if (_getattr_ := 1):\n    return 1",
    "assign-hook": "_af_tick_ = None",
    "default-captures-import": "def f(x=lambda: __import__):\n    return x\nreturn f()",
    # Statements plans do not support.
    "class": "class X:\n    pass",
    "class-getattribute": "class A:\n    def __getattribute__(self, n):\n        return 1",
    "metaclass": "class A(metaclass=type):\n    pass",
    "exception-subclass": "class E(Exception):\n    pass",
    "dunder-del-function": "def __del__(self):\n    side_effect(label='del')",
    "global": "def f():\n    global side_effect\n    side_effect = None\nf()",
    "global-at-top": "global x\nx = 1\nreturn x",
    "nonlocal": "def f():\n    x = 1\n    def g():\n        nonlocal x\n        x = 2\n"
                "    g()\n    return x\nreturn f()",
    "match-class-pattern": "match 1:\n    case int(real=r):\n        return r",
    "match-dunder-pattern": "match 1:\n    case int(__class__=c):\n        return c",
    "match-mapping": "match {'a': 1}:\n    case {'a': v, **rest}:\n        return v",
    "async-def": "async def f():\n    return 1\nreturn f()",
    "async-for": "async def f():\n    async for x in y:\n        pass",
    "async-with": "async def f():\n    async with x:\n        pass",
    "with": "with side_effect(label='x') as y:\n    pass",
    "except-star": "try:\n    1 / 0\nexcept* ZeroDivisionError:\n    pass",
    "yield-at-top": "yield 1",
    "yield-in-lambda": "f = lambda: (yield 1)\nreturn list(f())",
    "yield-in-default": "def g(x=[(yield) for i in []]):\n    pass",
    # Names and objects plans may not rebind or write.
    "rebind-tool": "side_effect = lambda label: 'fake'\nreturn side_effect(label='x')",
    "rebind-inputs": "def f():\n    inputs = {}\nf()\ninputs = 1",
    "write-inputs": "inputs['x'] = 1",
    "attribute-on-lambda": "f = lambda: 1\nf.x = 1",
    "delete-attribute": "x = [1]\ndel x.append",
    "augment-attribute": "x = inputs\nx.a += 1",
    "starred-attribute-target": "a, *inputs.b = [1, 2, 3]",
    "rebind-exception-name": "Exception = 1\ntry:\n    approve('x')\nexcept Exception:\n    pass",
    # The executor's own signals.
    "catch-base-exception": "try:\n    approve('x')\nexcept BaseException:\n    return 1",
    "raise-generator-exit": "raise GeneratorExit",
    "raise-keyboard-interrupt": "raise KeyboardInterrupt",
    "raise-system-exit": "raise SystemExit(1)",
    "raise-stop-async-iteration": "raise StopAsyncIteration",
    "return-in-finally": "try:\n    approve('x')\nfinally:\n    return 'swallowed'",
    # Tool-name and argument injection.
    "unknown-tool-argument": "side_effect(label='x', shell='rm -rf /')",
    "unknown-tool": "os_system(cmd='id')",
    "tool-positional-arguments": "side_effect('x')",
}

VIOLATIONS = {
    "format-string-built-at-run-time": "s = '{0.__cl' + 'ass__}'\nreturn s.format(1)",
    "format-map-built-at-run-time": "s = '{0.__cl' + 'ass__}'\nreturn s.format_map({'0': 1})",
    "format-method-taken-first": "f = '{0.__cl' + 'ass__}'\nreturn f.format(1)",
    "format-item-built-at-run-time": "s = '{0[' + '0]}'\nreturn s.format([1])",
    "generator-send": "def g():\n    x = yield 1\n    yield x\nit = g()\nnext(it)\n"
                      "return it.send(5)",
    "generator-throw": "def g():\n    yield 1\nit = g()\nnext(it)\nreturn it.throw(ValueError)",
    "dict-view-mapping": "return {1: 2}.keys().mapping",
    "class-method-of-float": "return float.fromhex('0x1p10')",
    "class-attribute-of-exception": "return ValueError.with_traceback",
    "unlisted-method": "return 'abc'.maketrans('a', 'b')",
}

RUN_TIME_ERRORS = {
    "attribute-of-tool": "return side_effect.fn",
    "attribute-of-constructor": "return dict.fromkeys([1])",
    "class-method-of-int": "return int.from_bytes(b'ab', 'big')",
    "str-format-unbound": "return str.format('{0.__class__}', 1)",
    "mutate-inputs-method": "inputs.update({'a': 1})",
    "tool-as-decorator": "@side_effect\ndef g():\n    return 1\nreturn g",
    "iter-with-sentinel": "return list(iter(lambda: side_effect(label='x'), 'y'))",
    "return-a-tool": "return [(y := side_effect) for i in [1]]",
    "return-an-exception": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
                           "    return e.with_traceback(None)",
    "deep-isinstance-tuple": "t = (int,)\nfor i in range(100000):\n    t = (t,)\n"
                             "return isinstance(1, t)",
    "raise-non-exception": "raise 1",
    "raise-from-class-needing-arguments": "raise ValueError('x') from ToolCallError",
    "delete-builtin": "del len",
    "tool-keyword-dunder": "side_effect(**{'__class__': 1})",
    "tool-keyword-nul": "side_effect(**{'a\\x00b': 1})",
}


@pytest.mark.parametrize("source", cases(REFUSED))
def test_an_escape_is_refused_before_anything_runs(engine: Engine, source: str) -> None:
    outcome = code_attack(engine, source)
    assert outcome.error_type == "PlanValidationError", outcome.message


@pytest.mark.parametrize("source", cases(VIOLATIONS))
def test_an_escape_at_run_time_is_a_sandbox_violation(either_engine: Engine,
                                                      source: str) -> None:
    outcome = code_attack(either_engine, source)
    assert outcome.error_type == "SandboxViolation", outcome.message
    assert "not allowed" in outcome.message or "not available" in outcome.message


@pytest.mark.parametrize("source", cases(RUN_TIME_ERRORS))
def test_a_reach_for_the_host_fails_the_run_cleanly(either_engine: Engine,
                                                    source: str) -> None:
    outcome = code_attack(either_engine, source)
    assert outcome.status == "failed", outcome


def test_the_engine_runs_the_next_plan_after_escapes(engine: Engine) -> None:
    for source in list(VIOLATIONS.values())[:3]:
        code_attack(engine, source, run_id=f"attack-{hash(source)}")
    next_plan_runs(engine)
