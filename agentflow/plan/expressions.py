"""The expression language of `when` conditions and `${= ...}` values: our own tokenizer and
recursive-descent parser, never eval, exec, compile or Python's ast.

The grammar, loosest binding first:

    expression  := conjunction (("or" | "||") conjunction)*
    conjunction := negation (("and" | "&&") negation)*
    negation    := ("not" | "!") negation | comparison
    comparison  := operand [("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand]
    operand     := literal | path | "${" path "}" | name "(" [expression ("," expression)*] ")"
                 | "(" expression ")" | "[" [expression ("," expression)* [","]] "]"

Literals: numbers (`-3`, `2.5`, `1e3`), 'single' or "double" quoted strings, true/false/null
(or True/False/None). Paths are those of `references`, plus one projection over a list:
`steps.a.output.labels[*].name` (or `labels.*.name`) is the list of every label's name. A
path that finds nothing reads as null, never an error.

`or` / `||` gives its first truthy operand, else its last, and `and` / `&&` its first falsy
operand, else its last (so `inputs.flag || false` defaults, and `x == 'a' && 'b' || 'c'`
chooses); null, false, 0, '' and empty lists and objects are falsy. Comparisons never raise:
`==` is JSON equality (true is not 1), ordering works between two numbers or two strings and
is false otherwise, `in` tests membership in a list, a substring or a key.

Functions: see `functions.FUNCTIONS`; `always()`, `success()` and `failure()` only in `when`.

Limits (expressions come from untrusted plans): an expression has at most
`MAX_EXPRESSION_LENGTH` characters and nests at most `MAX_NESTING` levels (parentheses,
lists, calls, `not`); parsing and evaluation visit each part once, so both are linear in the
expression's length; strings that functions build are bounded by `functions.MAX_TEXT`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from agentflow.errors import ExpressionError, PlanValidationError, ValidationIssue
from agentflow.plan.functions import FUNCTIONS, FunctionFailure
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
from agentflow.plan.schema_paths import json_type

MAX_EXPRESSION_LENGTH = 4000
"""Longest expression, in characters (a `when`, or the inside of one `${= ...}`)."""
MAX_NESTING = 50
"""Deepest nesting of parentheses, lists, calls and `not`."""

Types = frozenset[str] | None
TypeLookup = Callable[[Reference], Types]
"""What validation knows of a path: the JSON types of the value it reads (None: unknown)."""

STATUS_FUNCTIONS: dict[str, Evaluator] = {
    "always": lambda scope: True,
    "success": lambda scope: scope.upstream_success,
    "failure": lambda scope: scope.upstream_failure,
}

_KEYWORDS = {"and": "and", "or": "or", "not": "not", "in": "in", "&&": "and", "||": "or",
             "!": "not"}
_CONSTANTS: dict[str, Any] = {"true": True, "True": True, "false": False, "False": False,
                              "null": None, "None": None}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MAX_NUMBER_LENGTH = 100
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "(", ")", "[", "]", ",", "!")
_BOOLEAN = frozenset({"boolean"})


class _Token(NamedTuple):
    kind: str  # value, path, keyword, status, call, op, end
    value: Any
    position: int


class _Node(NamedTuple):
    """A parsed part: how to evaluate it, and what JSON types its value may have."""

    evaluate: Evaluator
    types: Callable[[TypeLookup], Types]


class Expression:
    """A compiled expression. `evaluate(scope)` raises nothing but `ExpressionError` (a
    function that cannot take its arguments); `references` lists the paths it reads;
    `result_types(lookup)` is what validation knows of its value."""

    __slots__ = ("_evaluate", "_types", "json_path", "references", "text",
                 "uses_status_function")

    def __init__(self, text: str, json_path: str, node: _Node,
                 references: tuple[Reference, ...], uses_status_function: bool) -> None:
        self.text = text
        self.json_path = json_path
        self._evaluate = node.evaluate
        self._types = node.types
        self.references = references
        self.uses_status_function = uses_status_function

    def evaluate(self, scope: Scope) -> Any:
        try:
            return self._evaluate(scope)
        except FunctionFailure as failure:
            raise ExpressionError(excerpt(self.text), self.json_path, str(failure)) from None
        except RecursionError:
            raise ExpressionError(excerpt(self.text), self.json_path,
                                  "the data is nested too deeply") from None

    def result_types(self, lookup: TypeLookup) -> Types:
        return self._types(lookup)


def compile_expression(text: str, json_path: str = "$", *, what: str = "expression",
                       count: Callable[[], None] | None = None) -> Expression:
    """Parse a whole expression once; PlanValidationError names the column of a mistake.
    `count`, when given, is called once per part evaluated (tests use it to measure work)."""
    try:
        if not text.strip():
            raise PathSyntaxError(f"the {what} is empty", 0)
        _check_length(text, 0)
        tokens, _ = _tokens(text, 0, json_path, inside_braces=False)
        return _Parser(text, tokens, json_path, count).parse_all()
    except PathSyntaxError as error:
        where = (f"column {error.position + 1} (near {excerpt(text[error.position:], 30)!r})"
                 if error.position < len(text) else "the end")
        issue = ValidationIssue(json_path, f"invalid {what}: {error.message} at {where}",
                                code="syntax")
        raise PlanValidationError([issue], what=what) from None


def parse_embedded(text: str, start: int, json_path: str) -> tuple[Expression, int]:
    """The expression of `${= ...}` starting at `start` (just after `${=`) and the position
    just after its closing `}`; PathSyntaxError (position in `text`) when it does not parse."""
    tokens, end = _tokens(text, start, json_path, inside_braces=True)
    if text[end: end + 1] != "}":
        raise PathSyntaxError("expected '}' to close the expression", end)
    _check_length(text[start:end], start)
    if tokens[0].kind == "end":
        raise PathSyntaxError("the expression is empty", start)
    expression = _Parser(text[start:end].strip(), tokens, json_path, None).parse_all()
    return expression, end + 1


def _check_length(text: str, offset: int) -> None:
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise PathSyntaxError(f"the expression has {len(text):,} characters, more than the "
                              f"limit of {MAX_EXPRESSION_LENGTH:,}", offset)


def _tokens(text: str, pos: int, json_path: str, *, inside_braces: bool
            ) -> tuple[list[_Token], int]:
    """The tokens from `pos`, up to the end (or, `inside_braces`, up to a `}`)."""
    tokens: list[_Token] = []
    pos = skip_spaces(text, pos)
    while pos < len(text):
        char = text[pos]
        if char == "}" and inside_braces:
            break
        if text.startswith("${", pos):
            reference, end = parse_path(text, skip_spaces(text, pos + 2), json_path,
                                        allow_projection=True)
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
            called = text.startswith("(", skip_spaces(text, end))
            if word in _KEYWORDS:
                tokens.append(_Token("keyword", _KEYWORDS[word], pos))
            elif word in _CONSTANTS:
                tokens.append(_Token("value", _CONSTANTS[word], pos))
            elif called and word in STATUS_FUNCTIONS:
                tokens.append(_Token("status", word, pos))
            elif called and word in FUNCTIONS:
                tokens.append(_Token("call", word, pos))
            else:
                reference, end = parse_path(text, pos, json_path, allow_projection=True)
                tokens.append(_Token("path", reference, pos))
        else:
            operator = next((op for op in _OPERATORS if text.startswith(op, pos)), None)
            if operator is None:
                hint = "; use '=='" if char == "=" else ""
                raise PathSyntaxError(f"unexpected character {char!r}{hint}", pos)
            kind = "keyword" if operator in _KEYWORDS else "op"
            tokens.append(_Token(kind, _KEYWORDS.get(operator, operator), pos))
            end = pos + len(operator)
        pos = skip_spaces(text, end)
    tokens.append(_Token("end", None, pos))
    return tokens, pos


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

    def __init__(self, text: str, tokens: list[_Token], json_path: str,
                 count: Callable[[], None] | None) -> None:
        self.text = text
        self.tokens = tokens
        self.json_path = json_path
        self.count = count
        self.pos = 0
        self.depth = 0
        self.references: list[Reference] = []
        self.uses_status_function = False

    def parse_all(self) -> Expression:
        node = self.expression()
        token = self.tokens[self.pos]
        if token.kind != "end":
            raise PathSyntaxError(f"expected 'and', 'or' or the end, found {_describe(token)}",
                                  token.position)
        return Expression(self.text, self.json_path, node, tuple(self.references),
                          self.uses_status_function)

    def node(self, evaluate: Evaluator, types: Callable[[TypeLookup], Types]) -> _Node:
        count = self.count
        if count is None:
            return _Node(evaluate, types)

        def counted(scope: Scope) -> Any:
            count()
            return evaluate(scope)
        return _Node(counted, types)

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

    def expression(self) -> _Node:
        operands = [self.conjunction()]
        while self.at("keyword", "or"):
            self.take()
            operands.append(self.conjunction())
        if len(operands) == 1:
            return operands[0]
        return self.node(_first_truthy(tuple(o.evaluate for o in operands)),
                         _union(operands))

    def conjunction(self) -> _Node:
        operands = [self.negation()]
        while self.at("keyword", "and"):
            self.take()
            operands.append(self.negation())
        if len(operands) == 1:
            return operands[0]
        return self.node(_first_falsy(tuple(o.evaluate for o in operands)), _union(operands))

    def negation(self) -> _Node:
        if not self.at("keyword", "not"):
            return self.comparison()
        self.nested(self.take().position)
        operand = self.negation().evaluate
        self.depth -= 1
        return self.node(lambda scope: not operand(scope), lambda lookup: _BOOLEAN)

    def comparison(self) -> _Node:
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
        read_left, read_right = left.evaluate, right.evaluate
        return self.node(lambda scope: test(read_left(scope), read_right(scope)),
                         lambda lookup: _BOOLEAN)

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

    def operand(self) -> _Node:
        token = self.take()
        if token.kind == "value":
            value = token.value
            kind = frozenset({json_type(value)})
            return self.node(lambda scope: value, lambda lookup: kind)
        if token.kind == "path":
            reference: Reference = token.value
            self.references.append(reference)
            return self.node(resolver(reference, strict=False),
                             lambda lookup: lookup(reference))
        if token.kind == "status":
            self.uses_status_function = True
            self.expect("(", f"after {token.value}")
            self.expect(")", f"({token.value}() takes no arguments)")
            return self.node(STATUS_FUNCTIONS[token.value], lambda lookup: _BOOLEAN)
        if token.kind == "call":
            return self.call(token)
        if token.kind == "op" and token.value == "(":
            self.nested(token.position)
            inner = self.expression()
            self.expect(")", "to close '('")
            self.depth -= 1
            return inner
        if token.kind == "op" and token.value == "[":
            self.nested(token.position)
            items = self.items("]", "to close the list")
            self.depth -= 1
            readers = tuple(item.evaluate for item in items)
            return self.node(lambda scope: [read(scope) for read in readers],
                             lambda lookup: frozenset({"array"}))
        raise PathSyntaxError(f"expected a value, a path or '(', found {_describe(token)}",
                              token.position)

    def call(self, token: _Token) -> _Node:
        name = str(token.value)
        function = FUNCTIONS[name]
        self.nested(token.position)
        self.expect("(", f"after {name}")
        arguments = self.items(")", f"to close {name}(")
        self.depth -= 1
        if len(arguments) < function.least or (function.most is not None
                                               and len(arguments) > function.most):
            wanted = (f"{function.least}" if function.least == function.most else
                      f"at least {function.least}" if function.most is None else
                      f"{function.least} to {function.most}")
            raise PathSyntaxError(f"{name}() takes {wanted} argument(s), not {len(arguments)}",
                                  token.position)
        readers = tuple(argument.evaluate for argument in arguments)
        body = function.call
        types = _union(arguments) if function.types is None and name == "coalesce" else (
            lambda lookup: function.types)
        return self.node(lambda scope: body([read(scope) for read in readers]), types)

    def items(self, closing: str, context: str) -> list[_Node]:
        items: list[_Node] = []
        while not self.at("op", closing):
            items.append(self.expression())
            if not self.at("op", ","):
                break
            self.take()
        self.expect(closing, context)
        return items


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end"
    if token.kind == "path":
        return repr(excerpt(token.value.text, 30))
    if token.kind == "value":
        return excerpt(repr(token.value), 30)
    return repr(token.value)


def _union(nodes: Sequence[_Node]) -> Callable[[TypeLookup], Types]:
    def types(lookup: TypeLookup) -> Types:
        found: set[str] = set()
        for node in nodes:
            kinds = node.types(lookup)
            if kinds is None:
                return None
            found |= kinds
        return frozenset(found)
    return types


def _first_truthy(operands: tuple[Evaluator, ...]) -> Evaluator:
    def evaluate(scope: Scope) -> Any:
        value = None
        for operand in operands:
            value = operand(scope)
            if value:
                return value
        return value
    return evaluate


def _first_falsy(operands: tuple[Evaluator, ...]) -> Evaluator:
    def evaluate(scope: Scope) -> Any:
        value = None
        for operand in operands:
            value = operand(scope)
            if not value:
                return value
        return value
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
