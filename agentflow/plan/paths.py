"""Reference paths: where a `${...}` reference points into a run's inputs and step results,
how it is parsed, and how it resolves against a `Scope`.

A path starts at `inputs`, `steps.<id>.output`, `steps.<id>.status`, `steps.<id>.error`,
`item` or `index` (the last two only inside a foreach step) and goes on with `.name`, `[0]`
(negative indexes count from the end) or `["any key"]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from agentflow.errors import ReferenceResolutionError

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
