"""Turning what a user passes as a plan into plan data: the only place plans are read
from files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan import Plan
from agentflow.plan.code import CodePlan, code_plan


def load_plan(plan: Any) -> Any:
    """A dict, a JSON string, a path to a .json or .py file, a `Plan` or a `CodePlan` ->
    plan data (a `CodePlan` for restricted Python).

    Anything else is passed through for `compile_plan` to reject with a clear issue.
    """
    if isinstance(plan, Plan | dict | CodePlan):
        return plan
    if isinstance(plan, os.PathLike) or (isinstance(plan, str) and _looks_like_path(plan)):
        path = Path(plan)
        try:
            is_file = path.is_file()
        except OSError as error:
            raise PlanValidationError([ValidationIssue(
                "$", f"cannot read plan file {str(path)[:200]!r}: {error.strerror}",
                code="file")]) from None
        if not is_file:
            raise PlanValidationError([ValidationIssue("$", f"no plan file at {str(path)!r}",
                                                       code="file")])
        if path.suffix == ".py":
            return code_plan(path)
        text = path.read_text(encoding="utf-8")
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanValidationError([ValidationIssue(
                "$", f"{path}: not valid JSON: {error.msg} at line {error.lineno} column "
                f"{error.colno}", code="json")]) from None
    return plan


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return not stripped.startswith(("{", "[")) and stripped.endswith((".json", ".py"))
