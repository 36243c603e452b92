"""Turning what a user passes as a plan into plan data: the only place plans are read
from files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agentflow.errors import CorruptRow, PlanValidationError, ValidationIssue
from agentflow.plan import CompiledPlan, Plan, compile_plan
from agentflow.plan.code import CodePlan, code_plan
from agentflow.sandbox import CompiledCodePlan, compile_code_plan
from agentflow.store import StoredPlan
from agentflow.tools import Tool

Compiled = CompiledPlan | CompiledCodePlan


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


def compile_any(plan: Any, tools: dict[str, Tool]) -> Compiled:
    """Validate plan data of either kind against the tools (`PlanValidationError`)."""
    if isinstance(plan, CodePlan):
        return compile_code_plan(plan, tools)
    return compile_plan(plan, tools)


def stored_plan(tenant: str, compiled: Compiled, now: float) -> StoredPlan:
    """The plan as the store pins it: canonical JSON, or a code plan's name and source."""
    if isinstance(compiled, CompiledCodePlan):
        body = json.dumps({"name": compiled.name, "source": compiled.source})
        return StoredPlan(tenant, compiled.plan_hash, "code", body, now)
    return StoredPlan(tenant, compiled.plan_hash, "graph", compiled.canonical_json, now)


def plan_name_of(compiled: Compiled) -> str:
    """The name a plan gives itself (a graph's `name`, a code plan's)."""
    return compiled.name if isinstance(compiled, CompiledCodePlan) else compiled.plan.name


def plan_data(stored: StoredPlan) -> Any:
    """The plan data a stored plan was made from: a dict, or a `CodePlan`; `CorruptRow` if
    the row cannot be read."""
    try:
        body = json.loads(stored.body)
        return code_plan(body["source"], body.get("name")) if stored.kind == "code" else body
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptRow(f"the plans row {stored.plan_hash[:12]} of tenant "
                         f"{stored.tenant_id!r} cannot be read ({error!r}): it was changed "
                         "outside agentflow or damaged") from None


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return not stripped.startswith(("{", "[")) and stripped.endswith((".json", ".py"))
