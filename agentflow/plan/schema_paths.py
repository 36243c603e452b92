"""What a JSON Schema says about a path into the data it describes.

Validation uses this to check `${steps.x.output.a[0]}` against the producing tool's output
schema and to compare the JSON types of a referenced value and of the parameter it feeds.
The walk is forgiving: whatever a schema leaves open, or this walk does not follow (remote
`$ref`s, `patternProperties`, conditionals), counts as unknown and is never an error.

A schema that lists `properties` and says nothing of `additionalProperties` is taken as
closed: that is how pydantic describes a model, and a model's dump has exactly those fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agentflow.plan.references import Segment

_SHAPE_KEYWORDS = ("type", "properties", "additionalProperties", "patternProperties", "items",
                   "prefixItems", "const", "enum")
_COMBINATORS = ("$ref", "anyOf", "oneOf", "allOf")
_MAX_REF_CHAIN = 32


@dataclass(frozen=True, slots=True)
class SchemaNode:
    """A (sub)schema and the document its `$ref`s resolve in."""

    root: Any
    schema: Any


View = tuple[SchemaNode, ...]
"""Schemas of which the data matches at least one, each with a shape keyword of its own."""


class SchemaPathError(Exception):
    """Segment `index` of a path names something the schema rules out; `detail` says why."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(detail)
        self.index = index
        self.detail = detail


def expand(node: SchemaNode) -> View | None:
    """The alternatives `node` allows, following `$ref`, anyOf, oneOf and allOf; None: open.

    allOf is read as "any of" too: lenient, never a false error.
    """
    return _expand(node, 0)


def _expand(node: SchemaNode, chain: int) -> View | None:
    schema = node.schema
    if schema is False:
        return ()
    if not isinstance(schema, dict) or chain > _MAX_REF_CHAIN:
        return None
    alternatives: list[SchemaNode] = []
    if any(keyword in schema for keyword in _SHAPE_KEYWORDS):
        alternatives.append(node)
    elif not any(keyword in schema for keyword in _COMBINATORS):
        return None
    members: list[Any] = []
    if "$ref" in schema:
        target = _resolve(node.root, schema["$ref"])
        if target is None:
            return None
        members.append(target)
    for keyword in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(keyword), list):
            members.extend(schema[keyword])
    for member in members:
        view = _expand(SchemaNode(node.root, member), chain + 1)
        if view is None:
            return None
        alternatives.extend(view)
    return tuple(alternatives)


def _resolve(root: Any, ref: Any) -> Any:
    """The target of a local `#/...` JSON pointer, or None."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        return None
    target = root
    for token in ref[2:].split("/") if ref != "#" else ():
        key = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            return None
    return target


def descend(view: View | None, path: Sequence[Segment]) -> View | None:
    """The view of the value at `path` inside data matching `view`; None when unknown.

    Raises SchemaPathError when no alternative allows a segment.
    """
    for index, segment in enumerate(path):
        if view is None:
            return None
        view = _step(view, segment, index)
    return view


def _step(view: View, segment: Segment, index: int) -> View | None:
    children: list[SchemaNode] = []
    misses: list[str] = []
    for alternative in view:
        child = _child(alternative, segment)
        if child is None:
            return None
        if isinstance(child, str):
            misses.append(child)
            continue
        expanded = expand(child)
        if expanded is None:
            return None
        children.extend(expanded)
    if children or not misses:
        return tuple(children)
    misses.sort(key=lambda detail: not detail.startswith("has "))
    raise SchemaPathError(index, misses[0])


def _child(alternative: SchemaNode, segment: Segment) -> SchemaNode | str | None:
    """The schema of `segment` in one alternative, a reason it has none, or None: unknown."""
    schema = alternative.schema
    types = _declared_types(schema)
    if isinstance(segment, str):
        if types is not None and "object" not in types:
            return f"is {describe_types(types)}, not an object"
        properties = schema.get("properties")
        if isinstance(properties, dict) and segment in properties:
            return SchemaNode(alternative.root, properties[segment])
        extra = schema.get("additionalProperties")
        if "patternProperties" in schema or extra is True or extra == {}:
            return None
        if isinstance(extra, dict):
            return SchemaNode(alternative.root, extra)
        if extra is None and not (isinstance(properties, dict) and properties):
            return None
        names = ", ".join(sorted(properties)[:20]) if isinstance(properties, dict) else ""
        return f"has no field {segment!r}" + (f" (fields: {names})" if names else "")
    if types is not None and "array" not in types:
        return f"is {describe_types(types)}, not a list"
    prefix = schema.get("prefixItems")
    prefix = prefix if isinstance(prefix, list) else []
    items = schema.get("items")
    if 0 <= segment < len(prefix):
        return SchemaNode(alternative.root, prefix[segment])
    if segment < 0 and prefix:
        return None
    if items is False:
        return f"has only {len(prefix)} item(s)"
    if isinstance(items, dict) and items:
        return SchemaNode(alternative.root, items)
    return None


def elements(view: View | None) -> View | None:
    """The view of any item of a list matching `view`; None when unknown."""
    if view is None:
        return None
    found: list[SchemaNode] = []
    for alternative in view:
        types = _declared_types(alternative.schema)
        if types is not None and "array" not in types:
            continue
        prefix = alternative.schema.get("prefixItems")
        members = [*(prefix if isinstance(prefix, list) else []),
                   alternative.schema.get("items", True)]
        for member in members:
            expanded = expand(SchemaNode(alternative.root, member))
            if expanded is None:
                return None
            found.extend(expanded)
    return tuple(found)


def json_types(view: View | None) -> frozenset[str] | None:
    """The JSON types data matching `view` may have; None when unknown."""
    if view is None:
        return None
    types: set[str] = set()
    for alternative in view:
        declared = _declared_types(alternative.schema)
        if declared is None:
            schema = alternative.schema
            if "properties" in schema or "additionalProperties" in schema:
                declared = frozenset({"object"})
            elif "items" in schema or "prefixItems" in schema:
                declared = frozenset({"array"})
            else:
                return None
        types |= declared
    return frozenset(types)


def _declared_types(schema: dict[str, Any]) -> frozenset[str] | None:
    declared = schema.get("type")
    if isinstance(declared, str):
        return frozenset({declared})
    if isinstance(declared, list):
        return frozenset(name for name in declared if isinstance(name, str))
    if "const" in schema:
        return frozenset({json_type(schema["const"])})
    if isinstance(schema.get("enum"), list):
        return frozenset(json_type(value) for value in schema["enum"])
    return None


def json_type(value: Any) -> str:
    """The JSON Schema type name of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def types_compatible(source: frozenset[str] | None, target: frozenset[str] | None) -> bool:
    """Whether a value of one of `source`'s types may fit one of `target`'s (unknown fits).

    Integers are numbers, and a number may turn out to be whole, so the two always match.
    """
    if source is None or target is None:
        return True
    numbers = {"integer", "number"}
    widened = source | numbers if source & numbers else source
    return bool(widened & target)


def describe_types(types: frozenset[str] | None) -> str:
    """`a string`, `a string or null`: JSON types in words, for messages."""
    if types is None:
        return "anything"
    if not types:
        return "nothing"
    words = [("an " if name[:1] in tuple("aeiou") else "a ") + name if name != "null" else "null"
             for name in sorted(types)]
    return " or ".join(words)
