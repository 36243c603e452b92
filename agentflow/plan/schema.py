"""The JSON Schema of the plan format, for LLM structured output and for documentation."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from agentflow.plan.models import PLAN_FORMAT, Plan

_DESCRIPTION = (
    f"An agentflow plan ({PLAN_FORMAT}): a graph of steps that call tools. A string that is "
    "exactly '${path}' in args or outputs becomes the referenced value; '${path}' inside a "
    "longer string is interpolated as text. Paths: inputs.<name>, steps.<id>.output (then "
    ".field, [0] or [\"key\"]), steps.<id>.status (succeeded, failed, skipped or rejected), "
    "steps.<id>.error, and item and index in the args of a foreach step. A reference makes "
    "the step wait for the referenced step; 'after' adds explicit dependencies. "
    "Computed values: '${= expression}' wherever a reference may be written (args, outputs, "
    "foreach, timeout, continue_on_error), e.g. '${= inputs.flag || false}', "
    "\"${= inputs.env == 'prod' && 'large' || 'small'}\", "
    "\"${= startsWith(inputs.ref, 'refs/tags/')}\", '${= steps.a.output.labels[*].name}'. "
    "Expressions use paths, literals, == != < <= > >=, in, and/&&, or/|| (giving an operand's "
    "value: the first truthy one for or, the first falsy one for and; null, false, 0, '' and "
    "empty lists and objects are falsy), not/!, and the functions startsWith, endsWith, "
    "contains, format('{0} and {1}', a, b), join(list, sep), length, toJSON, fromJSON and "
    "coalesce; a path that finds nothing reads as null. Escaping: in a string that contains "
    "'${', '$$' is one literal '$' (so '$${' is a literal '${' and '$$${inputs.price}' is a "
    "'$' before the price); a string without '${' is taken as written. 'when' is a condition "
    "in the same language, such as \"steps.test.output.passed == true and inputs.env in "
    "['prod', 'staging']\"; always(), success() and failure() test upstream status. Step "
    "kinds: tool (+ args), approval (a human decision; its output is {approved, by, comment, "
    "reason}; next to tool it gates the call), sleep (seconds), wait_until (an ISO-8601 time "
    "with a timezone) and wait_for_event (an event name, + timeout)."
)


def plan_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a JSON step-graph plan; a fresh copy on every call."""
    return copy.deepcopy(_schema())


@cache
def _schema() -> dict[str, Any]:
    generated = Plan.model_json_schema()
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"agentflow plan ({PLAN_FORMAT})",
        "description": _DESCRIPTION,
        **generated,
    }
