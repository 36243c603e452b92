"""The `${...}` reference language: templates, whose strings hold references (paths, see
`plan.paths`) and expressions.

A template is a JSON value whose strings may hold references and expressions. A string that
is exactly `${path}` becomes the referenced value with its type kept, and one that is exactly
`${= expression}` the expression's value (see `expressions`); inside a longer string either is
interpolated as text (strings as they are, anything else as compact JSON, so None is `null`).
Dict keys are never templated. A text template (`compile_text`, for an approval's prompt)
interpolates a whole reference too, so it always evaluates to a string.

Escaping: in a string that contains `${`, `$$` is one literal `$` (so `$${` is a literal
`${`, and `$$${inputs.price}` is a `$` before the price); a string without `${` is taken as
it is written, `$$` included. Every string can be written: double each `$` of its literal
text, and the rule reads it back.

Templates are compiled once per plan into closures over pre-parsed paths, because they are
evaluated for every step of every run: evaluation parses nothing, and a value without
references is returned as it is, not copied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agentflow.errors import LimitExceeded, PlanValidationError, ValidationIssue
from agentflow.plan.paths import (
    _STEP_FIELDS,
    MAX_DEPTH,
    STEP_STATUSES,
    Evaluator,
    PathSyntaxError,
    Reference,
    Scope,
    Segment,
    StepView,
    child_path,
    excerpt,
    format_path,
    kind_of,
    parse_path,
    read_quoted,
    resolver,
    skip_spaces,
)

_SIMPLE_SEGMENTS = r"(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[-?[0-9]{1,18}\])*"
_SIMPLE_WHOLE = re.compile(
    r"\$\{[ \t\r\n]*("
    r"steps\.([A-Za-z_][A-Za-z0-9_-]*)\.(?:output(" + _SIMPLE_SEGMENTS + r")|(status|error))"
    r"|(inputs|item|index)(" + _SIMPLE_SEGMENTS + r"))[ \t\r\n]*\}")
"""A string that is one reference with only `.name` and `[0]` segments: the common case,
parsed by one regular expression instead of `parse_path` (which it must agree with)."""
_SIMPLE_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?[0-9]{1,18})\]")


class Template:
    """A compiled JSON value whose strings may hold `${...}` references.

    `evaluate(scope)` returns the value with every reference resolved (strictly: see
    `resolver`). A static template returns its value itself, not a copy, and the parts of a
    dynamic one that hold no reference are shared too: treat results as read-only.
    `references` lists every reference with the JSON path where it is written;
    `whole_reference` is set when the value is exactly one `${...}` string, and
    `whole_expression` when it is exactly one `${= ...}` string.
    """

    __slots__ = ("_evaluate", "_value", "is_static", "references", "whole_expression",
                 "whole_reference")

    def __init__(self, value: Any, evaluate: Evaluator | None = None,
                 references: tuple[Reference, ...] = (),
                 whole_reference: Reference | None = None,
                 whole_expression: Any = None) -> None:
        self._value = value
        self._evaluate = evaluate
        self.is_static = evaluate is None
        self.references = references
        self.whole_reference = whole_reference
        self.whole_expression = whole_expression  # an `expressions.Expression`

    def evaluate(self, scope: Scope) -> Any:
        """The value, with the references resolved against `scope`."""
        if self._evaluate is None:
            return self._value
        return self._evaluate(scope)

    @staticmethod
    def mapping(children: Mapping[str, Template], source: Mapping[str, Any] | None = None
                ) -> Template:
        """The template of a dict whose values are `children`.

        When every child is static and unchanged from `source`, the result's value is
        `source` itself.
        """
        references: tuple[Reference, ...] = ()
        for child in children.values():
            if child.references:
                references += child.references
        if all(child.is_static for child in children.values()):  # (`${= 1}` reads nothing)
            if source is not None and all(
                    child._value is source[key] for key, child in children.items()):
                return Template(source)
            return Template({key: child._value for key, child in children.items()})
        entries = tuple((key, child._evaluate, child._value) for key, child in children.items())

        def evaluate(scope: Scope) -> dict[str, Any]:
            return {key: value if read is None else read(scope) for key, read, value in entries}

        return Template(None, evaluate, references)


def _sequence(children: list[Template], source: list[Any]) -> Template:
    references = tuple(ref for child in children for ref in child.references)
    if all(child.is_static for child in children):
        if all(child._value is item for child, item in zip(children, source, strict=True)):
            return Template(source)
        return Template([child._value for child in children])
    entries = tuple((child._evaluate, child._value) for child in children)

    def evaluate(scope: Scope) -> list[Any]:
        return [value if read is None else read(scope) for read, value in entries]

    return Template(None, evaluate, references)


def compile_template(value: Any, json_path: str = "$") -> Template:
    """Compile a JSON value from a plan; `json_path` is where it is written.

    Raises PlanValidationError listing every malformed reference (and over-deep nesting).
    """
    template, issues = compile_template_checked(value, json_path)
    if issues:
        raise PlanValidationError(issues)
    return template


def compile_template_checked(value: Any, json_path: str = "$"
                             ) -> tuple[Template, list[ValidationIssue]]:
    """The template and its issues; a malformed string is kept as static text, so that the
    references around it can still be checked."""
    issues: list[ValidationIssue] = []
    return _compile(value, json_path, issues, 0), issues


def compile_text(text: str, json_path: str = "$") -> Template:
    """Compile a string whose every reference is interpolated as text, even a whole one.

    The result always evaluates to a string (None reads as `null`). Raises
    PlanValidationError listing a malformed reference.
    """
    template, issues = compile_text_checked(text, json_path)
    if issues:
        raise PlanValidationError(issues)
    return template


def compile_text_checked(text: str, json_path: str = "$"
                         ) -> tuple[Template, list[ValidationIssue]]:
    """`compile_text`'s template and issues (a malformed string is kept as static text)."""
    issues: list[ValidationIssue] = []
    if "${" not in text:
        return Template(text), issues
    return _compile_string(text, json_path, issues, as_text=True), issues


def _compile(value: Any, json_path: str, issues: list[ValidationIssue], depth: int
             ) -> Template:
    if isinstance(value, str):
        if "${" not in value:
            return Template(value)
        simple = _simple_whole(value, json_path)
        return simple if simple is not None else _compile_string(value, json_path, issues)
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        issues.append(ValidationIssue(json_path, f"nested more than {MAX_DEPTH} levels deep",
                                      code="too_deep"))
        return Template(value)
    if isinstance(value, dict):
        children = {}
        for key, item in value.items():
            if type(item) is str and "${" not in item:
                children[key] = Template(item)
            else:
                children[key] = _compile(item, child_path(json_path, str(key)), issues,
                                         depth + 1)
        return Template.mapping(children, value)
    if isinstance(value, list):
        return _sequence([_compile(item, child_path(json_path, index), issues, depth + 1)
                          for index, item in enumerate(value)], value)
    return Template(value)


def _simple_whole(text: str, json_path: str) -> Template | None:
    """The template of a string that is one simple reference (see `_SIMPLE_WHOLE`), or None."""
    match = _SIMPLE_WHOLE.fullmatch(text)
    if match is None:
        return None
    written, step, output_path, field, root, root_path = match.groups()
    if root == "index":
        return None if root_path else _whole(Reference(written, json_path, "index"))
    segments = output_path if step is not None and field is None else root_path
    path = tuple(name or int(number) for name, number in _SIMPLE_SEGMENT.findall(segments)
                 ) if segments else ()
    if step is not None:
        return _whole(Reference(written, json_path, "steps", step,
                                _STEP_FIELDS[field or "output"], path))
    return _whole(Reference(written, json_path, "item" if root == "item" else "inputs",
                            path=path))


def _whole(reference: Reference) -> Template:
    """The template of a string that is exactly `reference`: its value, type kept."""
    return Template(None, resolver(reference, strict=True), (reference,), reference)


def _compile_string(text: str, json_path: str, issues: list[ValidationIssue],
                    as_text: bool = False) -> Template:
    """A string holding `${...}` (see the module docstring for `$$`)."""
    texts: list[str] = []
    parts: list[Reference | Any] = []  # a Reference, or an expression of `expressions`
    literal: list[str] = []
    pos = 0
    while (start := text.find("$", pos)) >= 0:
        literal.append(text[pos:start])
        if text.startswith("$$", start):
            literal.append("$")
            pos = start + 2
            continue
        if not text.startswith("${", start):
            literal.append("$")
            pos = start + 1
            continue
        try:
            part, pos = _embedded(text, start, json_path)
        except PathSyntaxError as error:
            issues.append(ValidationIssue(
                json_path, f"invalid reference in {excerpt(text)!r} at character "
                f"{error.position + 1}: {error.message}", code="syntax"))
            return Template(text)
        texts.append("".join(literal))
        parts.append(part)
        literal = []
    literal.append(text[pos:])
    texts.append("".join(literal))
    if not parts:
        return Template(texts[0])
    if len(parts) == 1 and texts == ["", ""] and not as_text:
        if isinstance(parts[0], Reference):
            return _whole(parts[0])
        expression = parts[0]
        return Template(None, expression.evaluate, expression.references,
                        whole_expression=expression)
    return _interpolation(texts, [replace(part, whole=False) if isinstance(part, Reference)
                                  else part for part in parts])


def _embedded(text: str, start: int, json_path: str) -> tuple[Any, int]:
    """The reference or expression at `${` (position `start`) and the position after it."""
    if text.startswith("=", skip_spaces(text, start + 2)):
        # expressions read paths with this module's parser, so they are imported here
        from agentflow.plan.expressions import parse_embedded

        expression, end = parse_embedded(text, skip_spaces(text, start + 2) + 1, json_path)
        if expression.uses_status_function:
            raise PathSyntaxError("always(), success() and failure() only work in 'when'",
                                  start)
        return expression, end
    reference, end = parse_path(text, skip_spaces(text, start + 2), json_path)
    end = skip_spaces(text, end)
    if text[end: end + 1] != "}":
        raise PathSyntaxError("expected '}' to close the reference", end)
    return reference, end + 1


def _interpolation(texts: list[str], parts: list[Any]) -> Template:
    """`texts` are the literal parts around `parts` (references and expressions): one more
    than there are parts."""
    head = texts[0]
    # an expression reads any number of paths (none at all, or many): each part is named
    # by itself in messages
    pairs = [(resolver(part, strict=True) if isinstance(part, Reference) else part.evaluate,
              tail, part) for part, tail in zip(parts, texts[1:], strict=True)]
    references = [ref for part in parts
                  for ref in ((part,) if isinstance(part, Reference) else part.references)]

    def evaluate(scope: Scope) -> str:
        parts = [head]
        length = len(head)
        for read, tail, part in pairs:
            value = read(scope)
            parts.append(value if isinstance(value, str)
                         else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            parts.append(tail)
            length += len(parts[-2]) + len(tail)
            if scope.max_text is not None and length > scope.max_text:
                shown = part.text if isinstance(part, Reference) else \
                    f"= {excerpt(part.text)}"
                raise LimitExceeded("max_value_bytes", scope.max_text, part.json_path,
                                    f"the text built around ${{{shown}}} passes "
                                    f"{scope.max_text} characters")
        return "".join(parts)

    return Template(None, evaluate, tuple(references))


__all__ = ["MAX_DEPTH", "STEP_STATUSES", "Evaluator", "PathSyntaxError", "Reference", "Scope",
           "Segment", "StepView", "Template", "child_path", "compile_template",
           "compile_template_checked", "compile_text", "compile_text_checked", "excerpt",
           "format_path", "kind_of", "parse_path", "read_quoted", "resolver", "skip_spaces"]
