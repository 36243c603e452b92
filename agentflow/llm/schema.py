"""The plan JSON Schema in the form OpenAI's strict structured outputs accept, and back.

Strict mode requires every object to list all its properties as required, with
`additionalProperties: false`, and refuses free-form values (objects without declared
properties, `{}`) as well as many validation keywords. The plan format has free-form values
where they belong: `args`, `inputs` and `outputs` hold arbitrary JSON, and `foreach` may be a
literal list of anything. The strict variant therefore

- encodes each free-form field as a **JSON-encoded string** (`"args": "{\"ref\": 1}"`):
  the model keeps writing plain JSON inside, any value stays expressible, and the field
  keeps its name, so validation issues (`$.steps[0].args.ref`) still point at what the
  model wrote. A string that is not JSON is kept as it is where the plain schema allows a
  string (`"foreach": "${steps.a.output}"`), else it is a validation issue;
- makes optional fields required but nullable: `null` means "not given" and is dropped when
  decoding, so the plan's defaults apply;
- keeps only the keywords strict mode knows (`type`, `properties`, `required`,
  `additionalProperties`, `items`, `enum`, `const`, `anyOf`, `$ref`, `$defs`,
  `description`); the dropped ones (`pattern`, `minimum`, ...) are still enforced by
  `compile_plan`, whose issues the planner sends back for repair.

The free-form fields are found from the plan schema itself, so the encoding follows the
format as it grows.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan import plan_schema

_KEPT = frozenset({"type", "description", "properties", "required", "additionalProperties",
                   "items", "enum", "const", "anyOf", "$ref", "$defs"})
_ENCODED_NOTE = " Written as a JSON-encoded string; null when not given."


def strict_plan_schema() -> dict[str, Any]:
    """The plan schema in strict-mode form (see the module docstring); a fresh copy."""
    return copy.deepcopy(_strict_plan_schema())


@cache
def _strict_plan_schema() -> dict[str, Any]:
    source = plan_schema()
    defs = source.get("$defs", {})
    strict = _strict_node(source, defs)
    strict["$defs"] = {name: _strict_node(node, defs) for name, node in defs.items()}
    return strict


def decode_strict_plan(data: Any) -> Any:
    """A plan answered in the strict form, as plain plan data.

    Raises PlanValidationError for an encoded field that is not JSON where a string is not
    allowed either; anything else is left for `compile_plan` to judge.
    """
    source = plan_schema()
    issues: list[ValidationIssue] = []
    plain = _walk(source, source.get("$defs", {}), data, "$", issues, decode=True)
    if issues:
        raise PlanValidationError(issues)
    return plain


def encode_strict_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A plain plan in the strict form (the inverse of `decode_strict_plan`)."""
    source = plan_schema()
    encoded: dict[str, Any] = _walk(source, source.get("$defs", {}), plan, "$", [],
                                    decode=False)
    return encoded


def strict_compatible(schema: Any) -> bool:
    """Whether `schema` already follows strict mode's structural rules: an object at the
    root, every object closed with all properties required, no free-form value."""
    return isinstance(schema, dict) and schema.get("type") == "object" and _closed(schema)


# -- building the strict schema -------------------------------------------------------


def _strict_node(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`node` with only strict keywords; objects closed, optional properties nullable."""
    out = {key: value for key, value in node.items() if key in _KEPT - {"$defs"}}
    if "anyOf" in out:
        out["anyOf"] = [_strict_node(branch, defs) for branch in out["anyOf"]]
    if isinstance(out.get("items"), dict):
        out["items"] = _strict_node(out["items"], defs)
    properties = out.get("properties")
    if isinstance(properties, dict):
        required = set(node.get("required", []))
        out["properties"] = {
            name: _strict_property(child, defs, optional=name not in required)
            for name, child in properties.items()}
        out["required"] = list(properties)
        out["additionalProperties"] = False
    return out


def _strict_property(node: dict[str, Any], defs: dict[str, Any], *,
                     optional: bool) -> dict[str, Any]:
    if _free(node, defs):
        text = {"type": ["string", "null"] if optional else "string",
                "description": node.get("description", "") + _ENCODED_NOTE}
        return text
    strict = _strict_node(node, defs)
    if not optional or _allows_null(strict):
        return strict
    description = strict.pop("description", None)
    nullable: dict[str, Any] = {"anyOf": [strict, {"type": "null"}]}
    if description:
        nullable["description"] = description
    return nullable


def _allows_null(node: dict[str, Any]) -> bool:
    types = node.get("type")
    return types == "null" or (isinstance(types, list) and "null" in types) or any(
        _allows_null(branch) for branch in node.get("anyOf", []))


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = defs.get(ref.removeprefix("#/$defs/"), {})
        return resolved
    return node


def _free(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    """Whether a value of this schema may hold arbitrary JSON somewhere strict mode cannot
    describe (an object without properties, an untyped schema)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        return any(_free(branch, defs) for branch in node["anyOf"])
    kind = node.get("type")
    if kind is None and "const" not in node and "enum" not in node:
        return True
    if kind == "object":
        return not node.get("properties")
    if kind == "array":
        return _free(node.get("items", {}), defs)
    return False


def _allows_string(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    node = _resolve(node, defs)
    return node.get("type") == "string" or any(
        _allows_string(branch, defs) for branch in node.get("anyOf", []))


def _closed(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("type") == "object":
        properties = node.get("properties")
        if not isinstance(properties, dict) or not properties:
            return False
        if node.get("additionalProperties") is not False:
            return False
        if sorted(node.get("required", [])) != sorted(properties):
            return False
        if not all(_closed(child) for child in properties.values()):
            return False
    if node.get("type") == "array" and not _closed(node.get("items")):
        return False
    if "type" not in node and not {"anyOf", "$ref", "enum", "const"} & node.keys():
        return False
    return all(_closed(branch) for branch in node.get("anyOf", [])) and all(
        _closed(child) for child in node.get("$defs", {}).values())


# -- converting plans -----------------------------------------------------------------


def _walk(node: dict[str, Any], defs: dict[str, Any], value: Any, path: str,
          issues: list[ValidationIssue], *, decode: bool) -> Any:
    """`value` (of schema `node`) converted from the strict form (decode) or into it."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        branch = _branch_for(node["anyOf"], defs, value)
        return value if branch is None else _walk(branch, defs, value, path, issues,
                                                  decode=decode)
    properties = node.get("properties")
    if isinstance(properties, dict) and isinstance(value, dict):
        required = set(node.get("required", []))
        out: dict[str, Any] = {}
        for name in properties if not decode else value:
            child = properties.get(name)
            item = value.get(name)
            where = f"{path}.{name}"
            if child is None:
                out[name] = item  # unknown field: compile_plan reports it
            elif decode and item is None and name not in required:
                continue
            elif _free(child, defs) and decode:
                decoded = _decode_text(item, _allows_string(child, defs), where, issues)
                if decoded is not None or name in required:
                    out[name] = decoded
            elif _free(child, defs):
                out[name] = json.dumps(item) if name in value else None
            elif not decode and name not in value:
                out[name] = None
            else:
                out[name] = _walk(child, defs, item, where, issues, decode=decode)
        return out
    items = node.get("items")
    if isinstance(items, dict) and isinstance(value, list):
        return [_walk(items, defs, item, f"{path}[{index}]", issues, decode=decode)
                for index, item in enumerate(value)]
    return value


def _branch_for(branches: list[dict[str, Any]], defs: dict[str, Any],
                value: Any) -> dict[str, Any] | None:
    """The anyOf branch describing a container value (the only ones that need converting)."""
    wanted = "object" if isinstance(value, dict) else "array" if isinstance(value, list) \
        else None
    for branch in branches:
        if wanted is not None and _resolve(branch, defs).get("type") == wanted:
            return branch
    return None


def _decode_text(text: Any, string_ok: bool, path: str, issues: list[ValidationIssue]) -> Any:
    if not isinstance(text, str):
        return text  # already decoded (a lenient model): compile_plan judges the value
    try:
        return json.loads(text)
    except ValueError as error:
        if string_ok:
            return text
        issues.append(ValidationIssue(path, f"must be a JSON-encoded string; {text[:80]!r} is "
                                      f"not JSON ({error})", code="json"))
        return None
