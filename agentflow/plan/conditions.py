"""The `when` expression language: our own tokenizer and recursive-descent parser.

Conditions come from LLM-written plans, so they are never handed to eval, exec, compile or
Python's ast (step ids may contain dashes anyway). The grammar, loosest binding first:

    expression := conjunction ("or" conjunction)*
    conjunction := negation ("and" negation)*
    negation := "not" negation | comparison
    comparison := operand [("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand]
    operand := literal | path | "${" path "}" | function "(" ")" | "(" expression ")"
             | "[" [expression ("," expression)* [","]] "]"

Literals are numbers (`-3`, `2.5`, `1e3`), 'single' or "double" quoted strings, true/false/null
(or True/False/None). Paths are those of `references`; a path that finds nothing reads as None
instead of raising. Comparisons never raise: `==` is JSON equality (true is not 1), ordering
works between two numbers or two strings and is False otherwise, `in` tests membership in a
list, a substring in a string or a key in an object, and `!=` / `not in` are the negations.

Statuses (`steps.<id>.status`): `succeeded`, `failed`, `skipped`, and `rejected` for an
approval that was rejected (an approval step, or the approval gate of a tool step; an
approval that expires with on_expiry "reject" is rejected too).

Status functions, and how the executor combines them with the condition:

- `success()`: every dependency succeeded. A failed dependency with continue_on_error counts
  as succeeded, and so does a rejected one whose approval says on_reject "continue": the
  rejection is data, not an error (an approval step's output then has approved=false and the
  reason). A rejection with on_reject "skip" counts as neither success nor failure: like a
  skipped step, its dependents are skipped unless their condition says otherwise. One with
  on_reject "fail" counts as a failure.
- `failure()`: some ancestor (transitive dependency) failed. The compiled plan holds no
  transitive sets (quadratic in a chain's length): the executor propagates a "some ancestor
  failed" flag along `dependents` as steps settle.
- `always()`: true.
- A condition that calls none of them is ANDed with `success()`, so a step whose
  dependencies did not all succeed is skipped whatever its condition says; a condition that
  calls one is the whole rule (`always()` runs after failures and skips too).
- `when` is evaluated once per step, before a foreach expands, so it cannot use `item` or
  `index`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.references import (
    Evaluator,
    PathSyntaxError,
    Reference,
    Scope,
    excerpt,
    parse_path,
    read_quoted,
    resolver,
    skip_spaces,
)

STATUS_FUNCTIONS: dict[str, Evaluator] = {
    "always": lambda scope: True,
    "success": lambda scope: scope.upstream_success,
    "failure": lambda scope: scope.upstream_failure,
}
MAX_NESTING = 50
"""Deepest nesting of parentheses, lists and `not` (keeps parsing and evaluation bounded)."""

_KEYWORDS = frozenset({"and", "or", "not", "in"})
_CONSTANTS: dict[str, Any] = {"true": True, "True": True, "false": False, "False": False,
                              "null": None, "None": None}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MAX_NUMBER_LENGTH = 100
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",")
_HINTS = (("&&", "use 'and'"), ("||", "use 'or'"), ("!", "use 'not'"), ("=", "use '=='"))


class _Token(NamedTuple):
    kind: str  # value, path, keyword, function, op, end
    value: Any
    position: int


class Condition:
    """A compiled `when` expression.

    `evaluate(scope)` never raises for data reasons; `references` lists the paths it reads
    (with the JSON path of the `when` field); `uses_status_function` tells the executor
    whether to AND it with `success()` (see the module docstring).
    """

    __slots__ = ("_evaluate", "references", "text", "uses_status_function")

    def __init__(self, text: str, evaluate: Evaluator, references: tuple[Reference, ...],
                 uses_status_function: bool) -> None:
        self.text = text
        self._evaluate = evaluate
        self.references = references
        self.uses_status_function = uses_status_function

    def evaluate(self, scope: Scope) -> bool:
        """Whether the condition holds in `scope`."""
        return bool(self._evaluate(scope))


def compile_condition(text: str, json_path: str = "$") -> Condition:
    """Parse a condition once; raises PlanValidationError naming the column of a syntax error."""
    try:
        if not text.strip():
            raise PathSyntaxError("the condition is empty", 0)
        parser = _Parser(_tokens(text, json_path))
        evaluate = parser.parse()
    except PathSyntaxError as error:
        where = (f"column {error.position + 1} (near {excerpt(text[error.position:], 30)!r})"
                 if error.position < len(text) else "the end")
        issue = ValidationIssue(json_path, f"invalid condition: {error.message} at {where}",
                                code="syntax")
        raise PlanValidationError([issue], what="condition") from None
    return Condition(text, evaluate, tuple(parser.references), parser.uses_status_function)


def _tokens(text: str, json_path: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = skip_spaces(text, 0)
    while pos < len(text):
        char = text[pos]
        if text.startswith("${", pos):
            reference, end = parse_path(text, skip_spaces(text, pos + 2), json_path)
            end = skip_spaces(text, end)
            if text[end: end + 1] != "}":
                raise PathSyntaxError("expected '}' to close the reference", end)
            tokens.append(_Token("path", reference, pos))
            end += 1
        elif "0" <= char <= "9" or (char == "-" and "0" <= text[pos + 1: pos + 2] <= "9"):
            number, end = _number(text, pos)
            tokens.append(_Token("value", number, pos))
        elif char in "'\"":
            value, end = read_quoted(text, pos)
            tokens.append(_Token("value", value, pos))
        elif (name := _NAME.match(text, pos)) is not None:
            word, end = name.group(), name.end()
            if word in _KEYWORDS:
                tokens.append(_Token("keyword", word, pos))
            elif word in _CONSTANTS:
                tokens.append(_Token("value", _CONSTANTS[word], pos))
            elif word in STATUS_FUNCTIONS and text.startswith("(", skip_spaces(text, end)):
                tokens.append(_Token("function", word, pos))
            else:
                reference, end = parse_path(text, pos, json_path)
                tokens.append(_Token("path", reference, pos))
        else:
            operator = next((op for op in _OPERATORS if text.startswith(op, pos)), None)
            if operator is None:
                hint = next((f"; {hint}" for bad, hint in _HINTS if text.startswith(bad, pos)),
                            "")
                raise PathSyntaxError(f"unexpected character {char!r}{hint}", pos)
            tokens.append(_Token("op", operator, pos))
            end = pos + len(operator)
        pos = skip_spaces(text, end)
    tokens.append(_Token("end", None, pos))
    return tokens


def _number(text: str, pos: int) -> tuple[int | float, int]:
    """The number literal at `pos` (the caller saw a digit) and the position after it."""
    match = _NUMBER.match(text, pos)
    if match is None:
        raise PathSyntaxError("expected a number", pos)
    literal = match.group()
    if len(literal) > _MAX_NUMBER_LENGTH:
        raise PathSyntaxError("number is too long", pos)
    is_int = match.group(1) is None and match.group(2) is None
    return (int(literal) if is_int else float(literal)), match.end()


class _Parser:
    """Recursive descent over the tokens, building evaluator closures as it goes."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.references: list[Reference] = []
        self.uses_status_function = False

    def parse(self) -> Evaluator:
        evaluate = self.expression()
        token = self.tokens[self.pos]
        if token.kind != "end":
            raise PathSyntaxError(f"expected 'and', 'or' or the end, found {_describe(token)}",
                                  token.position)
        return evaluate

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def at(self, kind: str, value: str) -> bool:
        token = self.tokens[self.pos]
        return token.kind == kind and token.value == value

    def expect(self, operator: str, context: str) -> None:
        token = self.take()
        if token.kind != "op" or token.value != operator:
            raise PathSyntaxError(f"expected {operator!r} {context}, found {_describe(token)}",
                                  token.position)

    def nested(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise PathSyntaxError(f"nested more than {MAX_NESTING} levels deep", position)

    def expression(self) -> Evaluator:
        operands = [self.conjunction()]
        while self.at("keyword", "or"):
            self.take()
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else _any(tuple(operands))

    def conjunction(self) -> Evaluator:
        operands = [self.negation()]
        while self.at("keyword", "and"):
            self.take()
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else _all(tuple(operands))

    def negation(self) -> Evaluator:
        if not self.at("keyword", "not"):
            return self.comparison()
        self.nested(self.take().position)
        operand = self.negation()
        self.depth -= 1
        return lambda scope: not operand(scope)

    def comparison(self) -> Evaluator:
        left = self.operand()
        operator = self.comparison_operator()
        if operator is None:
            return left
        right = self.operand()
        token = self.tokens[self.pos]
        if self.comparison_operator() is not None:
            raise PathSyntaxError("comparisons cannot be chained; combine them with 'and'",
                                  token.position)
        test = _COMPARISONS[operator]
        return lambda scope: test(left(scope), right(scope))

    def comparison_operator(self) -> str | None:
        token = self.tokens[self.pos]
        if token.kind == "op" and token.value in _COMPARISONS:
            self.take()
            return str(token.value)
        if self.at("keyword", "in"):
            self.take()
            return "in"
        if self.at("keyword", "not") and self.tokens[self.pos + 1][:2] == ("keyword", "in"):
            self.take()
            self.take()
            return "not in"
        return None

    def operand(self) -> Evaluator:
        token = self.take()
        if token.kind == "value":
            value = token.value
            return lambda scope: value
        if token.kind == "path":
            self.references.append(token.value)
            return resolver(token.value, strict=False)
        if token.kind == "function":
            self.uses_status_function = True
            self.expect("(", f"after {token.value}")
            self.expect(")", f"({token.value}() takes no arguments)")
            return STATUS_FUNCTIONS[token.value]
        if token.kind == "op" and token.value == "(":
            self.nested(token.position)
            inner = self.expression()
            self.expect(")", "to close '('")
            self.depth -= 1
            return inner
        if token.kind == "op" and token.value == "[":
            self.nested(token.position)
            items = self.list_items()
            self.depth -= 1
            return lambda scope: [item(scope) for item in items]
        raise PathSyntaxError(f"expected a value, a path or '(', found {_describe(token)}",
                              token.position)

    def list_items(self) -> tuple[Evaluator, ...]:
        items: list[Evaluator] = []
        while not self.at("op", "]"):
            items.append(self.expression())
            if not self.at("op", ","):
                break
            self.take()
        self.expect("]", "to close the list")
        return tuple(items)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end"
    if token.kind == "path":
        return repr(excerpt(token.value.text, 30))
    if token.kind == "value":
        return excerpt(repr(token.value), 30)
    return repr(token.value)


def _any(operands: tuple[Evaluator, ...]) -> Evaluator:
    def evaluate(scope: Scope) -> bool:
        return any(operand(scope) for operand in operands)
    return evaluate


def _all(operands: tuple[Evaluator, ...]) -> Evaluator:
    def evaluate(scope: Scope) -> bool:
        return all(operand(scope) for operand in operands)
    return evaluate


def _equal(left: Any, right: Any) -> bool:
    """JSON equality: booleans are not numbers, containers compare item by item."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_equal, left, right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    return bool(left == right)


def _number_or_string(left: Any, right: Any) -> bool:
    """Whether two values can be ordered: two numbers (not booleans) or two strings."""
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str)
    return (isinstance(left, int | float) and isinstance(right, int | float)
            and not isinstance(left, bool) and not isinstance(right, bool))


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, list):
        return any(_equal(item, element) for element in container)
    if isinstance(container, str | Mapping):
        return isinstance(item, str) and item in container
    return False


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda left, right: not _equal(left, right),
    "<": lambda left, right: _number_or_string(left, right) and left < right,
    "<=": lambda left, right: _number_or_string(left, right) and left <= right,
    ">": lambda left, right: _number_or_string(left, right) and left > right,
    ">=": lambda left, right: _number_or_string(left, right) and left >= right,
    "in": lambda left, right: _contains(right, left),
    "not in": lambda left, right: not _contains(right, left),
}
