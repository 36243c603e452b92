"""Static checks of a code plan: every problem at once, each with its line and column.

They run on the plan's syntax tree before RestrictedPython's transformer (which stays as a
second line of defence) and say which construct is refused, why, and what to use instead, so
an LLM can repair its own plan. Security does not rest on them alone: the sandbox refuses the
same things at run time.
"""

from __future__ import annotations

import ast
import difflib
import re
import string
from collections.abc import Iterator, Mapping
from typing import Any

from agentflow.errors import ValidationIssue
from agentflow.plan import SUBPLAN_TOOL_PREFIX
from agentflow.sandbox.policy import (
    CATCHABLE_EXCEPTIONS,
    FORBIDDEN_ATTRIBUTES,
    PLAN_BUILTINS,
    SAFE_BUILTINS,
    UNAVAILABLE_BUILTINS,
)
from agentflow.tools import Tool

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SIGNAL_HINT = "it would catch the executor's own signals; catch Exception or a specific error"


def source_issue(source_lines: list[str], line: int, column: int, message: str,
                 code: str) -> ValidationIssue:
    """An issue at `line` (1-based) and UTF-8 byte offset `column` (0-based) of the source.

    The path reads `$.source:LINE:COL` with a 1-based column counted in characters, as editors
    show it.
    """
    text = source_lines[line - 1] if 0 < line <= len(source_lines) else ""
    characters = len(text.encode("utf-8")[:column].decode("utf-8", errors="ignore"))
    return ValidationIssue(path=f"$.source:{line}:{characters + 1}", message=message, code=code)


def split_lines(source: str) -> list[str]:
    """Source lines numbered the way the Python parser numbers them."""
    return _LINE_BREAK.split(source)


class _AnnotationStripper(ast.NodeTransformer):
    """Plans never evaluate annotations: drop them (RestrictedPython refuses `x: int = 1`)."""

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        self.generic_visit(node)
        if node.value is None:
            replacement: ast.stmt = ast.Pass()
        else:
            replacement = ast.Assign(targets=[node.target], value=node.value)
        return ast.copy_location(replacement, node)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        node.returns = None
        return node


def strip_annotations(tree: ast.Module) -> None:
    """Remove every annotation from `tree` in place."""
    _AnnotationStripper().visit(tree)


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the plan binds anywhere (scopes are not told apart: hints, and telling
    tool calls from calls of the plan's own functions, need no more)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _format_fields(text: str, depth: int = 0) -> Iterator[str]:
    """The field names of a str.format template, nested specs included."""
    for _, field, spec, _ in string.Formatter().parse(text):
        if field is not None:
            yield field
        if spec and depth < 2:
            yield from _format_fields(spec, depth + 1)


def _escaping_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """`return`, `break` and `continue` leaving a `finally:` block (they drop its exception)."""
    stack: list[tuple[ast.AST, bool]] = [(stmt, False) for stmt in body]
    while stack:
        node, in_loop = stack.pop()
        if isinstance(node, ast.Return) or (
                isinstance(node, (ast.Break, ast.Continue)) and not in_loop):
            yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        nested_loop = in_loop or isinstance(node, (ast.For, ast.While, ast.AsyncFor))
        stack.extend((child, nested_loop) for child in ast.iter_child_nodes(node))


class _Checker(ast.NodeVisitor):
    """Collects an issue for every construct a plan may not use."""

    def __init__(self, source_lines: list[str], tools: Mapping[str, Tool]) -> None:
        self.issues: list[ValidationIssue] = []
        self._lines = source_lines
        self._tools = tools
        self._bound: set[str] = set()
        self._scopes: list[str] = []

    def check(self, tree: ast.Module) -> list[ValidationIssue]:
        self._bound = bound_names(tree)
        self.visit(tree)
        return self.issues

    def report(self, node: ast.AST, message: str, code: str = "forbidden") -> None:
        line = getattr(node, "lineno", 1)
        column = getattr(node, "col_offset", 0)
        self.issues.append(source_issue(self._lines, line, column, message, code))

    # Statements that have no place in a plan.

    def _refuse(self, node: ast.AST, message: str) -> None:
        self.report(node, message)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self._refuse(node, "import statements are not allowed: plans reach the outside world "
                     "only through tools")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.visit_Import(node)

    def visit_Global(self, node: ast.Global) -> None:
        self._refuse(node, "'global' statements are not allowed in plans")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._refuse(node, "'nonlocal' statements are not allowed in plans")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._refuse(node, "class definitions are not supported in plans; use dicts")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._refuse(node, "async code is not supported in plans; use parallel() for concurrency")

    def visit_Await(self, node: ast.Await) -> None:
        self._refuse(node, "async code is not supported in plans; use parallel() for concurrency")

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self._refuse(node, "async code is not supported in plans; use parallel() for concurrency")

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        self._refuse(node, "async code is not supported in plans; use parallel() for concurrency")

    def visit_With(self, node: ast.With) -> None:
        self._refuse(node, "'with' statements are not supported in plans")

    def visit_Match(self, node: ast.Match) -> None:
        self._refuse(node, "match statements are not supported in plans; use if/elif")

    def visit_TryStar(self, node: ast.AST) -> None:
        self._refuse(node, "'except*' is not supported in plans")

    # Exceptions: nothing may catch the executor's suspension.

    def visit_Try(self, node: ast.Try) -> None:
        for escape in _escaping_statements(node.finalbody):
            keyword = type(escape).__name__.lower()
            self.report(escape, f"'{keyword}' inside 'finally' is not allowed: it would discard "
                        "the exception in flight, including the executor's suspension")
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.report(node, f"bare 'except:' is not allowed: {_SIGNAL_HINT}")
        else:
            names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for name in names:
                if not isinstance(name, ast.Name):
                    self.report(name, "an except clause must name exception classes, such as "
                                "'except (ValueError, KeyError):'")
                elif name.id not in CATCHABLE_EXCEPTIONS:
                    allowed = ", ".join(sorted(CATCHABLE_EXCEPTIONS))
                    self.report(name, f"catching {name.id!r} is not allowed; catch one of: "
                                f"{allowed}")
        if node.name is not None:
            self._check_binding(node, node.name)
        for statement in node.body:
            self.visit(statement)

    # Functions.

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_binding(node, node.name)
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.visit(node.args)
        self._scopes.append("function")
        for statement in node.body:
            self.visit(statement)
        self._scopes.pop()

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)
        self._scopes.append("lambda")
        self.visit(node.body)
        self._scopes.pop()

    def visit_arg(self, node: ast.arg) -> None:
        self._check_binding(node, node.arg)

    def visit_Yield(self, node: ast.Yield | ast.YieldFrom) -> None:
        if not self._scopes:
            self.report(node, "'yield' outside a function")
        elif self._scopes[-1] == "lambda":
            self.report(node, "'yield' inside a lambda is not supported; use a def")
        self.generic_visit(node)

    def visit_YieldFrom(self, node: ast.YieldFrom) -> None:
        self.visit_Yield(node)

    # Names and attributes.

    def _check_binding(self, node: ast.AST, name: str) -> None:
        if name.startswith("_") and name != "_":
            self.report(node, f"name {name!r} is not allowed: names starting with '_' are "
                        "reserved")
        elif name in self._tools:
            self.report(node, f"cannot assign to {name!r}: it is a tool")
        elif name in PLAN_BUILTINS:
            self.report(node, f"cannot assign to {name!r}: it is a plan built-in")
        elif name in CATCHABLE_EXCEPTIONS:
            self.report(node, f"cannot assign to {name!r}: it is an exception class")

    def _known(self, name: str) -> bool:
        return (name in self._bound or name in self._tools or name in PLAN_BUILTINS
                or name in SAFE_BUILTINS or name in CATCHABLE_EXCEPTIONS)

    def _check_load(self, node: ast.Name, called: bool) -> None:
        name = node.id
        if name.startswith("_") and name != "_":
            self.report(node, f"name {name!r} is not allowed: names starting with '_' are "
                        "reserved")
        elif self._known(name):
            return
        elif name in UNAVAILABLE_BUILTINS:
            self.report(node, f"{name!r} is not available: {UNAVAILABLE_BUILTINS[name]}")
        else:
            candidates = [*(name for name in self._tools if name.isidentifier()),
                          *PLAN_BUILTINS, *SAFE_BUILTINS, *self._bound]
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            what = "tool or function" if called else "name"
            self.report(node, f"unknown {what} {name!r}: not a registered tool, plan built-in "
                        f"or variable of this plan{hint}", code="unknown_name")

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._check_load(node, called=False)
        else:
            self._check_binding(node, node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.report(node, f"attribute {node.attr!r} is not allowed: names starting with '_' "
                        "are private")
        elif node.attr in FORBIDDEN_ATTRIBUTES:
            self.report(node, f"attribute {node.attr!r} is not allowed: it exposes interpreter "
                        "internals")
        if not isinstance(node.ctx, ast.Load):
            self.report(node, "assigning or deleting attributes is not allowed; use a dict")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if (not isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                and node.value.id == "inputs"):
            self.report(node, "inputs are read-only; copy them first: data = dict(inputs)")
        self.generic_visit(node)

    # Calls.

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if isinstance(function, ast.Name):
            self._check_load(function, called=True)
            if function.id in self._tools and function.id not in self._bound:
                self._check_tool_call(node, self._tools[function.id])
            elif function.id == "run_plan":
                self._check_plan_call(node)
        else:
            if (isinstance(function, ast.Attribute) and function.attr in ("format", "format_map")
                    and isinstance(function.value, ast.Constant)
                    and isinstance(function.value.value, str)):
                self._check_format_template(node, function.value.value)
            self.visit(function)
        for argument in [*node.args, *node.keywords]:
            self.visit(argument)

    def _check_tool_call(self, node: ast.Call, tool: Tool) -> None:
        if node.args:
            self.report(node.args[0], f"tool {tool.name!r} takes keyword arguments only, "
                        f"e.g. {tool.name}(name=value)", code="arguments")
        self._check_keywords(node, tool.input_schema, f"tool {tool.name!r}", "argument", 0)

    def _check_plan_call(self, node: ast.Call) -> None:
        """`run_plan("name", **inputs)`: a literal name must be a registered plan (the tool
        "plan:NAME" validation is given), and the inputs fit that plan's inputs schema."""
        first = node.args[0] if node.args else None
        if first is None or isinstance(first, ast.Starred):
            self.report(node, "run_plan needs the plan's name first: "
                        "run_plan(\"name\", input=value, ...)", code="arguments")
            return
        if len(node.args) > 1:
            self.report(node.args[1], "run_plan takes the plan's inputs as keyword arguments "
                        "only: run_plan(\"name\", input=value, ...)", code="arguments")
        if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
            return  # a name computed at run time: checked when the call is made
        child = self._tools.get(f"{SUBPLAN_TOOL_PREFIX}{first.value}")
        if child is None:
            self.report(first, f"unknown plan {first.value!r}: run_plan runs a plan "
                        "registered for the tenant; register it with tenant.plans.put or "
                        f"`agentflow plans put {first.value} FILE`", code="unknown_plan")
        else:
            self._check_keywords(node, child.input_schema, f"plan {first.value!r}", "input", 1)

    def _check_keywords(self, node: ast.Call, schema: Mapping[str, Any], what: str,
                        noun: str, positional: int) -> None:
        """The keyword arguments of a call against the JSON Schema of what it calls (the
        required ones only when it has no more than `positional` positional arguments)."""
        if any(keyword.arg is None for keyword in node.keywords):
            return  # `**kwargs`: the names are only known at run time
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is False:
            expected = ", ".join(sorted(properties)) or f"no {noun}s"
            for keyword in node.keywords:
                if keyword.arg not in properties:
                    self.report(keyword, f"{what} has no {noun} {keyword.arg!r} "
                                f"(expected: {expected})", code="arguments")
        if len(node.args) > positional:
            return
        passed = {keyword.arg for keyword in node.keywords}
        for required in schema.get("required") or ():
            if required not in passed:
                self.report(node, f"{what} is missing the required {noun} {required!r}",
                            code="arguments")

    def _check_format_template(self, node: ast.Call, template: str) -> None:
        try:
            fields = list(_format_fields(template))
        except ValueError as error:
            self.report(node, f"invalid format string: {error}", code="invalid")
            return
        for field in fields:
            if "." in field or "[" in field:
                self.report(node, f"format field {{{field}}} reads an attribute or item, which "
                            "is not allowed; pass the value itself")


def check_plan_tree(tree: ast.Module, source_lines: list[str],
                    tools: Mapping[str, Tool]) -> list[ValidationIssue]:
    """Every problem the static checks find in `tree` (annotations already stripped)."""
    return _Checker(source_lines, tools).check(tree)
