"""A sub-plan call as both executors make it: a graph's `plan` step, a code plan's
`run_plan(name, **inputs)`.

The executor asks the engine's hook (`SubPlans`) to start the child run unless it exists,
then waits, under the call's key plus `SUBPLAN_SUFFIX`, for the event the engine sends when
the child ends. The call's own key then holds the child's outputs, or `child_failure`.

A plan step with `retry` runs a failed child again as a new child run: attempt n > 1 starts
the child of key `KEY~n` (so its run id is `PARENT/KEY~n`, the same on every replay) and
waits under `KEY@plan~n`; each failed attempt is a non-final error of the step's key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from agentflow.plan.models import RetryPolicy

SUBPLAN_SUFFIX = "@plan"
SubPlans: TypeAlias = Callable[[str, str, dict[str, Any], float], str]
"""Starts the child run of a sub-plan call (child key, plan reference, inputs, seconds
before it may start) unless it exists, and returns the name of the event that says it
ended."""


def attempt_keys(key: str, attempt: int) -> tuple[str, str]:
    """(the child's key, the wait's key) of attempt `attempt` of the sub-plan call `key`."""
    if attempt == 1:
        return key, key + SUBPLAN_SUFFIX
    return f"{key}~{attempt}", f"{key}{SUBPLAN_SUFFIX}~{attempt}"


def retries_child(policy: RetryPolicy | None, attempt: int, ended: dict[str, Any]) -> bool:
    """Whether a plan step with `policy` starts another child after attempt `attempt`
    ended so: only a failed child (a cancelled one was stopped on purpose), while attempts
    remain, and when `retry_on` (if given) names the child's error type or SubPlanFailed."""
    if policy is None or attempt >= policy.max_attempts or ended.get("status") != "failed":
        return False
    kind = (ended.get("error") or {}).get("type")
    return policy.retry_on is None or kind in policy.retry_on \
        or "SubPlanFailed" in policy.retry_on


def child_failure(reference: str, ended: dict[str, Any]) -> dict[str, Any]:
    """The journaled error of a call whose child run ended without completing."""
    why = ended.get("error") or {}
    return {"type": "SubPlanFailed", "final": True,
            "message": f"sub-plan {reference!r} (run {ended.get('run_id')!r}) "
                       f"{ended.get('status', 'failed')}: {why.get('message', '')}"}
