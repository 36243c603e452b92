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
from dataclasses import dataclass, replace
from typing import Annotated, Any, Union, get_args, get_origin

import jsonschema
import pydantic
import referencing
import referencing.exceptions

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.conditions import Condition, compile_condition
from agentflow.plan.graph import ancestors, topological_order
from agentflow.plan.models import Plan, Step
from agentflow.plan.references import (
    MAX_DEPTH,
    STEP_STATUSES,
    Reference,
    Scope,
    Segment,
    Template,
    child_path,
    compile_template_checked,
    excerpt,
    format_path,
    kind_of,
)
from agentflow.plan.schema_paths import (
    SchemaNode,
    SchemaPathError,
    View,
    descend,
    describe_types,
    elements,
    expand,
    json_types,
    types_compatible,
)
from agentflow.tools import Tool

STEP_KINDS = ("tool", "approval", "sleep", "wait_until", "wait_for_event", "plan")
_SUPPORTED_KINDS = frozenset({"tool"})
_Validator = jsonschema.Draft202012Validator
_META_VALIDATOR = _Validator(_Validator.META_SCHEMA, format_checker=_Validator.FORMAT_CHECKER)
_NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry()
"""Schemas resolve only their own `$ref`s: validation must never fetch a URL."""
_SCHEMA_FAILURES = (RecursionError, referencing.exceptions.Unresolvable,
                    jsonschema.exceptions.SchemaError)
_STATUS_VIEW: View = (SchemaNode({}, {"type": "string", "enum": list(STEP_STATUSES)}),)
_ERROR_VIEW: View = (SchemaNode({}, {"type": ["string", "null"]}),)
_INDEX_VIEW: View = (SchemaNode({}, {"type": "integer"}),)
_NO_SCOPE = Scope(inputs={}, steps={})


@dataclass(frozen=True)
class CompiledStep:
    """A validated step with everything the executor needs precomputed.

    `dependencies` are the steps it references (in args, when, foreach) plus `after`;
    `ancestors` are their transitive closure; `dependents` are the steps that depend on it
    directly. `tool` is the tool name of a tool step.
    """

    step: Step
    index: int
    dependencies: frozenset[str]
    ancestors: frozenset[str]
    dependents: frozenset[str]
    args: Template
    foreach: Template | None
    condition: Condition | None
    tool: str | None


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
    return _Compiler(_parse(data), tools).compile()


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
    validator = _Validator(schema, registry=_NO_RETRIEVAL,
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


def _parse(data: Any) -> Plan:
    """The Plan model of `data`, or PlanValidationError with every structural problem."""
    if isinstance(data, Plan):
        free_values: dict[tuple[Segment, ...], Any] = {
            ("inputs",): data.inputs, ("outputs",): data.outputs}
        for index, step in enumerate(data.steps):
            for name in ("args", "inputs", "foreach"):
                free_values["steps", index, name] = getattr(step, name)
        issues = [_located_issue(data, (*loc, *inner), message, "json")
                  for loc, value in free_values.items()
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
    issues = [_located_issue(data, loc, message, "json") for loc, message in _json_problems(data)]
    if issues:
        raise PlanValidationError(issues)
    try:
        return Plan.model_validate(data)
    except pydantic.ValidationError as error:
        raise PlanValidationError(_pydantic_issues(error, data)) from None


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


@dataclass(frozen=True)
class _Where:
    """Where a template is written: which step, and what `item` is there (if it exists)."""

    step_id: str | None
    in_foreach: bool = False
    item: View | None = None


@dataclass(frozen=True)
class _StepParts:
    """What `compile_step` makes of a step, before the graph is known."""

    args: Template
    foreach: Template | None
    condition: Condition | None
    dependencies: frozenset[str]


class _Compiler:
    """Checks what a parsed plan means, collecting every issue before raising."""

    def __init__(self, plan: Plan, tools: Mapping[str, Tool]) -> None:
        self.plan = plan
        self.tools = tools
        self.issues: list[ValidationIssue] = []
        self.positions: dict[str, int] = {}
        self.inputs_view: View | None = None
        self.output_views: dict[int, View | None] = {}
        self.validators: dict[str, jsonschema.protocols.Validator] = {}
        self.suggestions_left = 50

    def issue(self, path: str, message: str, step_id: str | None, code: str) -> None:
        self.issues.append(ValidationIssue(path, message, step_id, code))

    def compile(self) -> CompiledPlan:
        for index, step in enumerate(self.plan.steps):
            if step.id in self.positions:
                first = self.positions[step.id]
                self.issue(f"$.steps[{index}].id", f"duplicate step id {excerpt(step.id)!r} "
                           f"(first used by $.steps[{first}])", step.id, "duplicate_id")
            else:
                self.positions[step.id] = index
        self.inputs_view = self.check_inputs_schema()
        parts: dict[str, _StepParts] = {}
        for index, step in enumerate(self.plan.steps):
            part = self.compile_step(index, step)
            if self.positions[step.id] == index:
                parts[step.id] = part
        outputs = self.template(self.plan.outputs, "$.outputs", _Where(None))[0]
        dependencies = {step_id: part.dependencies for step_id, part in parts.items()}
        order, cycles = topological_order(list(parts), dependencies)
        for cycle in cycles:
            self.issue(f"$.steps[{self.positions[cycle[0]]}]", "dependency cycle: "
                       f"{' -> '.join(cycle)} (each step waits for the next)", cycle[0],
                       "cycle")
        if self.issues:
            raise PlanValidationError(self.issues)
        return self.build(parts, order, dependencies, outputs)

    def build(self, parts: dict[str, _StepParts], order: list[str],
              dependencies: dict[str, frozenset[str]], outputs: Template) -> CompiledPlan:
        dependents: dict[str, set[str]] = {step_id: set() for step_id in order}
        for step_id, direct in dependencies.items():
            for dependency in direct:
                dependents[dependency].add(step_id)
        upstream = ancestors(order, dependencies)
        steps = {}
        for step_id in order:
            index = self.positions[step_id]
            part = parts[step_id]
            steps[step_id] = CompiledStep(
                step=self.plan.steps[index], index=index, dependencies=part.dependencies,
                ancestors=upstream[step_id], dependents=frozenset(dependents[step_id]),
                args=part.args, foreach=part.foreach, condition=part.condition,
                tool=self.plan.steps[index].tool)
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
        declared = schema.get("type", "object")
        if declared != "object" and not (isinstance(declared, list) and "object" in declared):
            self.issue("$.inputs.type", "the inputs schema must describe an object (inputs "
                       "are named): use \"type\": \"object\"", None, "schema")
            return None
        return expand(SchemaNode(schema, schema))

    def compile_step(self, index: int, step: Step) -> _StepParts:
        """Check one step (issues are collected); its compiled parts and dependencies."""
        path = f"$.steps[{index}]"
        kind = self.check_kind(step, path)
        foreach, item = self.check_foreach(step, path)
        if step.max_parallel is not None and step.foreach is None:
            self.issue(f"{path}.max_parallel", "max_parallel only applies to a foreach step",
                       step.id, "field")
        if "args" in step.model_fields_set and step.tool is None:
            self.issue(f"{path}.args", "args only belong to a tool step", step.id, "field")
        if step.inputs is not None and step.plan is None:
            hint = "; tool arguments go in args" if step.tool is not None else ""
            self.issue(f"{path}.inputs", f"inputs only belong to a plan step{hint}", step.id,
                       "field")
        args = Template({})
        if step.tool is not None and kind in (None, "tool"):
            args = self.check_tool(step, path, _Where(step.id, step.foreach is not None, item))
        condition = self.check_condition(step, path)
        referenced = [ref for template in (args, foreach) if template is not None
                      for ref in template.references]
        referenced.extend(condition.references if condition is not None else ())
        dependencies = {ref.step for ref in referenced if ref.step is not None
                        and ref.step in self.positions and ref.step != step.id}
        for position, name in enumerate(step.after):
            where = f"{path}.after[{position}]"
            if name == step.id:
                self.issue(where, "a step cannot run after itself", step.id, "cycle")
            elif name not in self.positions:
                self.issue(where, self.unknown_step(name), step.id, "unknown_step")
            else:
                dependencies.add(name)
        return _StepParts(args, foreach, condition, frozenset(dependencies))

    def check_kind(self, step: Step, path: str) -> str | None:
        """The step's kind if it has exactly one that is supported; issues otherwise."""
        kinds = [kind for kind in STEP_KINDS if getattr(step, kind) is not None]
        if not kinds:
            self.issue(path, f"a step needs exactly one of {', '.join(STEP_KINDS)}", step.id,
                       "step_kind")
            return None
        if len(kinds) > 1:
            self.issue(path, f"a step has exactly one kind; this one has {' and '.join(kinds)}",
                       step.id, "step_kind")
            return None
        if kinds[0] not in _SUPPORTED_KINDS:
            self.issue(f"{path}.{kinds[0]}", f"{kinds[0]} steps are not supported yet; use a "
                       "tool step", step.id, "unsupported")
            return None
        return kinds[0]

    def check_tool(self, step: Step, path: str, where: _Where) -> Template:
        """The args template; issues for an unknown tool and arguments its schema rules out."""
        name = step.tool or ""
        tool = self.tools.get(name)
        if tool is None:
            self.issue(f"{path}.tool", self.unknown_tool(name), step.id, "unknown_tool")
        args_path = f"{path}.args"
        schema = tool.input_schema if tool is not None else {}
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", True)
        required = schema.get("required")
        for missing in required if isinstance(required, list) else ():
            if missing not in step.args:
                self.issue(args_path, f"missing required argument {missing!r} for tool "
                           f"{name!r}", step.id, "missing_argument")
        children: dict[str, Template] = {}
        for arg, value in step.args.items():
            arg_path = child_path(args_path, arg)
            template, views, parsed = self.template(value, arg_path, where)
            children[arg] = template
            if tool is None or not parsed:
                continue
            if arg in properties:
                parameter = SchemaNode(schema, properties[arg])
            elif isinstance(extra, dict):
                parameter = SchemaNode(schema, extra)
            elif extra is False:
                close = self.close_matches(arg, properties, 1)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f"; it takes {', '.join(properties) or 'no arguments'}")
                self.issue(arg_path, f"tool {name!r} has no argument {excerpt(arg)!r}{hint}",
                           step.id, "unknown_argument")
                continue
            else:
                continue
            self.check_argument(tool, arg, value, template, views, parameter, arg_path,
                                step.id)
        return Template.mapping(children, step.args)

    def check_argument(self, tool: Tool, arg: str, value: Any, template: Template,
                       views: list[View | None], parameter: SchemaNode, path: str,
                       step_id: str) -> None:
        """Static values must validate; references and strings must have a fitting type."""
        if template.is_static:
            validator = self.validator(tool).evolve(schema=parameter.schema)
            try:  # a static template reads nothing from its scope
                errors = list(validator.iter_errors(template.evaluate(_NO_SCOPE)))
            except _SCHEMA_FAILURES:
                return
            for error in map(_most_relevant, errors):
                self.issue(_json_path(error.absolute_path, path),
                           f"argument {arg!r} of tool {tool.name!r}: "
                           f"{excerpt(error.message, 200)}", step_id, "argument_type")
            return
        whole = template.whole_reference
        if whole is not None:
            source, label = json_types(views[0]), f"${{{excerpt(whole.text)}}}"
        elif isinstance(value, str):
            source, label = frozenset({"string"}), "this text"
        else:
            source = frozenset({"object" if isinstance(value, dict) else "array"})
            label = "this value"
        target = json_types(expand(parameter))
        if not types_compatible(source, target):
            self.issue(path, f"argument {arg!r} of tool {tool.name!r} expects "
                       f"{describe_types(target)}, but {label} is {describe_types(source)}",
                       step_id, "argument_type")

    def validator(self, tool: Tool) -> jsonschema.protocols.Validator:
        if tool.name not in self.validators:
            self.validators[tool.name] = _Validator(tool.input_schema, registry=_NO_RETRIEVAL)
        return self.validators[tool.name]

    def check_foreach(self, step: Step, path: str) -> tuple[Template | None, View | None]:
        """The foreach template and the view of its items (None: unknown)."""
        if step.foreach is None:
            return None, None
        foreach_path = f"{path}.foreach"
        template, views, parsed = self.template(step.foreach, foreach_path, _Where(step.id))
        if isinstance(step.foreach, list) or not parsed:
            return template, None
        whole = template.whole_reference
        if whole is None:
            self.issue(foreach_path, "foreach must be a list or one '${...}' reference to a "
                       "list, such as '${steps.<id>.output.items}'", step.id, "foreach")
            return template, None
        found = json_types(views[0])
        if found is not None and "array" not in found:
            self.issue(foreach_path, f"foreach needs a list, but ${{{excerpt(whole.text)}}} is "
                       f"{describe_types(found)}", step.id, "foreach")
            return template, None
        return template, elements(views[0])

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
        self.issues.extend(replace(issue, step_id=where.step_id) for issue in issues)
        return template, [self.reference_view(ref, where) for ref in template.references], \
            not issues

    def reference_view(self, ref: Reference, where: _Where) -> View | None:
        """Issues for a reference to nothing; the view of the value it reads (None: unknown)."""
        label = f"${{{excerpt(ref.text)}}}"
        if ref.root in ("item", "index"):
            if not where.in_foreach:
                self.issue(ref.json_path, f"{label}: {ref.root} only exists in the args of a "
                           "foreach step", where.step_id, "scope")
                return None
            if ref.root == "index":
                return _INDEX_VIEW
            return self.walk(where.item, ref, where, " (an item of the foreach list)")
        if ref.root == "inputs":
            return self.walk(self.inputs_view, ref, where, " in the plan's inputs schema")
        step_id = ref.step or ""
        if step_id not in self.positions:
            self.issue(ref.json_path, f"{label}: {self.unknown_step(step_id)}", where.step_id,
                       "unknown_step")
            return None
        if step_id == where.step_id:
            self.issue(ref.json_path, f"{label}: a step cannot use its own result",
                       where.step_id, "cycle")
            return None
        if ref.field == "status":
            return _STATUS_VIEW
        if ref.field == "error":
            return _ERROR_VIEW
        producer = self.plan.steps[self.positions[step_id]]
        return self.walk(self.output_view(producer), ref, where,
                         f" in the output schema of tool {producer.tool!r}")

    def walk(self, view: View | None, ref: Reference, where: _Where, schema_name: str
             ) -> View | None:
        """The view at the reference's path, or an issue naming the first segment ruled out."""
        try:
            return descend(view, ref.path)
        except SchemaPathError as error:
            walked = format_path(ref.head, ref.path[: error.index])
            self.issue(ref.json_path, f"${{{excerpt(ref.text)}}}: {walked} {error.detail}"
                       f"{schema_name}", where.step_id, "unknown_field")
            return None

    def output_view(self, producer: Step) -> View | None:
        """What a step's output looks like: its tool's output schema (a list for foreach)."""
        index = self.positions[producer.id]
        if index not in self.output_views:
            tool = self.tools.get(producer.tool or "")
            view = None
            if tool is not None and tool.output_schema is not None:
                schema = tool.output_schema
                node = SchemaNode(schema, schema)
                if producer.foreach is not None:
                    node = SchemaNode(schema, {"type": "array", "items": schema})
                view = expand(node)
            self.output_views[index] = view
        return self.output_views[index]

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


