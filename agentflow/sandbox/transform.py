"""The compiler pass: RestrictedPython's guards plus the hooks our limits need.

RestrictedPython rewrites attribute access, subscripts, iteration and in-place operators into
calls of guard functions (`_getattr_`, `_write_`, ...) and refuses names starting with `_`.
This subclass keeps all of that and, after RestrictedPython has checked a node, injects calls
of our own hooks (names in `agentflow.sandbox.policy`, all starting with `_af_`, so plan code
can never spell or shadow them):

- a tick at the top of every loop body and in every comprehension iteration (op budget, time);
- every `def` and `lambda` wrapped so that each call is counted and its depth tracked;
- generator expressions and generator functions wrapped so that each item is counted;
- `*`, `+`, `**`, `<<` and `%` routed through helpers that check the result size first;
- f-strings assembled by a helper that checks each field and the total size;
- `a[k] += v` supported through a guarded helper (RestrictedPython alone refuses it);
- every dict key, set element and `in` operand checked before CPython hashes it;
- every `except` and `finally` block starts by checking the exception it handles, so plan
  code cannot catch a MemoryError (or any signal of the executor) and go on;
- the module body wrapped into a function, so a top-level `return` sets the outputs.
"""

from __future__ import annotations

import ast
from typing import cast

from RestrictedPython.transformer import (
    IOPERATOR_TO_STR,
    RestrictingNodeTransformer,
    copy_locations,
)

from agentflow.sandbox.policy import (
    ADD,
    AUGMENT_ITEM,
    CAUGHT,
    CONCAT,
    DISPLAY,
    FORMAT_VALUE,
    FUNCTION,
    GENERATOR_FUNCTION,
    ITERATE,
    KEY,
    KEYS,
    LAZY,
    MAIN,
    MODULO,
    MULTIPLY,
    POWER,
    SET_OPERATION,
    SHIFT,
    TICK,
)

_BINARY_HOOKS: dict[type[ast.operator], str] = {
    ast.Mult: MULTIPLY, ast.Add: ADD, ast.Pow: POWER, ast.LShift: SHIFT, ast.Mod: MODULO,
}
_SET_OPERATORS: dict[type[ast.operator], str] = {
    ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.Sub: "-",
}


def _hook(name: str, arguments: list[ast.expr], where: ast.AST) -> ast.Call:
    call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=arguments, keywords=[])
    copy_locations(call, where)  # type: ignore[arg-type]
    return call


def _tick_statement(where: ast.stmt) -> ast.Expr:
    statement = ast.Expr(value=_hook(TICK, [], where))
    copy_locations(statement, where)
    return statement


def _caught_statement(where: ast.AST) -> ast.Expr:
    statement = ast.Expr(value=_hook(CAUGHT, [], where))
    copy_locations(statement, where)  # type: ignore[arg-type]
    return statement


def wrap_in_main(body: list[ast.stmt]) -> ast.FunctionDef:
    """`def _af_main_(): <body>`, so that a top-level `return` is legal and sets the outputs."""
    main = cast(ast.FunctionDef, ast.parse(f"def {MAIN}():\n    pass").body[0])
    main.body = body or [ast.Pass()]
    return main


def _is_generator(function: ast.FunctionDef) -> bool:
    """Whether `yield` occurs in the function's own scope (not in nested functions)."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


class PlanTransformer(RestrictingNodeTransformer):
    """RestrictedPython's policy with our hooks; `problems` lists what it refused."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[tuple[int, int, str]] = []

    def error(self, node: ast.AST, info: str) -> None:
        """Keep RestrictedPython's findings with their position (it only records the line)."""
        self.problems.append((getattr(node, "lineno", 1), getattr(node, "col_offset", 0), info))

    def visit_Module(self, node: ast.Module) -> ast.Module:
        module = cast(ast.Module, super().visit_Module(node))
        module.body = [wrap_in_main(module.body)]
        return ast.fix_missing_locations(module)

    def visit_For(self, node: ast.For) -> ast.For:
        loop = cast(ast.For, super().visit_For(node))
        loop.body.insert(0, _tick_statement(loop))
        return loop

    def visit_While(self, node: ast.While) -> ast.While:
        loop = cast(ast.While, super().visit_While(node))
        loop.body.insert(0, _tick_statement(loop))
        return loop

    def visit_comprehension(self, node: ast.comprehension) -> ast.comprehension:
        clause = cast(ast.comprehension, super().visit_comprehension(node))
        clause.ifs.insert(0, _hook(TICK, [], clause.target))
        return clause

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        wrapper = GENERATOR_FUNCTION if _is_generator(node) else FUNCTION
        function = cast(ast.FunctionDef, super().visit_FunctionDef(node))
        decorator = ast.Name(id=wrapper, ctx=ast.Load())
        copy_locations(decorator, function)
        function.decorator_list.append(decorator)  # innermost: applied before the plan's own
        return function

    def visit_Try(self, node: ast.Try) -> ast.Try:
        statement = cast(ast.Try, super().visit_Try(node))
        for handler in statement.handlers:
            handler.body.insert(0, _caught_statement(handler))
        if statement.finalbody:
            statement.finalbody.insert(0, _caught_statement(statement.finalbody[0]))
        return statement

    def visit_Lambda(self, node: ast.Lambda) -> ast.Call:
        return _hook(FUNCTION, [cast(ast.Lambda, super().visit_Lambda(node))], node)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.Call:
        return _hook(LAZY, [cast(ast.GeneratorExp, super().visit_GeneratorExp(node))], node)

    def visit_Starred(self, node: ast.Starred) -> ast.Starred:
        starred = cast(ast.Starred, super().visit_Starred(node))
        if isinstance(starred.ctx, ast.Load):
            starred.value = _hook(ITERATE, [starred.value], starred)
        return starred

    def visit_List(self, node: ast.List) -> ast.expr:
        return _display(cast(ast.List, super().visit_List(node)), "list")

    def visit_Tuple(self, node: ast.Tuple) -> ast.expr:
        return _display(cast(ast.Tuple, super().visit_Tuple(node)), "tuple")

    def visit_YieldFrom(self, node: ast.YieldFrom) -> ast.YieldFrom:
        delegation = cast(ast.YieldFrom, super().visit_YieldFrom(node))
        delegation.value = _hook(ITERATE, [delegation.value], delegation)
        return delegation

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        operation = cast(ast.BinOp, super().visit_BinOp(node))
        operands = [operation.left, operation.right]
        hook = _BINARY_HOOKS.get(type(operation.op))
        if hook is not None:
            return _hook(hook, operands, operation)
        symbol = _SET_OPERATORS.get(type(operation.op))
        if symbol is not None:
            return _hook(SET_OPERATION, [ast.Constant(symbol), *operands], operation)
        return operation

    def visit_Dict(self, node: ast.Dict) -> ast.Dict:
        display = cast(ast.Dict, super().visit_Dict(node))
        display.keys = [key if key is None else _hook(KEY, [key], key) for key in display.keys]
        return display

    def visit_DictComp(self, node: ast.DictComp) -> ast.DictComp:
        comprehension = cast(ast.DictComp, super().visit_DictComp(node))
        comprehension.key = _hook(KEY, [comprehension.key], comprehension.key)
        return comprehension

    def visit_Set(self, node: ast.Set) -> ast.Set:
        display = cast(ast.Set, super().visit_Set(node))
        for element in display.elts:
            if isinstance(element, ast.Starred):
                element.value = _hook(KEYS, [element.value], element)
        display.elts = [element if isinstance(element, ast.Starred) else
                        _hook(KEY, [element], element) for element in display.elts]
        return display

    def visit_SetComp(self, node: ast.SetComp) -> ast.SetComp:
        comprehension = cast(ast.SetComp, super().visit_SetComp(node))
        comprehension.elt = _hook(KEY, [comprehension.elt], comprehension.elt)
        return comprehension

    def visit_Compare(self, node: ast.Compare) -> ast.Compare:
        comparison = cast(ast.Compare, super().visit_Compare(node))
        operands = [comparison.left, *comparison.comparators]
        for index, operator in enumerate(comparison.ops):
            if isinstance(operator, (ast.In, ast.NotIn)):
                operands[index] = _hook(KEY, [operands[index]], operands[index])
        comparison.left, comparison.comparators = operands[0], operands[1:]
        return comparison

    def visit_Subscript(self, node: ast.Subscript) -> ast.Subscript | ast.Call:
        subscript = cast(ast.Subscript | ast.Call, super().visit_Subscript(node))
        if isinstance(subscript, ast.Subscript) and not isinstance(subscript.slice, ast.Slice):
            subscript.slice = _hook(KEY, [subscript.slice], subscript.slice)
        return subscript

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.AST] | None:
        target = node.target
        if not isinstance(target, ast.Subscript) or isinstance(target.slice, ast.Slice):
            return super().visit_AugAssign(node)  # type: ignore[return-value]
        container = cast(ast.expr, self.visit(target.value))
        key = cast(ast.expr, self.visit(target.slice))
        value = cast(ast.expr, self.visit(node.value))
        operator = ast.Constant(IOPERATOR_TO_STR[type(node.op)])
        statement = ast.Expr(value=_hook(AUGMENT_ITEM, [operator, container, key, value], node))
        copy_locations(statement, node)
        return statement

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.Call:
        joined = cast(ast.JoinedStr, super().visit_JoinedStr(node))
        pieces: list[ast.expr] = []
        for value in joined.values:
            if isinstance(value, ast.FormattedValue):
                spec = value.format_spec if value.format_spec is not None else ast.Constant(None)
                arguments = [value.value, ast.Constant(value.conversion), spec]
                pieces.append(_hook(FORMAT_VALUE, arguments, value))
            else:
                pieces.append(value)
        return _hook(CONCAT, pieces, joined)


def _display(display: ast.List | ast.Tuple, kind: str) -> ast.expr:
    """A list or tuple display with two or more `*x` parts, built by DISPLAY: each part is
    within the limits, but together they could be many times longer, built in C at once.
    DISPLAY gets the plain elements between the parts as tuples: (before, *a, between, *b,
    after)."""
    starred = [element for element in display.elts if isinstance(element, ast.Starred)]
    if not isinstance(display.ctx, ast.Load) or len(starred) < 2:
        return display
    parts: list[ast.expr] = []
    group: list[ast.expr] = []
    for element in [*display.elts, None]:
        if element is None or isinstance(element, ast.Starred):
            plain = ast.Tuple(group, ast.Load())
            copy_locations(plain, display)
            parts.append(plain)
            group = []
        if isinstance(element, ast.Starred):
            parts.append(element.value)
        elif element is not None:
            group.append(element)
    kind_name = ast.Constant(kind)
    copy_locations(kind_name, display)
    return _hook(DISPLAY, [kind_name, *parts], display)
