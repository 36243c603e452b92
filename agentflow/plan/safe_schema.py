"""JSON Schemas a plan brings, applied in linear time.

jsonschema matches `pattern` and `patternProperties` with Python's backtracking `re`: a
plan's inputs schema holding `"^(a+)+$"` and a 28-character default held the GIL for 22 s,
and each character more doubles that. Plan-supplied schemas are therefore matched with RE2
(google-re2), whose time is linear in the text; a pattern RE2 cannot run (backreferences,
lookaround) is refused where it is written, before anything runs. The host's own schemas
(tools' input schemas) are trusted and keep jsonschema's defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jsonschema
import re2  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError

from agentflow.plan.references import child_path

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


class UnsafePattern(ValueError):
    """A regular expression the linear-time engine cannot run."""


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as error:
        detail = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) \
            else str(error)
        raise UnsafePattern(f"the pattern {pattern[:80]!r} cannot be matched in linear time "
                            f"(RE2: {detail}); backreferences and lookaround are not "
                            "supported") from None


def pattern_issues(schema: Any, path: str) -> Iterator[tuple[str, str]]:
    """(JSON path, message) for each regular expression in `schema` (at `path`) that RE2
    refuses, and for `unevaluatedProperties` beside `patternProperties` (jsonschema would
    match those with `re`)."""
    stack: list[tuple[Any, str]] = [(schema, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        patterns: list[tuple[str, str]] = []
        if isinstance(node.get("pattern"), str):
            patterns.append((node["pattern"], child_path(where, "pattern")))
        pattern_properties = node.get("patternProperties")
        if isinstance(pattern_properties, dict):
            base = child_path(where, "patternProperties")
            patterns.extend((key, child_path(base, key)) for key in pattern_properties)
            if "unevaluatedProperties" in node:
                yield (child_path(where, "unevaluatedProperties"),
                       "unevaluatedProperties cannot be combined with patternProperties in "
                       "a plan's schema")
        for pattern, at in patterns:
            try:
                _compiled(pattern)
            except UnsafePattern as error:
                yield at, str(error)
        stack.extend((value, child_path(where, key)) for key, value in node.items())


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _matches_any(patterns: dict[str, Any], name: str) -> bool:
    return any(_compiled(pattern).search(name) for pattern in patterns)


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _compiled(pattern)
        for name, value in instance.items():
            if regex.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator: Any, allowed: Any, instance: Any,
                           schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = sorted(name for name in instance
                    if name not in declared and not _matches_any(patterns, name))
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif allowed is False and extras:
        yield ValidationError(f"Additional properties are not allowed "
                              f"({', '.join(repr(extra) for extra in extras)} unexpected)")


PlanSchemaValidator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {"pattern": _pattern, "patternProperties": _pattern_properties,
     "additionalProperties": _additional_properties})
"""A Draft 2020-12 validator that matches regular expressions with RE2. Check a schema
with `pattern_issues` first: a pattern RE2 refuses raises `UnsafePattern` here."""
