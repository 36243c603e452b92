"""Plan validation: plan data in, a `CompiledPlan` out, or every problem at once.

LLMs write plans and repair them from our errors, so `compile_plan` raises nothing but
`PlanValidationError` for bad plan data, whatever the data is, and lists every problem it can
find in one go, each with a JSON path into the plan as written and the step id. Structure is
checked first (pydantic); meaning (tools, arguments, references, graph) only once the
structure holds, since it needs the parsed plan.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import jsonschema
import pydantic
import referencing
import referencing.exceptions

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.conditions import Condition, compile_condition
from agentflow.plan.graph import topological_order
from agentflow.plan.models import APPROVAL_OUTPUT_SCHEMA, Plan, Step
from agentflow.plan.references import (
    MAX_DEPTH,
    STEP_STATUSES,
    Reference,
    Scope,
    Segment,
    Template,
    child_path,
    compile_template_checked,
    compile_text_checked,
    excerpt,
    format_path,
    kind_of,
)
from agentflow.plan.safe_schema import PlanSchemaValidator, UnsafePattern, pattern_issues
from agentflow.plan.schema_paths import (
    SchemaNode,
    SchemaPathError,
    View,
    descend,
    describe_types,
    elements,
    expand,
    json_type,
    json_types,
    types_compatible,
)
from agentflow.tools import Tool

StepKind = Literal["tool", "approval", "sleep", "wait_until", "wait_for_event", "plan"]
SUBPLAN_TOOL_PREFIX = "plan:"
"""A plan step's inputs are checked like a tool's arguments, against the tool named
"plan:" + the step's `plan` (the child plan's inputs schema), which the caller supplies:
validation itself knows no registry of plans."""
STEP_KINDS = ("tool", "approval", "sleep", "wait_until", "wait_for_event", "plan")
"""The fields that make a step's kind; a step has exactly one (approval may gate a tool)."""
_Validator = jsonschema.Draft202012Validator
_META_VALIDATOR = _Validator(_Validator.META_SCHEMA, format_checker=_Validator.FORMAT_CHECKER)
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()
"""Schemas resolve only their own `$ref`s: validation must never fetch a URL."""
_SCHEMA_FAILURES = (RecursionError, referencing.exceptions.Unresolvable,
                    jsonschema.exceptions.SchemaError, UnsafePattern)
_STATUS_VIEW: View = (SchemaNode({}, {"type": "string", "enum": list(STEP_STATUSES)}),)
_ERROR_VIEW: View = (SchemaNode({}, {"type": ["string", "null"]}),)
_INDEX_VIEW: View = (SchemaNode({}, {"type": "integer"}),)
_APPROVAL_VIEW: View = (SchemaNode(APPROVAL_OUTPUT_SCHEMA, APPROVAL_OUTPUT_SCHEMA),)
_NULL_VIEW: View = (SchemaNode({}, {"type": "null"}),)
_STRING_TYPES = frozenset({"string"})
_NUMBER_TYPES = frozenset({"number", "integer"})
_ANNOTATIONS = frozenset({"type", "title", "description", "default", "examples"})
"""Keywords of a parameter schema that a value's JSON type alone satisfies (with `type`)."""
_NO_SCOPE = Scope(inputs={}, steps={})


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """A validated step with everything the executor needs precomputed.

    `kind` is what the step does:

    - "tool": call `tool` (its name) with `args`, once per item of `foreach` when set. When
      `step.approval` is set, each call first waits for a human decision on its resolved
      args; `prompt` is then the text shown (evaluated in the call's scope, so a foreach
      step's prompt may use `${item}` and `${index}`).
    - "approval": wait for a human decision on `prompt` (settings in `step.approval`); the
      output is the decision (`APPROVAL_OUTPUT_SCHEMA`).
    - "sleep": wait `step.sleep` seconds. "wait_until": wait until the time `wait_until`
      evaluates to (an ISO-8601 string with a timezone: `parse_timestamp`; checked at compile
      time when static). "wait_for_event": wait for the event named `step.wait_for_event`,
      giving up after `step.timeout` seconds when set; the output is the event's payload.
      Sleep and wait_until steps output None.

    `args` is an empty static template except on tool steps; `prompt` (a text template: it
    always evaluates to a string) is set exactly when `step.approval` is; `foreach` only on
    tool steps. `dependencies` are the steps it references (in args, foreach, prompt,
    wait_until and when) plus `after`; `dependents` are the steps that depend on it directly.
    Nothing transitive is precomputed: its size is quadratic in the length of a chain.
    """

    step: Step
    index: int
    kind: StepKind
    dependencies: frozenset[str]
    dependents: frozenset[str]
    args: Template
    foreach: Template | None
    condition: Condition | None
    tool: str | None
    prompt: Template | None = None
    wait_until: Template | None = None
    timeout: Template | None = None
    continue_on_error: Template | None = None


@dataclass(frozen=True)
class CompiledPlan:
    """A validated plan: its steps in dependency order (ties in plan order) and its identity.

    `canonical_json` is the plan without default values, keys sorted, compact; `plan_hash` is
    its sha256, which pins a run to the exact plan that started it.
    """

    plan: Plan
    plan_hash: str
    canonical_json: str
    steps: dict[str, CompiledStep]
    outputs: Template


def compile_plan(data: Any, tools: Mapping[str, Tool]) -> CompiledPlan:
    """Validate a plan (a dict, a JSON string or a Plan) against `tools` and compile it.

    Raises PlanValidationError listing every problem found; never any other exception for
    bad data.
    """
    return _Compiler(parse_plan(data), tools).compile()


def parse_timestamp(text: str) -> datetime:
    """An ISO-8601 time with a timezone (`2025-01-31T09:00:00+01:00`, `...Z`), as a datetime.

    Raises ValueError saying what is wrong; the executor uses it on the value a `wait_until`
    reference resolves to.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{excerpt(text)!r} is not an ISO-8601 time such as "
                         "'2025-01-31T09:00:00+00:00'") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{excerpt(text)!r} has no timezone; add one, such as 'Z' or "
                         "'+01:00'")
    return moment


def validate_inputs(compiled: CompiledPlan, inputs: Any) -> dict[str, Any]:
    """The run's inputs with the defaults of the plan's input schema filled in.

    Raises PlanValidationError(what="inputs") listing each problem at `$.inputs...`.
    """
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        raise PlanValidationError([ValidationIssue(
            "$.inputs", f"inputs must be an object, not {kind_of(inputs)}", code="type")],
            what="inputs")
    values = dict(inputs)
    problems = [ValidationIssue(_json_path(("inputs", *loc)), message, code="json")
                for loc, message in _json_problems(values)]
    if problems:
        raise PlanValidationError(problems, what="inputs")
    schema = compiled.plan.inputs
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, spec in properties.items():
            if name not in values and isinstance(spec, dict) and "default" in spec:
                values[name] = copy.deepcopy(spec["default"])
    validator = PlanSchemaValidator(schema, registry=_NO_RETRIEVAL,
                                    format_checker=_Validator.FORMAT_CHECKER)
    issues: list[ValidationIssue] = []
    try:
        errors = sorted(validator.iter_errors(values), key=lambda error: error.json_path)
    except _SCHEMA_FAILURES as failure:
        errors = []
        issues.append(ValidationIssue("$.inputs", f"the inputs schema cannot be applied: "
                                      f"{excerpt(str(failure), 200)}", code="schema"))
    missing_reported: set[str] = set()
    for error in errors:
        base = _json_path(("inputs", *error.absolute_path))
        if error.validator == "required" and isinstance(error.instance, dict):
            # jsonschema reports each missing name with the whole list: report each once
            missing = [child_path(base, name) for name in error.validator_value
                       if name not in error.instance]
            issues.extend(ValidationIssue(path, "required input is missing",
                                          code="missing_input")
                          for path in missing if path not in missing_reported)
            missing_reported.update(missing)
        else:
            issues.append(ValidationIssue(base, excerpt(error.message, 300), code="input"))
    if issues:
        raise PlanValidationError(issues, what="inputs")
    return values


# -- structure ------------------------------------------------------------------------


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


# -- meaning ----------------------------------------------------------------------------


def template_types(template: Template, views: list[View | None]
                   ) -> frozenset[str] | None:
    """The JSON types a template that is one reference or one expression may give (None:
    unknown); `views` are those of its references, in order."""
    if template.whole_reference is not None:
        return json_types(views[0])
    expression = template.whole_expression
    if expression is None:
        return None
    by_reference = {id(ref): view for ref, view in zip(template.references, views, strict=True)}

    def lookup(ref: Reference) -> frozenset[str] | None:
        if ref.projection is not None:
            return frozenset({"array", "null"})
        return json_types(by_reference.get(id(ref)))

    found: frozenset[str] | None = expression.result_types(lookup)
    return found


def written(template: Template) -> str:
    """How a whole reference or expression is written, for messages."""
    if template.whole_reference is not None:
        return f"${{{excerpt(template.whole_reference.text)}}}"
    return f"${{= {excerpt(template.whole_expression.text)}}}"


def _kinds(step: Step) -> list[StepKind | Literal["plan"]]:
    """The kinds a step states; an approval alongside a tool is that call's gate, not a kind."""
    kinds: list[StepKind | Literal["plan"]] = []
    if step.tool is not None:
        kinds.append("tool")
    elif step.approval is not None:
        kinds.append("approval")
    if step.sleep is not None:
        kinds.append("sleep")
    if step.wait_until is not None:
        kinds.append("wait_until")
    if step.wait_for_event is not None:
        kinds.append("wait_for_event")
    if step.plan is not None:
        kinds.append("plan")
    return kinds


class _Where(NamedTuple):
    """Where a template is written: which step, and what `item` is there (if it exists)."""

    step_id: str | None
    in_foreach: bool = False
    item: View | None = None


class _StepParts(NamedTuple):
    """What `compile_step` makes of a step, before the graph is known."""

    kind: StepKind | None
    args: Template
    foreach: Template | None
    condition: Condition | None
    prompt: Template | None
    wait_until: Template | None
    dependencies: frozenset[str]
    timeout: Template | None = None
    continue_on_error: Template | None = None


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


class _Compiler:
    """Checks what a parsed plan means, collecting every issue before raising."""

    def __init__(self, plan: Plan, tools: Mapping[str, Tool]) -> None:
        self.plan = plan
        self.tools = tools
        self.issues: list[ValidationIssue] = []
        self.positions: dict[str, int] = {}
        self.kinds = [_kinds(step) for step in plan.steps]
        self.inputs_view: View | None = None
        self.tool_schemas: dict[str, _ToolSchema | None] = {}
        self.tool_outputs: dict[tuple[str, bool], View | None] = {}
        self.suggestions_left = 50

    def issue(self, path: str, message: str, step_id: str | None, code: str) -> None:
        self.issues.append(ValidationIssue(path, message, step_id, code))

    def compile(self) -> CompiledPlan:
        positions = self.positions
        for index, step in enumerate(self.plan.steps):
            if step.id in positions:
                first = positions[step.id]
                self.issue(f"$.steps[{index}].id", f"duplicate step id {excerpt(step.id)!r} "
                           f"(first used by $.steps[{first}])", step.id, "duplicate_id")
            else:
                positions[step.id] = index
        self.inputs_view = self.check_inputs_schema()
        parts: dict[str, _StepParts] = {}
        for index, step in enumerate(self.plan.steps):
            part = self.compile_step(index, step)
            if positions[step.id] == index:
                parts[step.id] = part
        outputs = self.template(self.plan.outputs, "$.outputs", _Where(None))[0]
        dependencies = {step_id: part.dependencies for step_id, part in parts.items()}
        order, cycles = topological_order(list(parts), dependencies)
        for cycle in cycles:
            self.issue(f"$.steps[{positions[cycle[0]]}]", "dependency cycle: "
                       f"{' -> '.join(cycle)} (each step waits for the next)", cycle[0],
                       "cycle")
        if self.issues:
            raise PlanValidationError(self.issues)
        return self.build(parts, order, dependencies, outputs)

    def build(self, parts: dict[str, _StepParts], order: list[str],
              dependencies: dict[str, frozenset[str]], outputs: Template) -> CompiledPlan:
        dependents: dict[str, list[str]] = {step_id: [] for step_id in order}
        for step_id, direct in dependencies.items():
            for dependency in direct:
                dependents[dependency].append(step_id)
        plan_steps = self.plan.steps
        steps = {}
        for step_id in order:
            index = self.positions[step_id]
            part = parts[step_id]
            step = plan_steps[index]
            assert part.kind is not None, "a step without a kind is an issue"
            steps[step_id] = CompiledStep(
                step=step, index=index, kind=part.kind, dependencies=part.dependencies,
                dependents=frozenset(dependents[step_id]), args=part.args,
                foreach=part.foreach, condition=part.condition, tool=step.tool,
                prompt=part.prompt, wait_until=part.wait_until, timeout=part.timeout,
                continue_on_error=part.continue_on_error)
        canonical = json.dumps(self.plan.model_dump(mode="json", exclude_defaults=True),
                               sort_keys=True, separators=(",", ":"), allow_nan=False)
        return CompiledPlan(plan=self.plan, canonical_json=canonical, steps=steps,
                            plan_hash=hashlib.sha256(canonical.encode()).hexdigest(),
                            outputs=outputs)

    def check_inputs_schema(self) -> View | None:
        """Issues for an inputs schema that is not a JSON Schema of an object; its view."""
        schema = self.plan.inputs
        try:
            errors = list(_META_VALIDATOR.iter_errors(schema))
        except _SCHEMA_FAILURES:
            self.issue("$.inputs", "the inputs schema is too complex to check", None, "schema")
            return None
        for error in errors:
            self.issue(_json_path(("inputs", *error.absolute_path)),
                       f"not a valid JSON Schema: {excerpt(error.message, 200)}", None, "schema")
        if errors:
            return None
        unsafe = list(pattern_issues(schema, "$.inputs"))
        for path, message in unsafe:
            self.issue(path, message, None, "unsafe_pattern")
        if unsafe:
            return None
        declared = schema.get("type", "object")
        if declared != "object" and not (isinstance(declared, list) and "object" in declared):
            self.issue("$.inputs.type", "the inputs schema must describe an object (inputs "
                       "are named): use \"type\": \"object\"", None, "schema")
            return None
        return expand(SchemaNode(schema, schema))

    def compile_step(self, index: int, step: Step) -> _StepParts:
        """Check one step (issues are collected); its compiled parts and dependencies."""
        path = f"$.steps[{index}]"
        step_id = step.id
        kind = self.check_kind(step, self.kinds[index], path)
        self.check_fields(step, path)
        foreach: Template | None = None
        args = Template({})
        prompt = wait_until = None
        where = _Where(step_id)
        if step.tool is not None:
            foreach, item = self.check_foreach(step, path)
            if step.foreach is not None:
                where = _Where(step_id, True, item)
            args = self.check_tool(step, path, where)
        if step.plan is not None:
            args = self.check_subplan(step, path, where)
        if step.approval is not None:
            prompt = self.text_template(step.approval.prompt, f"{path}.approval.prompt", where)
        if step.wait_until is not None:
            wait_until = self.check_wait_until(step, path)
        condition = self.check_condition(step, path)
        timeout = self.check_computed(step, step.timeout, f"{path}.timeout", _NUMBER_TYPES,
                                      "a number of seconds")
        continues = self.check_computed(step, step.continue_on_error,
                                        f"{path}.continue_on_error", None, "true or false")
        references = [*args.references]
        for template in (foreach, prompt, wait_until, condition, timeout, continues):
            if template is not None:
                references.extend(template.references)
        positions = self.positions
        dependencies = {ref.step for ref in references
                        if ref.step in positions and ref.step != step_id}
        for position, name in enumerate(step.after):
            where_after = f"{path}.after[{position}]"
            if name == step_id:
                self.issue(where_after, "a step cannot run after itself", step_id, "cycle")
            elif name not in positions:
                self.issue(where_after, self.unknown_step(name), step_id, "unknown_step")
            else:
                dependencies.add(name)
        return _StepParts(kind, args, foreach, condition, prompt, wait_until,
                          frozenset(dependencies), timeout, continues)

    def check_computed(self, step: Step, value: Any, path: str,
                       target: frozenset[str] | None, wanted: str) -> Template | None:
        """A setting given as one reference or expression (`timeout`, `continue_on_error`):
        its template, with issues unless it is exactly one and may give `target`'s types.
        Literal settings were checked by the model; their template is None."""
        if not isinstance(value, str):
            return None
        template, views, parsed = self.template(value, path, _Where(step.id))
        if not parsed:
            return None
        if template.whole_reference is None and template.whole_expression is None:
            self.issue(path, f"{path.rsplit('.', 1)[-1]} must be {wanted}, or one '${{...}}' "
                       "reference or '${= ...}' expression giving it", step.id, "field")
            return None
        found = template_types(template, views)
        if not types_compatible(found, target):
            self.issue(path, f"{path.rsplit('.', 1)[-1]} needs {wanted}, but "
                       f"{written(template)} is {describe_types(found)}", step.id, "field")
        return template

    def check_kind(self, step: Step, kinds: list[StepKind | Literal["plan"]], path: str
                   ) -> StepKind | None:
        """The step's kind if it has exactly one that is supported; issues otherwise."""
        if not kinds:
            self.issue(path, f"a step needs exactly one of {', '.join(STEP_KINDS)}", step.id,
                       "step_kind")
            return None
        if len(kinds) > 1:
            hint = (" (approval can only be combined with tool, as a gate on its call)"
                    if kinds[0] == "approval" else "")
            self.issue(path, f"a step has exactly one kind; this one has {' and '.join(kinds)}"
                       f"{hint}", step.id, "step_kind")
            return None
        return kinds[0]

    def check_fields(self, step: Step, path: str) -> None:
        """Issues for fields that do not apply to the step's kind."""
        if step.max_parallel is not None and step.foreach is None:
            self.issue(f"{path}.max_parallel", "max_parallel only applies to a foreach step",
                       step.id, "field")
        if step.tool is None:
            if "args" in step.model_fields_set:
                self.issue(f"{path}.args", "args only belong to a tool step", step.id, "field")
            if step.foreach is not None:
                self.issue(f"{path}.foreach", "foreach only applies to a tool step", step.id,
                           "field")
            if step.retry is not None:
                self.issue(f"{path}.retry", "retry only applies to a tool step", step.id,
                           "field")
            if step.timeout is not None and step.wait_for_event is None:
                hint = ("; an approval expires after approval.expires_in seconds"
                        if step.approval is not None else "")
                self.issue(f"{path}.timeout", "timeout only applies to a tool step or a "
                           f"wait_for_event step{hint}", step.id, "field")
        if step.inputs is not None and step.plan is None:
            hint = "; tool arguments go in args" if step.tool is not None else ""
            self.issue(f"{path}.inputs", f"inputs only belong to a plan step{hint}", step.id,
                       "field")

    def check_tool(self, step: Step, path: str, where: _Where) -> Template:
        """The args template; issues for an unknown tool and arguments its schema rules out."""
        name = step.tool or ""
        schema = self.tool_schema(name)
        args_path = f"{path}.args"
        if schema is None:
            self.issue(f"{path}.tool", self.unknown_tool(name), step.id, "unknown_tool")
        else:
            for missing in schema.required:
                if missing not in step.args:
                    self.issue(args_path, f"missing required argument {missing!r} for tool "
                               f"{name!r}", step.id, "missing_argument")
        children: dict[str, Template] = {}
        for arg, value in step.args.items():
            arg_path = child_path(args_path, arg)
            template, views, parsed = self.template(value, arg_path, where)
            children[arg] = template
            if schema is None or not parsed:
                continue
            parameter = schema.parameter(arg)
            if parameter is not None:
                self.check_argument(schema, parameter, arg, value, template, views, arg_path,
                                    step.id)
            elif schema.extra is False:
                close = self.close_matches(arg, schema.properties, 1)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f"; it takes {', '.join(schema.properties) or 'no arguments'}")
                self.issue(arg_path, f"tool {name!r} has no argument {excerpt(arg)!r}{hint}",
                           step.id, "unknown_argument")
        return Template.mapping(children, step.args)

    def check_subplan(self, step: Step, path: str, where: _Where) -> Template:
        """A plan step's inputs template, checked against the child plan's inputs schema
        (the tool "plan:NAME"); an issue when no such plan is known."""
        name = f"{SUBPLAN_TOOL_PREFIX}{step.plan}"
        if self.tools.get(name) is None:
            self.issue(f"{path}.plan", f"unknown plan {step.plan!r}: a plan step runs a plan "
                       "registered for the tenant (tenant.plans.put)", step.id, "unknown_plan")
            return Template({})
        as_call = step.model_copy(update={"tool": name, "args": step.inputs or {}})
        return self.check_tool(as_call, path, where)

    def tool_schema(self, name: str) -> _ToolSchema | None:
        """The taken-apart input schema of tool `name`; None for an unknown tool."""
        if name not in self.tool_schemas:
            tool = self.tools.get(name)
            self.tool_schemas[name] = _ToolSchema.of(tool) if tool is not None else None
        return self.tool_schemas[name]

    def check_argument(self, schema: _ToolSchema, parameter: _Parameter, arg: str, value: Any,
                       template: Template, views: list[View | None], path: str,
                       step_id: str) -> None:
        """Static values must validate; references and strings must have a fitting type."""
        name = schema.tool.name
        if template.is_static:
            try:  # a static template reads nothing from its scope
                errors = schema.validates(parameter, template.evaluate(_NO_SCOPE))
            except _SCHEMA_FAILURES:
                return
            for error in map(_most_relevant, errors):
                self.issue(_json_path(error.absolute_path, path),
                           f"argument {arg!r} of tool {name!r}: "
                           f"{excerpt(error.message, 200)}", step_id, "argument_type")
            return
        whole = template.whole_reference
        if whole is not None or template.whole_expression is not None:
            source = template_types(template, views)
        elif isinstance(value, str):
            source = _STRING_TYPES
        else:
            source = frozenset({"object" if isinstance(value, dict) else "array"})
        target = parameter.types
        if not types_compatible(source, target):
            label = (written(template) if whole is not None or template.whole_expression
                     else "this text" if isinstance(value, str) else "this value")
            self.issue(path, f"argument {arg!r} of tool {name!r} expects "
                       f"{describe_types(target)}, but {label} is {describe_types(source)}",
                       step_id, "argument_type")

    def check_foreach(self, step: Step, path: str) -> tuple[Template | None, View | None]:
        """The foreach template and the view of its items (None: unknown)."""
        if step.foreach is None:
            return None, None
        foreach_path = f"{path}.foreach"
        template, views, parsed = self.template(step.foreach, foreach_path, _Where(step.id))
        if isinstance(step.foreach, list) or not parsed:
            return template, None
        whole = template.whole_reference
        if whole is None and template.whole_expression is None:
            self.issue(foreach_path, "foreach must be a list, or one '${...}' reference or "
                       "'${= ...}' expression giving one, such as "
                       "'${steps.<id>.output.items}'", step.id, "foreach")
            return template, None
        found = template_types(template, views)
        if found is not None and "array" not in found:
            self.issue(foreach_path, f"foreach needs a list, but {written(template)} is "
                       f"{describe_types(found)}", step.id, "foreach")
            return template, None
        return template, elements(views[0]) if whole is not None else None

    def check_wait_until(self, step: Step, path: str) -> Template:
        """The wait_until template: a static time with a timezone, or one reference to text."""
        where = f"{path}.wait_until"
        template, views, parsed = self.template(step.wait_until, where, _Where(step.id))
        if not parsed:
            return template
        if template.is_static:
            value = template.evaluate(_NO_SCOPE)
            try:
                parse_timestamp(value)
            except ValueError as error:
                self.issue(where, f"wait_until: {error}", step.id, "wait_until")
            return template
        if template.whole_reference is None and template.whole_expression is None:
            self.issue(where, "wait_until must be an ISO-8601 time with a timezone, or one "
                       "'${...}' reference to one such as '${inputs.deadline}' (or one "
                       "'${= ...}' expression)", step.id, "wait_until")
            return template
        found = template_types(template, views)
        if not types_compatible(found, _STRING_TYPES):
            self.issue(where, f"wait_until needs an ISO-8601 time (a string), but "
                       f"{written(template)} is {describe_types(found)}", step.id,
                       "wait_until")
        return template

    def check_condition(self, step: Step, path: str) -> Condition | None:
        """The compiled `when`, its syntax and references checked (never item or index)."""
        if step.when is None:
            return None
        try:
            condition = compile_condition(step.when, f"{path}.when")
        except PlanValidationError as error:
            self.issues.extend(replace(issue, step_id=step.id) for issue in error.issues)
            return None
        for reference in condition.references:
            self.reference_view(reference, _Where(step.id))
        return condition

    def template(self, value: Any, path: str, where: _Where
                 ) -> tuple[Template, list[View | None], bool]:
        """The compiled value, the view of each of its references, and whether it parsed."""
        template, issues = compile_template_checked(value, path)
        if issues:
            self.issues.extend(replace(issue, step_id=where.step_id) for issue in issues)
        return template, [self.reference_view(ref, where) for ref in template.references], \
            not issues

    def text_template(self, text: str, path: str, where: _Where) -> Template:
        """A compiled text (every reference interpolated), its references checked."""
        template, issues = compile_text_checked(text, path)
        if issues:
            self.issues.extend(replace(issue, step_id=where.step_id) for issue in issues)
        for reference in template.references:
            self.reference_view(reference, where)
        return template

    def reference_view(self, ref: Reference, where: _Where) -> View | None:
        """Issues for a reference to nothing; the view of the value it reads (None: unknown).
        A projection (`list[*].name`) is checked on both sides of the `[*]`; its view is
        unknown (expressions know it is a list)."""
        view = self.plain_view(ref, where)
        if ref.projection is None:
            return view
        found = json_types(view)
        if found is not None and "array" not in found:
            self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: {format_path(ref.head, ref.path)}"
                       f" is {describe_types(found)}, so [*] has no items to project",
                       where.step_id, "unknown_field")
            return None
        try:
            descend(elements(view), ref.projection)
        except SchemaPathError as error:
            walked = format_path("[*]", ref.projection[: error.index])
            self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: "
                       f"{format_path(ref.head, ref.path)}{walked} {error.detail}",
                       where.step_id, "unknown_field")
        return None

    def plain_view(self, ref: Reference, where: _Where) -> View | None:
        """`reference_view` of the part of the path before any projection."""
        if ref.root in ("item", "index"):
            if not where.in_foreach:
                self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: {ref.root} only exists "
                           "in a foreach step's args (and approval prompt)", where.step_id,
                           "scope")
                return None
            if ref.root == "index":
                return _INDEX_VIEW
            return self.walk(where.item, ref, where, " (an item of the foreach list)")
        if ref.root == "inputs":
            return self.walk(self.inputs_view, ref, where, " in the plan's inputs schema")
        step_id = ref.step or ""
        index = self.positions.get(step_id)
        if index is None:
            self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: {self.unknown_step(step_id)}",
                       where.step_id, "unknown_step")
            return None
        if step_id == where.step_id:
            self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: a step cannot use its own "
                       "result", where.step_id, "cycle")
            return None
        if ref.field == "status":
            return _STATUS_VIEW
        if ref.field == "error":
            return _ERROR_VIEW
        view = self.output_view(index)
        if not ref.path:
            return view
        try:
            return descend(view, ref.path)
        except SchemaPathError as error:
            self.path_issue(ref, where, error, self.output_source(index))
            return None

    def walk(self, view: View | None, ref: Reference, where: _Where, schema_name: str
             ) -> View | None:
        """The view at the reference's path, or an issue naming the first segment ruled out."""
        try:
            return descend(view, ref.path)
        except SchemaPathError as error:
            self.path_issue(ref, where, error, schema_name)
            return None

    def path_issue(self, ref: Reference, where: _Where, error: SchemaPathError,
                   schema_name: str) -> None:
        walked = format_path(ref.head, ref.path[: error.index])
        self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: {walked} {error.detail}"
                   f"{schema_name}", where.step_id, "unknown_field")

    def output_view(self, index: int) -> View | None:
        """What step `index`'s output looks like (None: unknown).

        A tool step's is its tool's output schema (a list of them for foreach); a plan
        step's the child plan's outputs; an approval step's is the decision; sleep and
        wait_until steps output null; an event's payload,
        an unknown tool's or a step without a valid kind's output is unknown.
        """
        kinds = self.kinds[index]
        kind = kinds[0] if len(kinds) == 1 else None
        if kind == "tool":
            producer = self.plan.steps[index]
            return self.tool_output(producer.tool or "", producer.foreach is not None)
        if kind == "plan":  # the child's outputs, as the tool "plan:NAME" describes them
            return self.tool_output(f"{SUBPLAN_TOOL_PREFIX}{self.plan.steps[index].plan}",
                                    False)
        if kind == "approval":
            return _APPROVAL_VIEW
        if kind in ("sleep", "wait_until"):
            return _NULL_VIEW
        return None

    def output_source(self, index: int) -> str:
        """Where `output_view` comes from, for messages."""
        kinds = self.kinds[index]
        if kinds == ["tool"]:
            return f" in the output schema of tool {self.plan.steps[index].tool!r}"
        if kinds == ["approval"]:
            return " in the output of an approval step"
        if kinds == ["plan"]:
            return f" in the outputs of plan {self.plan.steps[index].plan!r}"
        return f" ({kinds[0]} steps output null)"

    def tool_output(self, name: str, foreach: bool) -> View | None:
        """The view of a tool's output schema (of a list of outputs for foreach), once."""
        key = (name, foreach)
        if key not in self.tool_outputs:
            tool = self.tools.get(name)
            view = None
            if tool is not None and tool.output_schema is not None:
                schema = tool.output_schema
                node = SchemaNode(schema, schema)
                if foreach:
                    node = SchemaNode(schema, {"type": "array", "items": schema})
                view = expand(node)
            self.tool_outputs[key] = view
        return self.tool_outputs[key]

    def close_matches(self, name: str, candidates: Iterable[str], count: int) -> list[str]:
        """Names like `name`, for the first few unknown names only (difflib is slow)."""
        if self.suggestions_left <= 0:
            return []
        self.suggestions_left -= 1
        return difflib.get_close_matches(name, list(candidates), n=count)

    def unknown_step(self, name: str) -> str:
        close = self.close_matches(name, self.positions, 1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown step {excerpt(name)!r}{hint}"

    def unknown_tool(self, name: str) -> str:
        if not self.tools:
            return f"unknown tool {excerpt(name)!r}: no tools were given"
        close = self.close_matches(name, self.tools, 3)
        if close:
            return f"unknown tool {excerpt(name)!r}; did you mean {' or '.join(map(repr, close))}?"
        known = sorted(self.tools)
        more = f" and {len(known) - 20} more" if len(known) > 20 else ""
        return f"unknown tool {excerpt(name)!r}; known tools: {', '.join(known[:20])}{more}"
