"""Single operations that would exhaust the host's CPU or memory (issue 9, finding 6 and
beyond its table): str/bytes/list/tuple amplification through `*`, `+`, replace, join,
format, %-formatting, padding; huge integers through pow, shifts, products and int<->str;
colliding hashes; lazy iterators without end; recursion through lambdas, default arguments,
`map`, `sorted` keys and `parallel`.

Each table names the `SandboxLimits` field that must stop the attack before the result is
built, so the same attack is stopped in isolation mode "none" too. Attacks that only the
isolate's time or memory limit can stop (one C-level operation that is slow, not large) run
in mode "process" only; the engine's heartbeat goes on beating meanwhile (see `attack`).
"""

from __future__ import annotations

import dataclasses

import pytest

from agentflow import Engine
from tests.attacks.harness import SMALL, cases, code_attack, next_plan_runs

COUNTED = dataclasses.replace(SMALL, max_seconds=60.0)
"""For attacks a counted limit must stop (size, depth, bits, operations): a time limit a
loaded machine could reach first (the isolate killed in the middle of a C-level repr:
IsolateTimedOut) must not decide which limit answers."""

DEEP_LIST = "x = []\nfor i in range(40000):\n    x = [x]\n"
ENDLESS = "def g():\n    i = 0\n    while True:\n        i += 1\n        yield i\n"

SEQUENCE = {  # stopped by max_sequence_length before the result is built
    "str-times": "return len('ab' * 10**8)",
    "int-times-str": "return len(10**8 * 'ab')",
    "list-times": "return len([1, 2] * 10**8)",
    "tuple-times": "return len((1, 2) * 10**8)",
    "bytes-times": "return len(b'ab' * 10**8)",
    "list-times-in-place": "x = [1] * 1000\nfor i in range(20):\n    x *= 2\nreturn len(x)",
    "str-plus-in-place": "x = 'a' * 1000\nfor i in range(30):\n    x += x\nreturn len(x)",
    "list-plus-in-place": "x = [1] * 1000\nfor i in range(30):\n    x += x\nreturn len(x)",
    "str-plus-str": "return len('a' * 999999 + 'b' * 999999)",
    "list-plus-list": "return len([0] * 10**6 + [0] * 10**6)",
    "tuple-plus-tuple": "return len((1,) * 10**6 + (1,) * 10**6)",
    "list-extend-itself": "x = [1] * 1000\nfor i in range(30):\n    x.extend(x)\nreturn len(x)",
    "replace-amplifies": "s = 'a' * 1000\nfor i in range(5):\n"
                         "    s = s.replace('a', 'aaaaaaaaaa')\nreturn len(s)",
    "replace-empty-pattern": "return len(('ab' * 400000).replace('', 'xy'))",
    "join-amplifies": "return len(('x' * 1000).join(['y' * 1000] * 1000))",
    "format-repeats-field": "return len('{0}{0}{0}{0}{0}{0}{0}{0}'.format('a' * 900000))",
    "format-width": "return len('{:9999999999}'.format('a'))",
    "format-nested-width": "return len('{:{}}'.format('a', 10**9))",
    "format-map-width": "return len('{a:>999999999}'.format_map({'a': 1}))",
    "percent-repeats": "return len('%s%s%s%s%s%s%s%s' % (('a' * 900000,) * 8))",
    "percent-width": "return len('%9999999999s' % 'a')",
    "percent-star-precision": "return len('%.*f' % (10**8, 1.0))",
    "percent-star-width": "return '%*d' % (10**12, 1)",
    "fstring-width": "x = 1\nreturn len(f'{x:>999999999}')",
    "fstring-nested-width": "w = 10**9\nreturn len(f'{1:{w}}')",
    "fstring-pieces": "a = 'a' * 600000\nreturn len(f'{a}{a}')",
    "expandtabs": "return len(('\\t' * 1000).expandtabs(10**6))",
    "center": "return len('a'.center(10**9))",
    "zfill": "return len('1'.zfill(10**9))",
    "ljust": "return len('a'.ljust(10**9))",
    "bytes-center": "return len(b'a'.center(10**9))",
    "encode-then-hex": "return len(('a' * 10**6).encode('utf-32').hex())",
    "utf32-encode": "return len(('a' * 900000).encode('utf-32'))",
    "hex-of-bytes": "return len(('a' * 900000).encode().hex())",
    "range-to-list": "return len(list(range(10**9)))",
    "range-to-tuple": "return len(tuple(range(10**9)))",
    "range-to-frozenset": "return len(frozenset(range(10**9)))",
    "range-in-zip": "return len(list(zip(range(10**9), range(10**9))))",
    "range-in-enumerate": "return len(list(enumerate(range(10**9))))",
    "reversed-range": "return len(list(reversed(range(10**9))))",
    "min-of-range-with-key": "return min(range(10**8), key=lambda x: x)",
    "any-over-range": "return any(x < 0 for x in range(10**9))",
    "len-of-huge-range": "return len(range(10**30))",
    "range-into-list-in-place": "x = []\nx += (i for i in range(10**9))\nreturn len(x)",
    "split-of-repeat": "return len(('a ' * 900000).split())",
    "bin-times": "return len(bin(1 << 19999) * 1000)",
    "repr-of-shared-string": "big = 'a' * 10**5\nreturn len(repr([big] * 100))",
    "tool-argument-huge": "return side_effect(label='a' * 10**6 * 5)",
    "star-unpack-list": "big = [1] * 900000\nreturn len([*big, *big])",
    "star-unpack-tuple": "big = [1] * 900000\nreturn len((*big, *big))",
    "star-unpack-mixed": "big = 'a' * 600000\nreturn len([*big, 1, *big, 2])",
    "star-unpack-into-call": "big = [1] * 900000\nreturn len(set((*big, *big)))",
    "approve-huge-prompt": "approve('a' * 10**6 * 2)",
    "raise-huge-message": "raise ValueError('x' * 900000 + 'y' * 900000)",
    "raise-many-arguments": "raise ValueError(*(['x' * 20] * 60000))",
}

DEEP = {  # nested past the recursion limit: refused, or a RecursionError (never a crash)
    "str-of-deep-list": DEEP_LIST + "return len(str(x))",
    "repr-of-deep-list": DEEP_LIST + "return len(repr(x))",
    "percent-r-of-deep-list": DEEP_LIST + "return len('%r' % (x,))",
    "fstring-r-of-deep-list": DEEP_LIST + "return len(f'{x!r}')",
    "format-of-deep-list": DEEP_LIST + "return len('{0}'.format(x))",
    "return-deep-list": DEEP_LIST + "return x",
    "tool-argument-deep-list": DEEP_LIST + "return side_effect(label=x)",
    "equality-of-deep-lists": DEEP_LIST + "y = x\nz = []\nfor i in range(40000):\n"
                                          "    z = [z]\nreturn x == z",
    "hash-of-deep-tuple": "t = ()\nfor i in range(40000):\n    t = (t,)\nreturn {t: 1}",
    "deep-tuple-in-set": "t = ()\nfor i in range(40000):\n    t = (t,)\nreturn len({t})",
    "deep-tuple-in-operator": "t = ()\nfor i in range(40000):\n    t = (t,)\nreturn t in [t]",
}

INTEGERS = {  # stopped by max_int_bits
    "pow": "return pow(10, 10**7)",
    "pow-operator": "return 10 ** 10 ** 8",
    "pow-mod-huge-exponent": "return pow(7, 10**100000, 13)",
    "shift": "return 1 << 10**9",
    "shift-in-place": "x = 1\nfor i in range(100):\n    x <<= 1000\nreturn x.bit_length()",
    "product": "x = 2**19000\nreturn len(str(x * x))",
    "product-in-place": "x = 3\nfor i in range(30):\n    x *= x\nreturn x.bit_length()",
    "str-of-power": "return len(str(2**60000))",
    "int-of-long-text": "return int('9' * 100000)",
    "int-of-text-base-36": "return int('z' * 4000, 36)",
    "int-of-text-base-keyword": "return int('z' * 4000, base=36)",
    "hex-of-product": "return len(hex(2**19999 * 2**19999))",
}

OPERATIONS = {  # stopped by max_operations
    "sort-with-key": "return len(sorted(list(range(10**6)), key=lambda x: -x))",
    "nested-comprehension": "return len([(a, b, c) for a in range(1000) for b in range(1000)"
                            " for c in range(1000)])",
    "busy-loop": "while True:\n    pass",
    "busy-loop-caught": "while True:\n    try:\n        while True:\n            pass\n"
                        "    except Exception:\n        pass",
    "loop-in-finally": "try:\n    while True:\n        pass\nfinally:\n    while True:\n"
                       "        pass",
    "endless-sum": ENDLESS + "return sum(g())",
    "endless-max": ENDLESS + "return max(g())",
    "endless-join": ENDLESS + "return ''.join(map(str, g()))",
    "endless-set": ENDLESS + "return len(set(g()))",
    "endless-frozenset": ENDLESS + "return len(frozenset(g()))",
    "endless-dict": ENDLESS + "return len(dict((i, i) for i in g()))",
    "endless-sorted": ENDLESS + "return sorted(g())",
    "endless-in": ENDLESS + "return 0 in g()",
    "endless-unpack": ENDLESS + "return [*g()]",
    "endless-unpack-twice": ENDLESS + "return [*[1], *g()]",
    "endless-extend": ENDLESS + "x = []\nx.extend(g())\nreturn x",
    "endless-starred-target": ENDLESS + "a, *b = g()\nreturn a",
    "endless-zip": ENDLESS + "return list(zip(g(), g()))",
    "endless-enumerate": ENDLESS + "for i, v in enumerate(g()):\n    pass",
    "endless-all": ENDLESS + "return all(g())",
    "endless-set-update": ENDLESS + "s = set()\ns.update(g())\nreturn 1",
    "endless-dict-update": ENDLESS + "d = {}\nd.update((i, i) for i in g())\nreturn 1",
    "endless-list-in-place": ENDLESS + "x = []\nx += g()\nreturn 1",
    "endless-tuple": ENDLESS + "return len(tuple(g()))",
    "endless-map": ENDLESS + "return list(map(str, g()))",
    "endless-filter": ENDLESS + "return list(filter(None, g()))",
}

DEPTH = {  # stopped by max_depth
    "recursion": "def f(n):\n    return f(n + 1)\nreturn f(0)",
    "recursion-caught": "def f():\n    try:\n        return f()\n    except Exception:\n"
                        "        return f()\nreturn f()",
    "recursion-through-sort-key": "f = lambda x: f(x)\nreturn sorted([1, 2], key=f)",
    "recursion-through-default": "def f(g=None):\n    return f()\nreturn f()",
    "y-combinator": "Y = lambda f: (lambda x: x(x))(lambda y: f(lambda *a: y(y)(*a)))\n"
                    "fact = Y(lambda f: lambda n: 1 if n == 0 else n * f(n - 1))\n"
                    "return fact(100000)",
    "recursion-through-map": "def f(x):\n    return list(map(f, [x]))\nreturn f(1)",
    "recursion-through-filter": "def f(x):\n    return list(filter(f, [x]))\nreturn f(1)",
    "recursion-through-max-key": "def f(x):\n    return max([x], key=f)\nreturn f(1)",
    "recursion-through-yield-from": "def g():\n    yield from g()\nreturn list(g())",
    "recursion-through-parallel": "def f():\n    return parallel([f])\nreturn f()",
    "recursion-through-wide-parallel": "def f(n):\n    return parallel([lambda: f(n + 1) "
                                       "for i in range(4)])\nreturn f(0)",
    "recursion-through-generator-expression": "def f():\n    return list(x for x in f())\n"
                                              "return f()",
}

KILLED = {  # slow, not large: only the isolate's time or memory limit stops them
    "colliding-int-hashes-set": "return len({i * (2**61 - 1) for i in range(100000)})",
    "colliding-int-hashes-dict": "return len({i * (2**61 - 1): 1 for i in range(100000)})",
    "colliding-hashes-from-list": "return len(set([i * (2**61 - 1) for i in range(50000)]))",
    "quadratic-sum-of-lists": "return len(sum([[1] * 1000] * 1000, []))",
    "slice-assignment-doubles": "x = [1] * 1000\nfor i in range(20):\n    x[0:0] = x\n"
                                "return len(x)",
    "memory-hog": "chunks = []\nwhile True:\n    chunks.append('x' * 10**6)",
    "memory-hog-catching": "x = []\nwhile True:\n    try:\n        x.append('a' * 100000)\n"
                           "    except Exception:\n        pass",
    "max-with-repr-key": "big = ['a' * 900000] * 1000\nreturn len(max(big, key=repr))",
    "in-list-of-distinct-strings": "big = ['a' * 999999 + str(i % 10) for i in range(300)]\n"
                                   "return ['a' * 999999 + 'x' in big for i in range(3000)]",
}

STORMS = {  # the engine serves (and journals) each call: it works, and must not stall
    "now-storm": "for i in range(100000):\n    now()\nreturn 1",
    "sleep-zero-storm": "for i in range(100000):\n    sleep(0)\nreturn 1",
}


def _stopped_by(outcome_message: str, limit: str) -> None:
    assert f"SandboxLimits.{limit}" in outcome_message or limit in outcome_message, \
        outcome_message


@pytest.mark.parametrize("source", cases(SEQUENCE))
def test_an_amplification_is_refused_before_it_is_built(either_engine: Engine,
                                                        source: str) -> None:
    outcome = code_attack(either_engine, source, limits=COUNTED)
    assert outcome.error_type in ("SandboxViolation", "LimitExceeded"), outcome.message
    assert "max_sequence_length" in outcome.message or "max_value" in outcome.message \
        or "nested more than" in outcome.message, outcome.message


@pytest.mark.parametrize("source", cases(DEEP))
def test_deep_nesting_fails_cleanly(either_engine: Engine, source: str) -> None:
    outcome = code_attack(either_engine, source, limits=COUNTED)
    assert outcome.error_type in ("SandboxViolation", "LimitExceeded", "RecursionError"), \
        outcome.message


@pytest.mark.parametrize("source", cases(INTEGERS))
def test_a_huge_integer_is_refused_before_it_is_built(either_engine: Engine,
                                                      source: str) -> None:
    outcome = code_attack(either_engine, source, limits=COUNTED)
    assert outcome.error_type == "SandboxViolation", outcome.message
    _stopped_by(outcome.message, "max_int_bits")


@pytest.mark.parametrize("source", cases(OPERATIONS))
def test_an_endless_computation_runs_out_of_operations(engine: Engine, source: str) -> None:
    outcome = code_attack(engine, source)
    assert outcome.error_type in ("SandboxViolation", "IsolateTimedOut"), outcome.message


@pytest.mark.parametrize("source", cases(DEPTH))
def test_a_recursion_runs_out_of_depth(engine: Engine, source: str) -> None:
    outcome = code_attack(engine, source, limits=COUNTED)
    assert outcome.error_type == "SandboxViolation", outcome.message
    _stopped_by(outcome.message, "max_depth")


IN_PROCESS = {name: table[name] for table, names in (
    (OPERATIONS, ("busy-loop-caught", "endless-unpack-twice", "endless-starred-target",
                  "endless-dict-update", "endless-list-in-place")),
    (DEPTH, ("recursion-caught", "y-combinator", "recursion-through-parallel",
             "recursion-through-yield-from"))) for name in names}


@pytest.mark.parametrize("source", cases(IN_PROCESS))
def test_counted_limits_hold_in_process_too(engine_in_process: Engine, source: str) -> None:
    """Isolation mode "none" has no isolate to kill: the operation and depth counts alone
    stop these (a representative part of the two tables above)."""
    outcome = code_attack(engine_in_process, source, limits=COUNTED)
    assert outcome.error_type == "SandboxViolation", outcome.message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", cases(KILLED))
def test_a_slow_single_operation_is_stopped_by_the_isolate(engine: Engine,
                                                           source: str) -> None:
    outcome = code_attack(engine, source)
    assert outcome.error_type in ("SandboxViolation", "IsolateTimedOut", "IsolateCpuExceeded",
                                  "IsolateOutOfMemory"), outcome.message
    next_plan_runs(engine)


@pytest.mark.parametrize("source", cases(STORMS))  # the suite's 300 s hang guard
def test_a_storm_of_calls_is_stopped_without_stalling_the_engine(engine: Engine,
                                                                 source: str) -> None:
    outcome = code_attack(engine, source)
    assert outcome.error_type in ("SandboxViolation", "IsolateTimedOut"), outcome.message


def test_outputs_are_bounded_like_a_call_result(engine: Engine) -> None:
    """Within the sandbox's limits (10 M characters), a return value of shared strings is
    still 1.8 MB of JSON: more than `max_value_bytes`, so it is not stored with the run."""
    outcome = code_attack(engine, "x = 'a' * 900000\nreturn [x, x]", limits=None)
    assert outcome.error_type == "LimitExceeded", outcome.message
    assert "the plan's outputs: its return value: more than 1048576 bytes" in outcome.message
