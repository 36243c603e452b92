"""Turning what a user passes as a plan into plan data: the only place plans are read
from files."""

from __future__ import annotations

import difflib
import itertools
import json
import os
from pathlib import Path
from typing import Any

from agentflow.errors import (
    CorruptRow,
    LimitExceeded,
    NotJsonData,
    PlanValidationError,
    ValidationIssue,
)
from agentflow.executors.limits import Limits, value_size
from agentflow.plan import CompiledPlan, Plan, compile_plan
from agentflow.plan.code import CodePlan, code_plan
from agentflow.sandbox import CompiledCodePlan, compile_code_plan
from agentflow.store import StoredPlan
from agentflow.tools import Tool, to_json_value

Compiled = CompiledPlan | CompiledCodePlan


def load_plan(plan: Any) -> Any:
    """A dict, a JSON string, a path to a .json or .py file, a `Plan` or a `CodePlan` ->
    plan data (a `CodePlan` for restricted Python), within its size limit (see
    `check_plan_size`) before anything reads it further.

    Anything else is passed through for `compile_plan` to reject with a clear issue.
    """
    data = _load(plan)
    check_plan_size(data)
    return data


def _load(plan: Any) -> Any:
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
            raise PlanValidationError([ValidationIssue(
                "$", f"no plan file at {str(path)!r}{_close_file(path)}", code="file")])
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


def _close_file(path: Path) -> str:
    """"; did you mean 'plans/ci_pipeline.json'?" for a mistyped plan file name."""
    try:
        siblings = [p.name for p in itertools.islice(path.parent.iterdir(), 1000)
                    if p.suffix in (".json", ".py")]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1)
    return f"; did you mean {str(path.with_name(close[0]))!r}?" if close else ""


MAX_PLAN_BYTES = 1 << 20
"""Largest step graph: 1 MiB of compact JSON. Validation runs in the engine's process, and
its work (with the garbage collector's pauses) grows with the plan: a 3 MB plan of 100,000
`${= ...}` expressions took 16 s and froze the engine for 2 s."""
MAX_SOURCE_BYTES = 64 << 10
"""Largest code plan: 64 KiB of source (UTF-8), some 1,500 lines. Its syntax tree costs far
more than its text: 900 KB of `x = 1` lines took 48 s to check and froze the engine for
5.7 s (mostly the garbage collector walking the tree's nodes)."""


def compile_any(plan: Any, tools: dict[str, Tool], *, checked: bool = False) -> Compiled:
    """Validate plan data of either kind against the tools (`PlanValidationError`).
    `checked`: the caller measured the plan's size already (see `check_plan_size`)."""
    if not checked:
        check_plan_size(plan)
    if isinstance(plan, CodePlan):
        return compile_code_plan(plan, tools)
    return compile_plan(plan, tools)


def check_plan_size(plan: Any) -> None:
    """Refuse a plan past `MAX_PLAN_BYTES` or `MAX_SOURCE_BYTES` (measured without building
    its text), or with text that is not Unicode (a lone surrogate, which no hash or store
    can encode)."""
    code = isinstance(plan, CodePlan)
    maximum = MAX_SOURCE_BYTES if code else MAX_PLAN_BYTES
    path = "$.source" if code else "$"
    try:
        if isinstance(plan, CodePlan):
            value_size(plan.source, _SOURCE_LIMITS, "$.source", "the source")
            plan.source.encode("utf-8")
        elif isinstance(plan, dict | list | str):
            value_size(plan, _PLAN_LIMITS, "$", "the plan")
            if isinstance(plan, dict) and not _plain_json(plan):
                to_json_value(plan, "the plan")  # NotJsonData where it is not, or the same
    except LimitExceeded:
        raise PlanValidationError([ValidationIssue(path, f"the plan is larger than "
                                                   f"{maximum:,} bytes; split it into "
                                                   "sub-plans")], what="plan") from None
    except (NotJsonData, UnicodeEncodeError) as error:
        raise PlanValidationError([ValidationIssue(path, str(error))], what="plan") from None


_PLAN_LIMITS = Limits(max_value_bytes=MAX_PLAN_BYTES, max_value_depth=1 << 30)
_SOURCE_LIMITS = Limits(max_value_bytes=MAX_SOURCE_BYTES, max_value_depth=1 << 30)


def _plain_json(plan: dict[str, Any]) -> bool:
    """Whether the plan (within its size limit) is JSON data as it is: what `json.dumps`
    writes without help, and as UTF-8, is. Checked in C, at a fraction of the cost of
    `to_json_value`, which is then needed only for the rest (its error names the place)."""
    try:
        json.dumps(plan, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # (UnicodeEncodeError is a ValueError)
        return False
    return True


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
