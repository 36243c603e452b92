"""Compiling a code plan: validated against the tools, then transformed for the sandbox.

`compile_code_plan` checks a `CodePlan` against the registered tools and returns a
`CompiledCodePlan` ready for `run_code_plan`. Validation lists every problem at once, each at
`$.source:LINE:COL`, and nothing runs unless there are none. Compiling is pure: no I/O, no
plan code executed.
"""

from __future__ import annotations

import ast
import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.code import CodePlan
from agentflow.sandbox.checks import check_plan_tree, source_issue, split_lines, strip_annotations
from agentflow.sandbox.policy import CATCHABLE_EXCEPTIONS, MAIN, PLAN_BUILTINS, SAFE_BUILTINS
from agentflow.sandbox.transform import PlanTransformer, wrap_in_main
from agentflow.tools import Tool


@dataclass(frozen=True)
class CompiledCodePlan:
    """A validated code plan, ready to run.

    `plan_hash` is the bare sha256 hex digest of the source text (UTF-8): a run pins it, so a
    resume can refuse a changed plan. `code` defines the plan's main function when executed;
    only `run_code_plan` should execute it, in the namespace the sandbox builds.
    """

    name: str
    source: str
    plan_hash: str
    code: types.CodeType


def compile_code_plan(plan: CodePlan, tools: Mapping[str, Tool]) -> CompiledCodePlan:
    """Validate `plan` against `tools` and compile it; PlanValidationError lists every problem.

    Checked before anything runs: syntax; imports, dunder names and attributes, `global` and
    `nonlocal`, classes, `with`, async code; `except` clauses that could catch the executor's
    suspension; names that are neither tools, plan built-ins, safe built-ins nor variables of
    the plan; tool calls with positional arguments, unknown keyword arguments or missing
    required ones; then RestrictedPython's own policy.
    """
    lines = split_lines(plan.source)
    what = f"code plan {plan.name!r}"
    try:
        tree = ast.parse(plan.source, filename=f"<plan {plan.name}>")
    except SyntaxError as error:
        issue = _syntax_issue(lines, error)
        raise PlanValidationError([issue], what=what) from None
    except (RecursionError, MemoryError):
        raise PlanValidationError([_nesting_issue()], what=what) from None
    try:
        issues = _tool_name_issues(tools) + _check_and_transform(tree, plan.source, lines,
                                                                 tools)
        if issues:
            raise PlanValidationError(sorted(issues, key=_position), what=what)
        code = _plain_qualnames(compile(tree, f"<plan {plan.name}>", "exec"))
    except RecursionError:
        raise PlanValidationError([_nesting_issue()], what=what) from None
    return CompiledCodePlan(name=plan.name, source=plan.source,
                            plan_hash=hashlib.sha256(plan.source.encode("utf-8")).hexdigest(),
                            code=code)


def _check_and_transform(tree: ast.Module, source: str, lines: list[str],
                         tools: Mapping[str, Tool]) -> list[ValidationIssue]:
    """Our checks, the compiler's own (e.g. `break` outside a loop), then RestrictedPython's.

    A finding of a later pass is kept only on a line the earlier passes left clean, so one
    mistake is reported once, in our words. Leaves `tree` transformed into the code to compile.
    """
    strip_annotations(tree)
    issues = check_plan_tree(tree, lines, tools)
    flagged = {_position(issue)[0] for issue in issues}
    trial = ast.parse(source)  # parsing again costs a fraction of a deep copy of the tree
    strip_annotations(trial)
    trial.body = [wrap_in_main(trial.body)]
    try:
        compile(ast.fix_missing_locations(trial), "<plan>", "exec")
    except SyntaxError as error:
        if (error.lineno or 1) not in flagged:
            issues.append(_syntax_issue(lines, error))
            flagged.add(error.lineno or 1)
    transformer = PlanTransformer()
    transformer.visit(tree)
    for line, column, message in transformer.problems:
        if line not in flagged:
            issues.append(source_issue(lines, line, column, message, "forbidden"))
    return issues


def _plain_qualnames(code: types.CodeType) -> types.CodeType:
    """`code` with its functions named as the plan wrote them: an error plan code sees (a
    call with a missing argument) names `f` or `<lambda>`, not the wrapper `MAIN` around
    the module body."""
    constants = tuple(_plain_qualnames(constant) if isinstance(constant, types.CodeType)
                      else constant for constant in code.co_consts)
    return code.replace(co_consts=constants,
                        co_qualname=code.co_qualname.removeprefix(f"{MAIN}.<locals>."))


def _tool_name_issues(tools: Mapping[str, Tool]) -> list[ValidationIssue]:
    """Tools whose names would hide a built-in a plan relies on."""
    reserved = PLAN_BUILTINS | SAFE_BUILTINS | CATCHABLE_EXCEPTIONS
    return [ValidationIssue(path=f"$.tools.{name}", code="forbidden",
                            message=f"tool name {name!r} hides the plan built-in of that name; "
                            "rename the tool")
            for name in tools if name in reserved]


def _syntax_issue(lines: list[str], error: SyntaxError) -> ValidationIssue:
    line = error.lineno or 1
    column = (error.offset or 1) - 1
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    byte_column = len(text[:column].encode("utf-8"))
    return source_issue(lines, line, byte_column, f"syntax error: {error.msg}", "syntax")


def _nesting_issue() -> ValidationIssue:
    return ValidationIssue(path="$.source", code="syntax",
                           message="the plan is nested too deeply to be checked")


def _position(issue: ValidationIssue) -> tuple[int, int]:
    """(line, column) of an issue at `$.source:LINE:COL`; other issues sort first."""
    parts = issue.path.split(":")
    if len(parts) != 3:
        return (0, 0)
    return (int(parts[1]), int(parts[2]))
