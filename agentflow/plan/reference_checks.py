"""Checking templates and the references in them: what each reference may see (inputs,
step outputs, item, index) and the JSON types it gives, with suggestions for unknown names.
The base of the plan compiler (see `plan.validation`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from agentflow.errors import ValidationIssue
from agentflow.plan.compiled import SUBPLAN_TOOL_PREFIX, _kinds
from agentflow.plan.models import APPROVAL_OUTPUT_SCHEMA, Plan
from agentflow.plan.references import (
    STEP_STATUSES,
    Reference,
    Scope,
    Template,
    compile_template_checked,
    compile_text_checked,
    excerpt,
    format_path,
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
)
from agentflow.plan.tool_schemas import _ToolSchema
from agentflow.tools import Tool

_STATUS_VIEW: View = (SchemaNode({}, {"type": "string", "enum": list(STEP_STATUSES)}),)
_ERROR_VIEW: View = (SchemaNode({}, {"type": ["string", "null"]}),)
_INDEX_VIEW: View = (SchemaNode({}, {"type": "integer"}),)
_APPROVAL_VIEW: View = (SchemaNode(APPROVAL_OUTPUT_SCHEMA, APPROVAL_OUTPUT_SCHEMA),)
_NULL_VIEW: View = (SchemaNode({}, {"type": "null"}),)
_STRING_TYPES = frozenset({"string"})
_NUMBER_TYPES = frozenset({"number", "integer"})
_NO_SCOPE = Scope(inputs={}, steps={})


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


class _Where(NamedTuple):
    """Where a template is written: which step, and what `item` is there (if it exists)."""

    step_id: str | None
    in_foreach: bool = False
    item: View | None = None


class _ReferenceChecks:
    """The compiler's state and issues, and its checks of templates and references."""

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
