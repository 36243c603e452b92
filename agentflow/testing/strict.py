"""OpenAI's strict structured-output rules, as a scripted model enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

UNSUPPORTED_KEYWORDS = frozenset({
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "patternProperties", "unevaluatedProperties",
    "propertyNames", "minProperties", "maxProperties", "unevaluatedItems", "contains",
    "minContains", "maxContains", "minItems", "maxItems", "uniqueItems", "allOf", "not",
    "if", "then", "else", "dependentRequired", "dependentSchemas", "oneOf", "default",
})
"""Keywords OpenAI's strict mode has refused (its most conservative published profile)."""


def strict_problems(schema: dict[str, Any]) -> Iterator[str]:
    """Where `schema` breaks OpenAI's strict structured-output rules."""
    if schema.get("type") != "object":
        yield "the root schema must be an object (not anyOf)"

    def walk(node: Any, where: str) -> Iterator[str]:
        if not isinstance(node, dict):
            return
        for keyword in sorted(UNSUPPORTED_KEYWORDS & node.keys()):
            yield f"{where}: '{keyword}' is not permitted"
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types:
            properties = node.get("properties")
            if not isinstance(properties, dict):
                yield f"{where}: an object needs 'properties' (free-form objects are refused)"
                properties = {}
            if node.get("additionalProperties") is not False:
                yield f"{where}: 'additionalProperties' is required to be supplied and false"
            if sorted(node.get("required", [])) != sorted(properties):
                yield f"{where}: 'required' must list every property"
            for name, child in properties.items():
                yield from walk(child, f"{where}.properties.{name}")
        if "array" in types:
            if not isinstance(node.get("items"), dict) or not node["items"]:
                yield f"{where}: an array needs a typed 'items' schema"
            yield from walk(node.get("items"), f"{where}.items")
        if node == {}:
            yield f"{where}: an empty schema (any value) is refused"
        for index, branch in enumerate(node.get("anyOf", [])):
            yield from walk(branch, f"{where}.anyOf[{index}]")
        for name, child in node.get("$defs", {}).items():
            yield from walk(child, f"$defs.{name}")

    yield from walk(schema, "$")
