"""How validation applies JSON Schemas (never fetching a URL), and a tool's input schema
taken apart once per compile however many steps call it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
import referencing.exceptions

from agentflow.plan.safe_schema import UnsafePattern
from agentflow.plan.schema_paths import SchemaNode, expand, json_type, json_types
from agentflow.tools import Tool

_Validator = jsonschema.Draft202012Validator
_META_VALIDATOR = _Validator(_Validator.META_SCHEMA, format_checker=_Validator.FORMAT_CHECKER)
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()
"""Schemas resolve only their own `$ref`s: validation must never fetch a URL."""
_SCHEMA_FAILURES = (RecursionError, referencing.exceptions.Unresolvable,
                    jsonschema.exceptions.SchemaError, UnsafePattern)
_ANNOTATIONS = frozenset({"type", "title", "description", "default", "examples"})
"""Keywords of a parameter schema that a value's JSON type alone satisfies (with `type`)."""


@dataclass(slots=True)
class _Parameter:
    """What a tool's input schema says of one argument: worked out once per tool and name.

    `quick` is set when the schema is only `type` plus annotations, so that a static value of
    one of `types` is valid without running jsonschema.
    """

    node: SchemaNode
    types: frozenset[str] | None
    quick: bool
    validator: jsonschema.protocols.Validator | None = None


@dataclass(slots=True)
class _ToolSchema:
    """A tool's input schema, taken apart once per compile however many steps call it."""

    tool: Tool
    properties: dict[str, Any]
    extra: Any
    required: list[Any]
    parameters: dict[str, _Parameter | None] = field(default_factory=dict)
    validator: jsonschema.protocols.Validator | None = None

    @classmethod
    def of(cls, tool: Tool) -> _ToolSchema:
        schema = tool.input_schema
        properties = schema.get("properties")
        required = schema.get("required")
        return cls(tool, properties if isinstance(properties, dict) else {},
                   schema.get("additionalProperties", True),
                   required if isinstance(required, list) else [])

    def parameter(self, arg: str) -> _Parameter | None:
        """The schema of argument `arg`; None when the schema says nothing of it."""
        if arg in self.parameters:
            return self.parameters[arg]
        schema = self.tool.input_schema
        parameter = None
        if arg in self.properties or isinstance(self.extra, dict):
            node = SchemaNode(schema, self.properties.get(arg, self.extra))
            types = json_types(expand(node))
            quick = (types is not None and isinstance(node.schema, dict)
                     and "type" in node.schema and node.schema.keys() <= _ANNOTATIONS)
            parameter = _Parameter(node, types, quick)
        self.parameters[arg] = parameter
        return parameter

    def validates(self, parameter: _Parameter, value: Any) -> list[jsonschema.ValidationError]:
        """The errors of a static value against the parameter's schema."""
        if parameter.quick and parameter.types is not None:
            found = json_type(value)
            if found in parameter.types or (found == "integer" and "number" in parameter.types):
                return []
        if parameter.validator is None:
            if self.validator is None:
                self.validator = _Validator(self.tool.input_schema, registry=_NO_RETRIEVAL)
            parameter.validator = self.validator.evolve(schema=parameter.node.schema)
        return list(parameter.validator.iter_errors(value))
