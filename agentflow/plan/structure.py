"""Plan structure: plan data in, a `Plan` model out, or every structural problem at once,
each located by a JSON path into the plan as written (see `plan.validation`)."""

from __future__ import annotations

import difflib
import json
import math
import types
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

import jsonschema
import pydantic

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.models import Plan, Step
from agentflow.plan.references import MAX_DEPTH, Segment, child_path, excerpt, kind_of


def parse_plan(data: Any) -> Plan:
    """The Plan model of `data`, or PlanValidationError with every structural problem."""
    if isinstance(data, Plan):
        free_values: dict[tuple[Segment, ...], Any] = {
            ("inputs",): data.inputs, ("outputs",): data.outputs}
        for index, step in enumerate(data.steps):
            for name in ("args", "inputs", "foreach"):
                free_values["steps", index, name] = getattr(step, name)
        issues = [_located_issue(data, (*loc, *inner), message, "json")
                  for loc, value in free_values.items() if not _plain_json(value)
                  for inner, message in _json_problems(value)]
        if issues:
            raise PlanValidationError(issues)
        return data
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise PlanValidationError([ValidationIssue(
                "$", f"the plan is not valid JSON: {excerpt(str(error), 200)}", code="json")]
            ) from None
    if not isinstance(data, Mapping):
        raise PlanValidationError([ValidationIssue(
            "$", f"a plan is a JSON object (a dict, a JSON string or a Plan), not "
            f"{kind_of(data)}", code="type")])
    data = dict(data)
    if not _plain_json(data):
        issues = [_located_issue(data, loc, message, "json")
                  for loc, message in _json_problems(data)]
        if issues:
            raise PlanValidationError(issues)
    try:
        return Plan.model_validate(data)
    except pydantic.ValidationError as error:
        raise PlanValidationError(_pydantic_issues(error, data)) from None


def _plain_json(value: Any) -> bool:
    """True when `value` is certainly plain JSON data: the quick check that lets a valid plan
    skip `_json_problems`, which tracks locations. False means "look closer": also for
    subclasses of the JSON types and for containers met twice, which may be fine."""
    try:
        return _plain(value, 0, set())
    except RecursionError:
        return False


def _plain(value: Any, depth: int, seen: set[int]) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is not dict and kind is not list:
        return False
    if depth >= MAX_DEPTH or id(value) in seen:
        return False
    seen.add(id(value))
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) is not str and not _plain(item, depth + 1, seen):
                return False
        return True
    return all(type(item) is str or _plain(item, depth + 1, seen) for item in value)


def _json_problems(value: Any) -> Iterator[tuple[tuple[Segment, ...], str]]:
    """(location, message) for each part of `value` that is not plain JSON data.

    Depth first, without recursion; a container met again on the current path is a cycle,
    met again elsewhere it is shared and walked once.
    """
    seen: dict[int, tuple[Segment, ...]] = {}
    stack: list[tuple[Any, tuple[Segment, ...]]] = [(value, ())]
    while stack:
        current, loc = stack.pop()
        if isinstance(current, dict | list):
            first = seen.get(id(current))
            if first is not None:
                if loc[: len(first)] == first:
                    yield loc, "the value contains itself"
                continue
            seen[id(current)] = loc
            if len(loc) >= MAX_DEPTH:
                yield loc, f"nested more than {MAX_DEPTH} levels deep"
                continue
            if isinstance(current, dict):
                for key in current:
                    if not isinstance(key, str):
                        yield loc, f"object keys must be strings, not {kind_of(key)} {key!r:.40}"
                children = [(item, (*loc, key)) for key, item in current.items()
                            if isinstance(key, str)]
            else:
                children = [(item, (*loc, index)) for index, item in enumerate(current)]
            stack.extend(reversed(children))
        elif isinstance(current, float):
            if not math.isfinite(current):
                yield loc, f"{current} is not a JSON number"
        elif current is not None and not isinstance(current, str | int):
            yield loc, f"{type(current).__name__} is not JSON data"


def _pydantic_issues(error: pydantic.ValidationError, data: Mapping[str, Any]
                     ) -> list[ValidationIssue]:
    """One issue per place in the plan; a union's per-member errors merge into one."""
    grouped: dict[tuple[Segment, ...], list[str]] = {}
    for detail in error.errors(include_url=False, include_input=False):
        loc, model = _plan_location(detail["loc"])
        grouped.setdefault(loc, []).append(_pydantic_message(detail, loc, model))
    issues = []
    for loc, messages in grouped.items():
        unique = list(dict.fromkeys(messages))
        prefix = "Input should be "
        if len(unique) > 1 and all(message.startswith(prefix) for message in unique):
            unique = [prefix + " or ".join(message[len(prefix):] for message in unique)]
        issues.append(_located_issue(data, loc, "; ".join(unique), "structure"))
    return issues


def _plan_location(loc: tuple[int | str, ...]
                   ) -> tuple[tuple[Segment, ...], type[pydantic.BaseModel] | None]:
    """A pydantic error location without union member tags, and the model of its last field."""
    annotation: Any = Plan
    clean: list[Segment] = []
    model: type[pydantic.BaseModel] | None = None
    for element in loc:
        annotation = _unwrap(annotation)
        model = None
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            model = annotation
            field = annotation.model_fields.get(str(element))
            annotation = field.annotation if field is not None else Any
        elif get_origin(annotation) in (Union, types.UnionType):
            annotation = Any
            continue
        else:
            arguments = get_args(annotation)
            annotation = arguments[-1] if arguments else Any
        clean.append(element)
    return tuple(clean), model


def _unwrap(annotation: Any) -> Any:
    """The annotation without Annotated[...] and without `| None`."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [member for member in get_args(annotation) if member is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _pydantic_message(detail: Any, loc: tuple[Segment, ...],
                      model: type[pydantic.BaseModel] | None) -> str:
    """pydantic's message, reworded where a plan author needs more (unknown fields, ids)."""
    kind = detail["type"]
    if kind == "extra_forbidden" and loc:
        name = str(loc[-1])
        allowed = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = (f"; did you mean {close[0]!r}?" if close
                else f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"unknown field {excerpt(name)!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and loc[-1:] == ("id",):
        return ("a step id starts with a letter or '_' and has only letters, digits, '_' "
                "and '-'")
    if kind == "string_type" and loc[-1:] in (("timeout",), ("continue_on_error",)):
        return "Input should be a '${...}' reference or a '${= ...}' expression"
    if kind == "string_pattern_mismatch" and loc[-1:] == ("wait_for_event",):
        return ("an event name is one or more letters, digits, '_', '.', ':' and '-' (no "
                "${...} references)")
    return str(detail["msg"])


def _located_issue(data: Any, loc: tuple[Segment, ...], message: str, code: str
                   ) -> ValidationIssue:
    """An issue at `loc` in the plan, with the id of the step it is in when there is one."""
    step_id = None
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = data.steps if isinstance(data, Plan) else data.get("steps")
        if isinstance(steps, list) and 0 <= loc[1] < len(steps):
            step = steps[loc[1]]
            candidate = step.id if isinstance(step, Step) else (
                step.get("id") if isinstance(step, Mapping) else None)
            step_id = excerpt(candidate) if isinstance(candidate, str) else None
    return ValidationIssue(_json_path(loc), message, step_id, code)


def _most_relevant(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For anyOf/oneOf failures, the deepest error of the best-matching branch."""
    return jsonschema.exceptions.best_match([error]) or error


def _json_path(loc: Any, base: str = "$") -> str:
    """`base` extended by the keys and indexes in `loc`."""
    path = base
    for element in loc:
        path = child_path(path, element if isinstance(element, int) else str(element))
    return path
