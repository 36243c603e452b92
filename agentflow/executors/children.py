"""A sub-plan call as both executors make it: a graph's `plan` step, a code plan's
`run_plan(name, **inputs)`.

The executor asks the engine's hook (`SubPlans`) to start the child run unless it exists,
then waits, under the call's key plus `SUBPLAN_SUFFIX`, for the event the engine sends when
the child ends. The call's own key then holds the child's outputs, or `child_failure`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

SUBPLAN_SUFFIX = "@plan"
SubPlans: TypeAlias = Callable[[str, str, dict[str, Any]], str]
"""Starts the child run of a sub-plan call (call key, plan reference, inputs) unless it
exists, and returns the name of the event that says it ended."""


def child_failure(reference: str, ended: dict[str, Any]) -> dict[str, Any]:
    """The journaled error of a call whose child run ended without completing."""
    why = ended.get("error") or {}
    return {"type": "SubPlanFailed", "final": True,
            "message": f"sub-plan {reference!r} (run {ended.get('run_id')!r}) "
                       f"{ended.get('status', 'failed')}: {why.get('message', '')}"}
