"""Plan validation: plan data in, a `CompiledPlan` out, or every problem at once.

LLMs write plans and repair them from our errors, so `compile_plan` raises nothing but
`PlanValidationError` for bad plan data, whatever the data is, and lists every problem it can
find in one go, each with a JSON path into the plan as written and the step id. Structure is
checked first (pydantic); meaning (tools, arguments, references, graph) only once the
structure holds, since it needs the parsed plan.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan.compiled import (
    STEP_KINDS,
    SUBPLAN_TOOL_PREFIX,
    CompiledPlan,
    CompiledStep,
    StepKind,
    parse_timestamp,
)
from agentflow.plan.graph import topological_order
from agentflow.plan.reference_checks import _Where
from agentflow.plan.references import Template, child_path, excerpt, kind_of
from agentflow.plan.safe_schema import PlanSchemaValidator, pattern_issues
from agentflow.plan.schema_paths import SchemaNode, View, expand
from agentflow.plan.step_checks import _StepChecks, _StepParts
from agentflow.plan.structure import _json_path, _json_problems, parse_plan
from agentflow.plan.tool_schemas import _META_VALIDATOR, _NO_RETRIEVAL, _SCHEMA_FAILURES, _Validator
from agentflow.tools import Tool


def compile_plan(data: Any, tools: Mapping[str, Tool]) -> CompiledPlan:
    """Validate a plan (a dict, a JSON string or a Plan) against `tools` and compile it.

    Raises PlanValidationError listing every problem found; never any other exception for
    bad data.
    """
    return _Compiler(parse_plan(data), tools).compile()


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
    validator = _inputs_validator(schema)
    issues: list[ValidationIssue] = []
    try:
        errors = sorted(validator.iter_errors(values), key=lambda error: error.json_path)
    except _SCHEMA_FAILURES as failure:
        errors = []
        reason = ("its $refs lead back to themselves, or it nests too deeply"
                  if isinstance(failure, RecursionError) else excerpt(str(failure), 200))
        issues.append(ValidationIssue("$.inputs", f"the inputs schema cannot be applied: "
                                      f"{reason}", code="schema"))
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


INPUT_VALIDATORS_KEPT = 256
"""Inputs schemas whose validator is kept (see `_inputs_validator`)."""
_input_validators: dict[int, tuple[dict[str, Any], Any]] = {}


def _inputs_validator(schema: dict[str, Any]) -> Any:
    """The validator of a compiled plan's inputs schema, made once per schema object:
    making one costs more than validating a run's inputs with it. Kept by the schema's
    identity, with the schema itself (so the identity stays its own while kept)."""
    kept = _input_validators.get(id(schema))
    if kept is not None and kept[0] is schema:
        return kept[1]
    validator = PlanSchemaValidator(schema, registry=_NO_RETRIEVAL,
                                    format_checker=_Validator.FORMAT_CHECKER)
    if len(_input_validators) >= INPUT_VALIDATORS_KEPT:
        _input_validators.clear()  # plans come and go: start over rather than track use
    _input_validators[id(schema)] = (schema, validator)
    return validator


class _Compiler(_StepChecks):
    """Checks what a parsed plan means, collecting every issue before raising."""

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


__all__ = [
    "STEP_KINDS",
    "SUBPLAN_TOOL_PREFIX",
    "CompiledPlan",
    "CompiledStep",
    "StepKind",
    "compile_plan",
    "parse_plan",
    "parse_timestamp",
    "validate_inputs",
]
