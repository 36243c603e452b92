"""What a code plan calls, as far as reading it (without running it) can tell.

`code_plan_graph` lists every call of a tool or a plan built-in in the source, in the
order the lines are written, for `agentflow graph` of a `.py` plan; `plan_references` the
registered plans it runs by a literal name (`run_plan("ship", ...)`); `certain_tool_calls`
the tool calls every run that completes makes. Loops, branches and
`parallel` decide at run time which calls happen and how often; the outline shows each
call site once, with its line, and links them in source order.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from itertools import pairwise

from agentflow.plan.code import CodePlan
from agentflow.plan.diagram import Node, PlanGraph
from agentflow.sandbox.checks import bound_names
from agentflow.sandbox.compiler import compile_code_plan
from agentflow.sandbox.policy import CATCHABLE_EXCEPTIONS, PLAN_BUILTINS, SAFE_BUILTINS
from agentflow.tools import Tool

_SHAPES = {"approve": "approval", "sleep": "wait", "wait_for_event": "wait", "now": "wait",
           "run_plan": "plan"}


def code_plan_graph(plan: CodePlan, tools: Mapping[str, Tool] | None = None) -> PlanGraph:
    """One node per call site of a tool or plan built-in, in source order.

    With `tools`, the plan is validated against them first (`PlanValidationError`) and only
    their names count as tools; without, every called name that is neither a built-in nor
    a function of the plan is taken for a tool.
    """
    if tools is not None:
        compile_code_plan(plan, tools)
    try:
        tree = ast.parse(plan.source)
    except SyntaxError:
        compile_code_plan(plan, {})  # raises the validation error naming the line
        raise
    defined = {node.name for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    sites = sorted((node.lineno, node.col_offset, node.func.id, _label(node))
                   for node in ast.walk(tree)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                   and _is_call_of_interest(node.func.id, tools, defined))
    nodes = tuple(Node(f"L{line}_{column}_{name}", _SHAPES.get(name, "tool"),
                       (label, f"line {line}"), False) for line, column, name, label in sites)
    edges = tuple((first.id, second.id) for first, second in pairwise(nodes))
    return PlanGraph(plan.name, nodes, edges)


def _label(call: ast.Call) -> str:
    """What a call site is drawn as: its name; a `run_plan` with a literal name, the plan."""
    assert isinstance(call.func, ast.Name)
    first = call.args[0] if call.args else None
    if call.func.id == "run_plan" and isinstance(first, ast.Constant) \
            and isinstance(first.value, str):
        return f"run_plan: {first.value}"
    return call.func.id


def plan_references(plan: CodePlan) -> list[str]:
    """The plan references of the `run_plan` calls whose first argument is a string literal,
    in source order (a name computed at run time is checked only when the call is made);
    none for source that does not parse (validation reports it)."""
    try:
        tree = ast.parse(plan.source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    calls = sorted((node.lineno, node.col_offset, node.args[0].value)
                   for node in ast.walk(tree)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                   and node.func.id == "run_plan" and node.args
                   and isinstance(node.args[0], ast.Constant)
                   and isinstance(node.args[0].value, str))
    return [reference for _, _, reference in calls]


_SIMPLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Pass)
_MAYBE = (ast.Lambda, ast.IfExp, ast.BoolOp, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)


def certain_tool_calls(plan: CodePlan) -> int:
    """How many tool calls every run of a valid plan that completes makes for sure: those
    of the simple statements at its top level up to the first one that is not simple (a
    branch, loop, `try` or definition may return or skip) or that returns, outside lambdas,
    conditional expressions, `and`/`or` and comprehensions. Each is a step of its own. A
    called name that is no built-in and that the plan never binds is a tool (validation
    let nothing else through)."""
    try:
        tree = ast.parse(plan.source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0
    not_tools = PLAN_BUILTINS | SAFE_BUILTINS | CATCHABLE_EXCEPTIONS | bound_names(tree)
    count = 0
    for statement in tree.body:
        if not isinstance(statement, _SIMPLE):
            break
        count += _certain_calls(statement, not_tools)
        if isinstance(statement, ast.Return):
            break
    return count


def _certain_calls(node: ast.AST, not_tools: frozenset[str] | set[str]) -> int:
    if isinstance(node, _MAYBE):
        return 0
    here = int(isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id not in not_tools)
    return here + sum(_certain_calls(child, not_tools) for child in ast.iter_child_nodes(node))


def _is_call_of_interest(name: str, tools: Mapping[str, Tool] | None, defined: set[str]
                         ) -> bool:
    if name == "parallel":
        return False  # the calls inside its thunks are drawn, not parallel itself
    if name in PLAN_BUILTINS:
        return True
    if tools is not None:
        return name in tools and name not in defined
    return name not in defined and name not in SAFE_BUILTINS and name not in CATCHABLE_EXCEPTIONS
