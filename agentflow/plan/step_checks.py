"""Checking one step: its kind, fields, tool or sub-plan and arguments, foreach, wait and
condition (part of the plan compiler, see `plan.validation`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, NamedTuple

from agentflow.errors import PlanValidationError
from agentflow.plan.compiled import STEP_KINDS, SUBPLAN_TOOL_PREFIX, StepKind, parse_timestamp
from agentflow.plan.conditions import Condition, compile_condition
from agentflow.plan.models import Step
from agentflow.plan.reference_checks import (
    _NO_SCOPE,
    _NUMBER_TYPES,
    _STRING_TYPES,
    _ReferenceChecks,
    _Where,
    template_types,
    written,
)
from agentflow.plan.references import Template, child_path, excerpt
from agentflow.plan.schema_paths import View, describe_types, elements, types_compatible
from agentflow.plan.structure import _json_path, _most_relevant
from agentflow.plan.tool_schemas import _SCHEMA_FAILURES, _Parameter, _ToolSchema


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


class _StepChecks(_ReferenceChecks):
    """The compiler's checks of each step, before the graph is known."""

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
            if step.retry is not None and step.plan is None:
                self.issue(f"{path}.retry", "retry only applies to a tool step or a plan "
                           "step", step.id, "field")
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
                       "registered for the tenant; register it with tenant.plans.put or "
                       f"`agentflow plans put {step.plan} FILE`", step.id, "unknown_plan")
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
