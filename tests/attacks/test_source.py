"""Attacks through a code plan's source text: deep nesting for the parser and the checks
(recursion in C and in Python), huge sources, NUL bytes, BOMs, encodings, homoglyphs and
unicode identifiers, numbers too long to convert. The engine parses and checks a code plan
in its own process, so each must be refused (or run) without freezing it.
"""

from __future__ import annotations

import pytest

from agentflow import Engine, code_plan
from tests.attacks.harness import attack, cases, code_attack

REFUSED = {
    "deep-parentheses": "return " + "(" * 5000 + "1" + ")" * 5000,
    "deep-lists": "return " + "[" * 5000 + "]" * 5000,
    "deep-calls": "return " + "len(" * 3000 + "'x'" + ")" * 3000,
    "deep-unary-minus": "return " + "-" * 30000 + "1",
    "deep-not": "return " + "not " * 15000 + "True",
    "deep-attribute-chain": "x = {}\nreturn x" + ".get('a', {})" * 2000,
    "deep-additions": "return 1" + " + 1" * 15000,
    "deep-lambdas": "f = " + "lambda: " * 3000 + "1",
    "deep-ifs": "".join("    " * i + "if True:\n" for i in range(120)) + "    " * 120 + "pass",
    "deep-defs": "".join("    " * i + f"def f{i}():\n" for i in range(120)) + "    " * 120
                 + "pass",
    "deep-fstrings": "x = 1\nreturn " + "f'{" * 10 + "x" + "}'" * 10,
    "nul-byte": "return 'a'\x00",
    "nul-byte-in-string": "return 'a\x00b'",
    "nul-byte-in-comment": "# \x00\nreturn 1",
    "byte-order-mark": "\ufeffreturn 1",
    "lone-surrogate": "return '\ud800'",
    "huge-source": "x = 1\n" * 150000,
    "source-past-its-limit": "x = 1\n" * 11000,
    "huge-string-literal": "return len('" + "a" * 900000 + "')",
    "many-names": "\n".join(f"v{i} = {i}" for i in range(50000)),
    "line-continuations": "return \\\n" * 1000 + "1",
    "tabs-and-spaces": "if True:\n\tx = 1\n        return x",
    "homoglyph-builtin": "\u0430pprove('x')",
    "homoglyph-tool": "sid\u0435_effect(label='x')",
    "integer-literal-too-long": "return " + "9" * 5000,
    "keyword-as-name": "None = 1",
    "walrus-at-top": "(approve := 1)",
}

RUNS = {  # odd but harmless sources: they run, and fail or complete cleanly
    "huge-float-literal": "return 1e" + "9" * 1000,
    "huge-hex-literal": "return 0x" + "f" * 10000,
    "complex-literal": "return 1j",
    "coding-cookie": "# -*- coding: rot13 -*-\nreturn 1",
    "carriage-returns": "x = 1\rreturn x",
    "form-feed": "\x0cx = 1\nreturn x",
    "right-to-left-override": "return '\u202e'",
    "unicode-identifier": "\u00e9t\u00e9 = 1\nreturn \u00e9t\u00e9",
    "nfkc-twins": "\ufb01 = 1\nfi = 2\nreturn \ufb01",
    "source-at-its-limit": "x = 1\n" * 10000,
}


@pytest.mark.parametrize("source", cases(REFUSED))
def test_a_hostile_source_is_refused_without_freezing_the_engine(engine: Engine,
                                                                 source: str) -> None:
    outcome = code_attack(engine, source)
    assert outcome.error_type == "PlanValidationError", outcome.message


@pytest.mark.parametrize("source", cases(RUNS))
def test_an_odd_source_runs_cleanly(engine: Engine, source: str) -> None:
    plan = code_plan(("side_effect(label='before')\n" + source)[:64 << 10])
    result = engine.execute(plan, run_id="attack")
    assert result.status in ("completed", "failed"), result
    if result.status == "failed":
        attack(engine, plan)  # the checks of a stopped attack hold
