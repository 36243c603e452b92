"""What a plan can learn of the host by looking (issue 9, finding 13, and beyond): reprs and
str() of everything it can name, formatted values, the messages of errors it catches (its
own, the sandbox's, the tools'), the errors its run ends with. None may show a host path,
the environment, a memory address, a module path or the engine's own classes.
"""

from __future__ import annotations

import json

import pytest

from agentflow import Engine, code_plan
from tests.attacks.harness import FIRST, assert_no_leak, calls, cases, code_attack

EVERYTHING = ("[str, list, repr, sorted, parallel, approve, now, sleep, wait_for_event, "
              "side_effect, f, lambda: 1, 'x'.upper, [].append, {}.get, set().add, f(), "
              "map(str, [1]), iter([1]), iter('ab'), zip([1]), enumerate([1]), "
              "filter(None, [1]), reversed([1]), range(3), inputs, {}.keys(), {}.items(), "
              "(i for i in [1]), ToolCallError, ValueError, Exception]")
DEFS = "def f():\n    yield 1\n"

SHOWN = {  # each returns texts built from host objects; none may leak
    "repr-of-everything": DEFS + f"return [repr(v) for v in {EVERYTHING}]",
    "str-of-everything": DEFS + f"return [str(v) for v in {EVERYTHING}]",
    "fstring-of-everything": DEFS + f"return [f'{{v}} {{v!r}} {{v!s}}' for v in {EVERYTHING}]",
    "percent-of-everything": DEFS + f"return ['%s %r' % (v, v) for v in {EVERYTHING}]",
    "format-of-everything": DEFS + f"return ['{{0}} {{0!r}}'.format(v) for v in {EVERYTHING}]",
    "format-map-of-everything": DEFS + f"return ['{{a!r}}'.format_map({{'a': v}}) "
                                       f"for v in {EVERYTHING}]",
    "repr-of-nested-containers": DEFS + f"return repr({{'a': {EVERYTHING}}})",
    "tool-error-text": "try:\n    read_config(name='x')\nexcept ToolCallError as e:\n"
                       "    return [e.message, str(e), repr(e), e.error_type, e.tool, e.args]",
    "tool-argument-error-text": "try:\n    side_effect(label=1)\nexcept ToolCallError as e:\n"
                                "    return [e.message, repr(e)]",
    "builtin-argument-errors": "out = []\nfor f in [lambda: approve(), lambda: sleep(x=1), "
                               "lambda: parallel(1, 2), lambda: sorted(1, 2, 3), "
                               "lambda: now(1), lambda: wait_for_event(), lambda: iter(1, 2),"
                               " lambda: all(x=1), lambda: 'a'.replace(), "
                               "lambda: [].append(1, 2)]:\n    try:\n        f()\n"
                               "    except Exception as e:\n        out.append(repr(e))\n"
                               "return out",
    "plan-function-argument-errors": "def f(a):\n    return a\nout = []\n"
                                     "for g in [lambda: f(), lambda: (lambda x: x)(), "
                                     "lambda: parallel([lambda x: x])]:\n    try:\n"
                                     "        g()\n    except Exception as e:\n"
                                     "        out.append(repr(e))\nreturn out",
    "python-error-texts": "out = []\nfor f in [lambda: 1 / 0, lambda: [][1], lambda: {}['k'],"
                          " lambda: int('x'), lambda: 'a' + 1, lambda: None.x, "
                          "lambda: sorted([1, 'a']), lambda: next(iter([])), "
                          "lambda: side_effect.x, lambda: dict.fromkeys([1]), "
                          "lambda: inputs['missing'], lambda: (i for i in [1]) + 1]:\n"
                          "    try:\n        f()\n    except Exception as e:\n"
                          "        out.append([repr(e), str(e), e.args])\nreturn out",
    "error-with-a-generator-inside": DEFS + "try:\n    raise ValueError(f())\n"
                                            "except ValueError as e:\n    return str(e)",
}

FAILS = {  # the run's own error message may not leak either
    "raise-a-generator": DEFS + "raise ValueError(f())",
    "raise-a-map": "raise ValueError(map(str, [1]))",
    "raise-a-class": "raise ValueError(ToolCallError)",
    "raise-a-tool": "raise ValueError(side_effect)",
    "assert-an-iterator": "assert False, iter([1])",
    "key-error-of-an-iterator": "return {}[str(iter([1]))]",
    "uncaught-tool-error": "read_config(name='x')",
    "return-a-tool": "return side_effect",
    "return-a-generator": DEFS + "return f()",
    "violation-caught": "try:\n    'a' * 10**9\nexcept Exception as e:\n    return repr(e)",
    "format-violation-caught": "s = '{0.__cl' + 'ass__}'\ntry:\n    s.format(1)\n"
                               "except Exception as e:\n    return repr(e)",
}


@pytest.mark.parametrize("source", cases(SHOWN))
def test_what_a_plan_sees_names_nothing_of_the_host(either_engine: Engine,
                                                    source: str) -> None:
    calls.clear()
    result = either_engine.execute(code_plan(FIRST + source), run_id="attack")
    assert result.status == "completed", result.error
    assert_no_leak(json.dumps(result.outputs), "what the plan saw")


@pytest.mark.parametrize("source", cases(FAILS))
def test_the_error_a_run_ends_with_names_nothing_of_the_host(either_engine: Engine,
                                                             source: str) -> None:
    outcome = code_attack(either_engine, source)
    assert outcome.status == "failed"
    run = either_engine.get_run("attack")
    assert run.error is not None and run.error.traceback is None
