"""The planner's prompts: the tool catalogue, the plan format or code rules, repair requests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from agentflow.errors import ValidationIssue
from agentflow.llm.schema import encode_strict_plan
from agentflow.plan import plan_schema
from agentflow.sandbox.policy import CATCHABLE_EXCEPTIONS, SAFE_BUILTINS
from agentflow.tools import Tool

PlanKind = Literal["graph", "python"]
GraphMode = Literal["strict", "json"]

_GRAPH_RULES = """\
Rules beyond the schema:
- Use only the tools listed; "args" must match the tool's argument schema, and references
  into a step's output must follow the tool's result schema.
- "foreach" (tool steps only): a list, or "${steps.<id>.output...}" naming a list; the tool is
  called once per item with "${item}" and "${index}" in args; the step's output is the list
  of results.
- An approval step waits for a human: {"id": "ok", "approval": {"prompt": "Deploy?"}}. Its
  output is {approved, by, comment, reason}; a rejection skips the steps that depend on it
  (its "on_reject" can say "fail" or "continue" instead). An "approval" on a tool step gates
  that one call.
- "retry": {"max_attempts": 3, "initial_delay": 1, "retry_on": ["TimeoutError"]} retries a
  failed tool call ("retry_on" lists error type names; omitted, every error is retried).
- "outputs" maps names to values, usually "${steps.<id>.output...}"."""

_STRICT_NOTE = """\
Encoding: "args", "inputs", "outputs" (and "foreach" when it is a literal list) are
JSON-encoded strings, e.g. "args": "{\\"ref\\": \\"${inputs.ref}\\"}". Every field is present;
write null for a field you do not use."""

_EXAMPLE: dict[str, Any] = {
    "format": "agentflow/v1", "name": "release", "description": "Test, then deploy.",
    "inputs": {"type": "object", "properties": {"ref": {"type": "string"}},
               "required": ["ref"]},
    "steps": [
        {"id": "test", "tool": "run_tests", "args": {"ref": "${inputs.ref}"}},
        {"id": "ok", "approval": {"prompt": "Deploy ${inputs.ref}?"},
         "when": "steps.test.output.passed"},
        {"id": "deploy", "tool": "deploy", "args": {"ref": "${inputs.ref}"}, "after": ["ok"],
         "retry": {"max_attempts": 3}},
    ],
    "outputs": {"deployed": "${steps.deploy.output}"},
}

_PYTHON_RULES = f"""\
Write the plan as a short restricted-Python program (a module body):
- Call tools as functions with keyword arguments only: `issue = fetch_issue(number=7)`.
- Plan built-ins: `inputs` (read-only mapping of the run's inputs), `approve(prompt,
  **details) -> bool` (waits for a human decision), `sleep(seconds)`, `wait_for_event(name,
  timeout=None)` (returns the event's payload), `now()` (the current time, recorded),
  `parallel([lambda: ..., ...])` (runs the thunks concurrently, results in order).
- Python built-ins available: {", ".join(sorted(SAFE_BUILTINS))}.
- No imports, classes, `global`, `with`, async code, names or attributes starting with `_`,
  no print/open/eval. Exceptions you may catch or raise: {", ".join(sorted(CATCHABLE_EXCEPTIONS))}
  (a failed tool call raises ToolCallError).
- End with a top-level `return <value>`: it becomes the run's outputs.
Answer with the program in one ```python fenced block."""


def system_prompt(kind: PlanKind, tools: Mapping[str, Tool], *, mode: GraphMode = "strict",
                  inputs_schema: dict[str, Any] | None = None, extra: str | None = None) -> str:
    """The instructions for writing a plan of `kind` with `tools`."""
    parts = ["You write plans for agentflow, which validates a plan and then runs it "
             "durably. Reach the user's goal using only the tools below.",
             "# Tools\n\n" + catalogue(tools)]
    if kind == "python":
        parts.append("# Plan format\n\n" + _PYTHON_RULES)
    else:
        parts.append("# Plan format\n\n" + _graph_format(mode))
    if inputs_schema is not None and not inputs_schema.get("properties"):
        parts.append("# Inputs\n\nThe run has no inputs: write every value into the plan.")
    elif inputs_schema is not None:
        where = "`inputs[...]`" if kind == "python" else '"${inputs.<name>}"'
        parts.append("# Inputs\n\nThe run's inputs follow this JSON Schema (fixed; read them "
                     f"with {where}):\n{_json(inputs_schema)}")
    if extra:
        parts.append(extra)
    return "\n\n".join(parts)


def catalogue(tools: Mapping[str, Tool]) -> str:
    """Each tool's name, description, argument and result schemas."""
    entries = []
    for name, tool in sorted(tools.items()):
        lines = [f"## {name}"]
        if tool.description:
            lines.append(tool.description.strip())
        lines.append(f"Arguments (JSON Schema): {_json(tool.input_schema)}")
        result = _json(tool.output_schema) if tool.output_schema else "any JSON (not described)"
        lines.append(f"Result (JSON Schema): {result}")
        if callable(tool.requires_approval):
            lines.append("Some calls wait for a human approval before they run.")
        elif tool.requires_approval:
            lines.append("Every call waits for a human approval before it runs.")
        entries.append("\n".join(lines))
    return "\n\n".join(entries) if entries else "(no tools)"


def _graph_format(mode: GraphMode) -> str:
    schema = plan_schema()
    head = f"A JSON step graph. {schema['description']}\n\n{_GRAPH_RULES}"
    if mode == "strict":
        example = encode_strict_plan(_EXAMPLE)
        return f"{head}\n\n{_STRICT_NOTE}\n\nExample (tool names are illustrative):\n" \
               f"{_json(example)}"
    return (f"{head}\n\nAnswer with one JSON object, the plan, matching this JSON Schema:\n"
            f"{_json(schema)}\n\nExample (tool names are illustrative):\n{_json(_EXAMPLE)}")


def repair_message(issues: list[ValidationIssue], kind: PlanKind) -> str:
    """The request to fix a rejected plan: one issue per line, path then message."""
    lines = "\n".join(f"- {issue}" for issue in issues)
    again = "the whole corrected program in one ```python block" if kind == "python" \
        else "the whole corrected plan"
    return (f"The plan was rejected by the validator with {len(issues)} issue(s):\n{lines}\n\n"
            f"Fix every issue and answer with {again}.")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)
