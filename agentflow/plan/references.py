"""The `${...}` reference language: paths into a run's inputs and step results, and templates.

A path starts at `inputs`, `steps.<id>.output`, `steps.<id>.status`, `steps.<id>.error`,
`item` or `index` (the last two only inside a foreach step) and goes on with `.name`, `[0]`
(negative indexes count from the end) or `["any key"]`.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from agentflow.errors import (
    LimitExceeded,
    PlanValidationError,
    ReferenceResolutionError,
    ValidationIssue,
)

Root = Literal["inputs", "steps", "item", "index"]
StepField = Literal["output", "status", "error"]
Segment = str | int
Evaluator = Callable[["Scope"], Any]

MAX_DEPTH = 100
"""Deepest nesting of lists and objects accepted in plan values (keeps every walk bounded)."""

STEP_STATUSES = ("succeeded", "failed", "skipped", "rejected")
_STEP_FIELDS: dict[Segment, StepField] = {"output": "output", "status": "status", "error": "error"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"-?[0-9]{1,18}(?![0-9])")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
_SIMPLE_SEGMENTS = r"(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[-?[0-9]{1,18}\])*"
_SIMPLE_WHOLE = re.compile(
    r"\$\{[ \t\r\n]*("
    r"steps\.([A-Za-z_][A-Za-z0-9_-]*)\.(?:output(" + _SIMPLE_SEGMENTS + r")|(status|error))"
    r"|(inputs|item|index)(" + _SIMPLE_SEGMENTS + r"))[ \t\r\n]*\}")
"""A string that is one reference with only `.name` and `[0]` segments: the common case,
parsed by one regular expression instead of `parse_path` (which it must agree with)."""
_SIMPLE_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?[0-9]{1,18})\]")


@dataclass(frozen=True, slots=True)
class StepView:
    """A finished step as references and conditions of later steps see it.

    `status` is one of succeeded, failed, skipped, rejected (an approval, as a step or as a
    gate on a tool step, was rejected). `output` is the tool's result (a foreach step's is the
    list of its items' results), an approval step's decision `{"approved", "by", "comment",
    "reason"}`, a wait_for_event step's event payload, None for sleep and wait_until steps.
    References read the output of a succeeded step, and of a rejected one when it has an
    output (a rejected approval step's decision; a rejected gated tool step has none); any
    other output reads as None. `error` is the failure message.
    """

    status: str
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    """Everything a template or condition may read; the executor builds one per step or item.

    `steps` must hold a view of every finished step the plan refers to. `index` is None
    outside a foreach step, which is how `item` and `index` know they are not defined.
    `upstream_success` and `upstream_failure` answer `success()` and `failure()` in conditions.
    """

    inputs: Mapping[str, Any]
    steps: Mapping[str, StepView]
    item: Any = None
    index: int | None = None
    upstream_success: bool = True
    upstream_failure: bool = False
    max_text: int | None = None
    """Longest string an interpolation may build (characters); None: no bound."""


@dataclass(frozen=True, slots=True)
class Reference:
    """One parsed path, with the JSON path in the plan where it is written.

    `text` is the path as written, without `${}`. `whole` is True when the path is the whole
    value (type kept) and False when it is interpolated into a longer string.
    """

    text: str
    json_path: str
    root: Root
    step: str | None = None
    field: StepField | None = None
    path: tuple[Segment, ...] = ()
    whole: bool = True
    projection: tuple[Segment, ...] | None = None
    """In an expression, the path after a `[*]` that follows `path`: the value is the list
    of that path read from each item (None: no projection)."""

    @property
    def head(self) -> str:
        """The part of the path before `path`: `inputs`, `item` or `steps.<id>.output`."""
        return f"steps.{self.step}.{self.field}" if self.root == "steps" else self.root


class PathSyntaxError(ValueError):
    """A path or expression that does not parse; `position` is a 0-based index in the text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


def child_path(base: str, key: Segment) -> str:
    """The JSON path of `key` inside the value at `base`: `$.steps[2].args.ref`."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{base}.{key}"
    return f"{base}[{json.dumps(key)}]"


def format_path(head: str, segments: Sequence[Segment]) -> str:
    """A reference path as it would be written: `steps.a.output.files[0]["a b"]`."""
    parts = [head]
    for segment in segments:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            parts.append(f"[{json.dumps(segment)}]")
    return "".join(parts)


def excerpt(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, so that a message stays readable whatever it quotes."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: Any) -> str:
    """The JSON type of a value in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def skip_spaces(text: str, pos: int) -> int:
    """The first position at or after `pos` that is not a space, tab or newline."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_quoted(text: str, pos: int) -> tuple[str, int]:
    """The string literal starting with the quote at `pos`, unescaped, and the position after.

    Backslash escapes \\n \\t \\r \\\\ \\' \\"; any other backslash is kept as written.
    """
    quote = text[pos]
    chunks: list[str] = []
    start = index = pos + 1
    while index < len(text):
        char = text[index]
        if char == quote:
            chunks.append(text[start:index])
            return "".join(chunks), index + 1
        if char == "\\" and index + 1 < len(text):
            chunks.append(text[start:index])
            following = text[index + 1]
            chunks.append(_ESCAPES.get(following, "\\" + following))
            index += 2
            start = index
            continue
        index += 1
    raise PathSyntaxError("unterminated string", pos)


def parse_path(text: str, pos: int, json_path: str, *, allow_projection: bool = False
               ) -> tuple[Reference, int]:
    """The path starting at `pos` in `text` and the position just after it. With
    `allow_projection` (expressions), one `[*]` (or `.*`) may project over a list."""
    match = _NAME.match(text, pos)
    if match is None:
        raise PathSyntaxError("expected a path such as inputs.name or steps.<id>.output", pos)
    root = match.group()
    segments, positions, end, star = _read_segments(text, match.end())
    written = text[pos:end]
    if star is not None:
        count, where = star
        if not allow_projection:
            raise PathSyntaxError("a projection [*] works in expressions only: write "
                                  "'${= ...}'", where)
        reference, _ = parse_path(text[:where], pos, json_path)
        return replace(reference, text=written, projection=tuple(segments[count:])), end
    if root in ("inputs", "item"):
        return Reference(written, json_path, "inputs" if root == "inputs" else "item",
                         path=tuple(segments)), end
    if root == "index":
        if segments:
            raise PathSyntaxError("index is a number; it has no fields or items", positions[0])
        return Reference(written, json_path, "index"), end
    if root != "steps":
        raise PathSyntaxError(f"unknown name {excerpt(root)!r}; a path starts with inputs, "
                              "steps.<id>, item or index", pos)
    if not segments or not isinstance(segments[0], str) or not _NAME.fullmatch(segments[0]):
        raise PathSyntaxError("expected a step id after 'steps.'", positions[0] if positions
                              else end)
    field = _STEP_FIELDS.get(segments[1]) if len(segments) > 1 else None
    if field is None:
        raise PathSyntaxError(f"expected .output, .status or .error after steps.{segments[0]}",
                              positions[1] if len(segments) > 1 else end)
    if field != "output" and len(segments) > 2:
        raise PathSyntaxError(f"steps.<id>.{field} is a string; it has no fields or items",
                              positions[2])
    return Reference(written, json_path, "steps", segments[0], field, tuple(segments[2:])), end


def _read_segments(text: str, pos: int
                   ) -> tuple[list[Segment], list[int], int, tuple[int, int] | None]:
    """The `.name`, `[0]` and `["key"]` parts after a path's root, with their positions, and
    for a projection (`[*]` or `.*`) the number of segments before it and where it is."""
    segments: list[Segment] = []
    positions: list[int] = []
    star: tuple[int, int] | None = None
    while pos < len(text):
        char = text[pos]
        projection = 2 if text.startswith(".*", pos) else (
            3 if text.startswith("[*]", pos) else 0)
        if projection:
            if star is not None:
                raise PathSyntaxError("only one projection [*] per path", pos)
            star = (len(segments), pos)
            pos += projection
            continue
        if char == ".":
            match = _NAME.match(text, pos + 1)
            if match is None:
                hint = "; write [0] for a list item" if text[pos + 1: pos + 2].isdigit() else ""
                raise PathSyntaxError(f"expected a name after '.'{hint}", pos + 1)
            segments.append(match.group())
            positions.append(pos + 1)
            pos = match.end()
        elif char == "[":
            positions.append(pos)
            pos = skip_spaces(text, pos + 1)
            if text[pos: pos + 1] in ("'", '"'):
                key, pos = read_quoted(text, pos)
                segments.append(key)
            else:
                match = _INDEX.match(text, pos)
                if match is None:
                    raise PathSyntaxError("expected a list index or a quoted key after '['", pos)
                segments.append(int(match.group()))
                pos = match.end()
            pos = skip_spaces(text, pos)
            if text[pos: pos + 1] != "]":
                raise PathSyntaxError("expected ']'", pos)
            pos += 1
        else:
            break
    return segments, positions, pos, star


def resolver(reference: Reference, *, strict: bool) -> Evaluator:
    """A function reading the reference's value from a scope.

    The output of a step that did not succeed reads as None, whatever the rest of the path,
    unless the step was rejected and has an output (see `StepView`). Otherwise a missing
    key, an index out of range or the wrong container raises `ReferenceResolutionError` when
    `strict`, and reads as None when not (conditions).

    The readers are partials of module functions rather than closures: a plan holds one per
    reference, and a partial is two objects for the garbage collector where a closure over
    five variables is six.
    """
    if reference.projection is not None:
        return partial(_read_projection, resolver(replace(reference, projection=None),
                                                  strict=False), reference.projection)
    if reference.root == "inputs":
        return partial(_read_inputs, reference, strict)
    if reference.root == "item":
        return partial(_read_item, reference, strict)
    if reference.root == "index":
        return partial(_read_index, reference, strict)
    return partial(_read_step, reference, strict)


def _read_projection(read_list: Evaluator, path: tuple[Segment, ...], scope: Scope) -> Any:
    """The list of `path` read from each item of a list (null where it finds nothing);
    null when there is no list."""
    items = read_list(scope)
    if not isinstance(items, list):
        return None
    found = []
    for item in items:
        value = item
        for segment in path:
            try:
                value = None if isinstance(value, str) else value[segment]
            except (KeyError, IndexError, TypeError):
                value = None
            if value is None:
                break
        found.append(value)
    return found


def _read_inputs(reference: Reference, strict: bool, scope: Scope) -> Any:
    return _walk(scope.inputs, reference.path, reference, strict)


def _read_item(reference: Reference, strict: bool, scope: Scope) -> Any:
    if scope.index is None:
        return _undefined(reference, "item only exists inside a foreach step", strict)
    return _walk(scope.item, reference.path, reference, strict)


def _read_index(reference: Reference, strict: bool, scope: Scope) -> Any:
    if scope.index is None:
        return _undefined(reference, "index only exists inside a foreach step", strict)
    return scope.index


def _read_step(reference: Reference, strict: bool, scope: Scope) -> Any:
    view = scope.steps.get(reference.step or "")
    if view is None:
        return _undefined(reference, f"step {reference.step!r} has no result yet", strict)
    field = reference.field
    if field == "status":
        return view.status
    if field == "error":
        return view.error
    status = view.status
    if status != "succeeded" and (status != "rejected" or view.output is None):
        return None
    return _walk(view.output, reference.path, reference, strict)


def _undefined(reference: Reference, message: str, strict: bool) -> None:
    """Raise when strict, else read as None: the reference has nothing to point at."""
    if strict:
        raise ReferenceResolutionError(reference.text, reference.json_path, message)
    return None


def _walk(value: Any, path: tuple[Segment, ...], reference: Reference, strict: bool) -> Any:
    """Follow `path` into `value`: the hot path, so no checks beyond what indexing does."""
    start = value
    try:
        for segment in path:
            if isinstance(value, str):
                raise TypeError(segment)
            value = value[segment]
    except (KeyError, IndexError, TypeError):
        if strict:
            raise _resolution_error(start, reference) from None
        return None
    return value


def _resolution_error(value: Any, reference: Reference) -> ReferenceResolutionError:
    """Walk again, slowly, to say which part of the path found nothing."""
    walked = reference.head
    detail = f"{walked} has an unexpected shape"
    for position, segment in enumerate(reference.path):
        if isinstance(segment, str):
            if not isinstance(value, Mapping):
                detail = f"{walked} is {kind_of(value)}, not an object"
                break
            if segment not in value:
                keys = ", ".join(excerpt(str(key), 30) for key in list(value)[:20])
                detail = (f"{walked} has no key {excerpt(segment)!r}"
                          + (f" (keys: {keys})" if keys else " (it is empty)"))
                break
        elif not isinstance(value, list | tuple):
            detail = f"{walked} is {kind_of(value)}, not a list"
            break
        elif not -len(value) <= segment < len(value):
            detail = f"index {segment} is out of range: {walked} has {len(value)} item(s)"
            break
        value = value[segment]
        walked = format_path(reference.head, reference.path[: position + 1])
    return ReferenceResolutionError(reference.text, reference.json_path, detail)


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
        if not references:
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
    if not references:
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
    pairs = [(resolver(part, strict=True) if isinstance(part, Reference) else part.evaluate,
              tail) for part, tail in zip(parts, texts[1:], strict=True)]
    references = [ref for part in parts
                  for ref in ((part,) if isinstance(part, Reference) else part.references)]

    def evaluate(scope: Scope) -> str:
        parts = [head]
        length = len(head)
        for (read, tail), reference in zip(pairs, references, strict=True):
            value = read(scope)
            parts.append(value if isinstance(value, str)
                         else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            parts.append(tail)
            length += len(parts[-2]) + len(tail)
            if scope.max_text is not None and length > scope.max_text:
                raise LimitExceeded("max_value_bytes", scope.max_text, reference.json_path,
                                    f"the text built around ${{{reference.text}}} passes "
                                    f"{scope.max_text} characters")
        return "".join(parts)

    return Template(None, evaluate, tuple(references))
