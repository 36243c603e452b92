"""What a step graph's `outputs` promise to whoever runs the plan as a sub-plan.

A plan step's output is its child run's outputs, so validation reads references into it
(`${steps.ship.output.deployed}`) against the JSON Schema `outputs_schema` makes of the
child's `outputs` template: exactly its fields, each typed where the template fixes the
type (a literal, a nested object), open where a reference or expression gives a value only
the run will tell (never a false error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentflow.plan.schema_paths import json_type


def outputs_schema(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Schema of the outputs a plan with this `outputs` template completes with."""
    return _schema(dict(outputs))


def _schema(template: Any) -> dict[str, Any]:
    if isinstance(template, dict):
        return {"type": "object", "properties": {key: _schema(value)
                                                 for key, value in template.items()},
                "required": sorted(template), "additionalProperties": False}
    if isinstance(template, list):
        return {"type": "array"}
    if isinstance(template, str):
        return {} if "${" in template else {"type": "string"}
    return {"type": json_type(template)}
