"""Goal in, validated plan out: prompt the model, validate its plan, send issues back to fix.

A graph plan is requested through structured outputs with the strict plan schema
(`agentflow.llm.schema`); an endpoint that refuses strict `json_schema` (or `strict=False`)
gets JSON mode plus the plain plan schema in the prompt instead. A code plan is requested
as a ```python block. Either way the answer is validated exactly as `execute_plan` would
validate it, and every rejection goes back to the model as a repair request listing the
issues (path and message, one per line), up to `max_repairs` rounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import openai

from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.llm.chat import (
    JSON_OBJECT_FORMAT,
    Answer,
    Message,
    ask,
    client_or_default,
    cut_off_note,
    json_schema_format,
    schema_refused,
)
from agentflow.llm.errors import PlanningFailed
from agentflow.llm.prompts import GraphMode, PlanKind, repair_message, system_prompt
from agentflow.llm.schema import decode_strict_plan, strict_plan_schema
from agentflow.plan import compile_plan
from agentflow.plan.code import CodePlan
from agentflow.sandbox import compile_code_plan
from agentflow.tools import Tool, tool_registry

ToolsArg = Iterable[Tool | Callable[..., Any]]
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@overload
def plan_for(goal: str, *, tools: ToolsArg, client: openai.OpenAI | None = None, model: str,
             kind: Literal["graph"] = "graph", max_repairs: int = 2, strict: bool = True,
             inputs_schema: dict[str, Any] | None = None,
             system_prompt: str | None = None) -> dict[str, Any]: ...


@overload
def plan_for(goal: str, *, tools: ToolsArg, client: openai.OpenAI | None = None, model: str,
             kind: Literal["python"], max_repairs: int = 2, strict: bool = True,
             inputs_schema: dict[str, Any] | None = None,
             system_prompt: str | None = None) -> CodePlan: ...


def plan_for(goal: str, *, tools: ToolsArg, client: openai.OpenAI | None = None, model: str,
             kind: PlanKind = "graph", max_repairs: int = 2, strict: bool = True,
             inputs_schema: dict[str, Any] | None = None,
             system_prompt: str | None = None) -> dict[str, Any] | CodePlan:
    """A plan reaching `goal` with `tools`, validated against them.

    `kind` is "graph" (a JSON step graph, returned as a dict) or "python" (a `CodePlan`).
    `client=None` builds `openai.OpenAI()` from OPENAI_BASE_URL / OPENAI_API_KEY.
    `inputs_schema` fixes the plan's inputs (a graph plan's `inputs` is set to it);
    `system_prompt` is appended to the generated instructions. Raises PlanningFailed with
    the last issues and every raw answer when no valid plan came within `max_repairs`
    repair rounds; the client's errors (rate limits, server errors) propagate.
    """
    if kind not in ("graph", "python"):
        raise ValueError(f"kind must be 'graph' or 'python', not {kind!r}")
    if max_repairs < 0:
        raise ValueError(f"max_repairs must be >= 0, not {max_repairs!r}")
    session = _Session(tool_registry(tools), client_or_default(client), model, kind,
                       "strict" if strict else "json", inputs_schema, system_prompt)
    return session.plan(goal, max_repairs)


class _Session:
    """One planning conversation."""

    def __init__(self, tools: dict[str, Tool], client: openai.OpenAI, model: str,
                 kind: PlanKind, mode: GraphMode, inputs_schema: dict[str, Any] | None,
                 extra: str | None) -> None:
        self.tools = tools
        self.client = client
        self.model = model
        self.kind = kind
        self.mode = mode
        self.inputs_schema = inputs_schema
        self.extra = extra

    def plan(self, goal: str, max_repairs: int) -> dict[str, Any] | CodePlan:
        messages: list[Message] = [{"role": "system", "content": self._instructions()},
                                   {"role": "user", "content": goal}]
        responses: list[str] = []
        issues: list[ValidationIssue] = []
        for _ in range(max_repairs + 1):
            answer = self._ask(messages)
            responses.append(answer.content)
            try:
                return self._validated(answer)
            except PlanValidationError as error:
                issues = error.issues
            messages += [{"role": "assistant", "content": answer.content},
                         {"role": "user", "content": repair_message(issues, self.kind)}]
        raise PlanningFailed(issues, responses)

    def _instructions(self) -> str:
        return system_prompt(self.kind, self.tools, mode=self.mode,
                             inputs_schema=self.inputs_schema, extra=self.extra)

    def _ask(self, messages: list[Message]) -> Answer:
        """One answer; falls back to JSON mode for good if strict mode is refused."""
        if self.kind == "python":
            return ask(self.client, self.model, messages)
        if self.mode == "strict":
            strict = json_schema_format("agentflow_plan", strict_plan_schema(), strict=True)
            try:
                return ask(self.client, self.model, messages, response_format=strict)
            except openai.APIStatusError as error:
                if not schema_refused(error):
                    raise
            self.mode = "json"
            messages[0] = {"role": "system", "content": self._instructions()}
        return ask(self.client, self.model, messages, response_format=JSON_OBJECT_FORMAT)

    def _validated(self, answer: Answer) -> dict[str, Any] | CodePlan:
        if self.kind == "python":
            source = extract_python(answer.content)
            if source is None:
                raise PlanValidationError([ValidationIssue(
                    "$", "the answer has no ```python fenced block" + cut_off_note(answer),
                    code="format")])
            code = CodePlan(source=source, name="llm_plan")
            compile_code_plan(code, self.tools)
            return code
        try:
            data = json.loads(answer.content)
        except ValueError as error:
            raise PlanValidationError([ValidationIssue(
                "$", f"the answer is not JSON: {error}{cut_off_note(answer)}", code="json")]
            ) from None
        plan = decode_strict_plan(data) if self.mode == "strict" else data
        if not isinstance(plan, dict):
            raise PlanValidationError([ValidationIssue(
                "$", f"a plan is a JSON object, not {type(plan).__name__}", code="type")])
        if self.inputs_schema is not None:
            plan["inputs"] = self.inputs_schema
        compile_plan(plan, self.tools)
        return plan


def extract_python(text: str) -> str | None:
    """The code of the first ```python (or bare ```) fenced block in `text`."""
    match = _FENCE.search(text)
    return match.group(1) if match else None
