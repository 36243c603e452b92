"""Streamed planning: each step of a graph plan as soon as the model has written it.

`stream_plan` asks for the plan with `stream=True` and scans the answer as it arrives. Each
step object is taken the moment its closing brace comes in, and is yielded as `StepReady`
once it validates together with the steps already yielded, that is once the steps it
references (or names in `after`) were themselves yielded; a step whose dependencies are
still to come waits for them. The last event is `PlanReady` with the whole plan, validated
exactly like `plan_for`'s: the same plan a non-streamed request gives, so a run started
from the streamed steps can be pinned to it. Steps may have been acted upon before the end,
so there are no repair rounds: a plan that fails validation raises PlanningFailed.

`run_streamed` feeds those events to `Engine.execute_stream`: each step runs as soon as it
is released, while the model goes on writing, and the run ends pinned to the whole plan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from agentflow.engine import Engine, RunResult
from agentflow.engine.api import engine_for
from agentflow.engine.streaming import PlanReady, StepReady
from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.llm.chat import (
    JSON_OBJECT_FORMAT,
    Message,
    client_or_default,
    json_schema_format,
    schema_refused,
)
from agentflow.llm.errors import PlanningFailed
from agentflow.llm.prompts import GraphMode
from agentflow.llm.prompts import system_prompt as instructions
from agentflow.llm.schema import decode_strict_plan, strict_plan_schema
from agentflow.plan import compile_plan
from agentflow.store import Store
from agentflow.tools import Tool, tool_registry

__all__ = ["PlanReady", "StepReady", "StepScanner", "run_streamed", "stream_plan"]


def run_streamed(goal: str, *, tools: Iterable[Tool | Callable[..., Any]],
                 client: openai.OpenAI | None = None, model: str, run_id: str | None = None,
                 store: str | Store | None = None, inputs: dict[str, Any] | None = None,
                 inputs_schema: dict[str, Any] | None = None, strict: bool = True,
                 system_prompt: str | None = None, budget: dict[str, int] | None = None,
                 engine: Engine | None = None, tenant: str = "default") -> RunResult:
    """Plan `goal` and run it at once: each step starts as soon as the model has written
    it and its dependencies (`stream_plan` feeding `Engine.execute_stream`). The run ends
    as `execute_plan(plan_for(goal, ...))` would: same pinned plan, journal and outputs.
    With the `run_id` of a run whose plan arrived whole, the model is not asked again."""
    registry = tool_registry(tools)
    events = stream_plan(goal, tools=registry.values(), client=client, model=model,
                         strict=strict, inputs_schema=inputs_schema,
                         system_prompt=system_prompt)
    return (engine or engine_for(store)).execute_stream(
        events, tools=registry.values(), inputs=inputs, inputs_schema=inputs_schema,
        run_id=run_id, tenant=tenant, budget=budget)


def stream_plan(goal: str, *, tools: Iterable[Tool | Callable[..., Any]],
                client: openai.OpenAI | None = None, model: str, strict: bool = True,
                inputs_schema: dict[str, Any] | None = None,
                system_prompt: str | None = None) -> Iterator[StepReady | PlanReady]:
    """Plan `goal` like `plan_for(kind="graph")`, yielding steps while the model writes."""
    registry = tool_registry(tools)
    connection = client_or_default(client)
    started = time.monotonic()
    mode: GraphMode = "strict" if strict else "json"
    chunks: Iterator[str] | None = None
    while chunks is None:
        messages: list[Message] = [
            {"role": "system", "content": instructions(
                "graph", registry, mode=mode, inputs_schema=inputs_schema,
                extra=system_prompt)},
            {"role": "user", "content": goal}]
        try:
            chunks = _stream(connection, model, messages, mode)
        except openai.APIStatusError as error:
            if mode == "json" or not schema_refused(error):
                raise
            mode = "json"
    ready = _Readiness(registry, inputs_schema, mode)
    scanner = StepScanner()
    text: list[str] = []
    for chunk in chunks:
        text.append(chunk)
        for raw in scanner.feed(chunk):
            for step in ready.add(raw):
                yield StepReady(step, time.monotonic() - started)
    yield PlanReady(ready.finish("".join(text)), time.monotonic() - started)


def _stream(client: openai.OpenAI, model: str, messages: list[Message],
            mode: GraphMode) -> Iterator[str]:
    """The content pieces of a streamed completion (the request is sent now)."""
    response_format = (json_schema_format("agentflow_plan", strict_plan_schema(), strict=True)
                       if mode == "strict" else JSON_OBJECT_FORMAT)
    stream = client.chat.completions.create(
        model=model, messages=cast("list[ChatCompletionMessageParam]", messages),
        response_format=response_format, stream=True)  # type: ignore[call-overload]

    def pieces() -> Iterator[str]:
        with stream:  # closed, the connection with it, when the reader stops early
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return pieces()


class _Readiness:
    """Which streamed steps validate with the steps released before them."""

    def __init__(self, tools: dict[str, Tool], inputs_schema: dict[str, Any] | None,
                 mode: GraphMode) -> None:
        self.tools = tools
        self.inputs = inputs_schema if inputs_schema is not None else {}
        self.mode = mode
        self.released: list[dict[str, Any]] = []
        self.waiting: list[dict[str, Any]] = []

    def add(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one complete step; return the steps it makes ready (in stream order)."""
        if self.mode == "strict":
            try:
                raw = decode_strict_plan({"steps": [raw]})["steps"][0]
            except PlanValidationError:
                return []  # reported with the whole plan
        self.waiting.append(raw)
        newly: list[dict[str, Any]] = []
        progress = True
        while progress:
            progress = False
            for step in list(self.waiting):
                if self._valid_with_released(step):
                    self.waiting.remove(step)
                    self.released.append(step)
                    newly.append(step)
                    progress = True
        return newly

    def _valid_with_released(self, step: dict[str, Any]) -> bool:
        try:
            compile_plan({"inputs": self.inputs, "steps": [*self.released, step]}, self.tools)
        except PlanValidationError:
            return False
        return True

    def finish(self, text: str) -> dict[str, Any]:
        """The whole plan, validated; PlanningFailed with every issue otherwise."""
        try:
            data = json.loads(text)
            plan = decode_strict_plan(data) if self.mode == "strict" else data
            if not isinstance(plan, dict):
                raise PlanValidationError([ValidationIssue("$", "a plan is a JSON object")])
            if self.inputs:
                plan["inputs"] = self.inputs
            compile_plan(plan, self.tools)
        except ValueError as error:
            issues = [ValidationIssue("$", f"the answer is not JSON: {error}", code="json")]
            raise PlanningFailed(issues, [text]) from None
        except PlanValidationError as error:
            raise PlanningFailed(error.issues, [text]) from None
        return plan


class StepScanner:
    """Finds the step objects of a plan in JSON text fed piece by piece.

    Tracks strings, escapes and nesting, and the current key of the root object; every
    object that closes as an element of the root's "steps" array is returned, parsed.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []  # "{" or "["
        self.in_string = False
        self.escaped = False
        self.string: list[str] = []
        self.root_key: str | None = None
        self.expect_key = False
        self.step: list[str] | None = None

    def feed(self, text: str) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        for char in text:
            if self.step is not None:
                self.step.append(char)
            if self.in_string:
                self._string_char(char)
            elif char == '"':
                self.in_string = True
                self.string = []
            elif char in "{[":
                if char == "{" and self._at_step_level():
                    self.step = [char]
                self.stack.append(char)
                self.expect_key = char == "{" and len(self.stack) == 1
            elif char in "}]":
                if self.stack:
                    self.stack.pop()
                if char == "}" and self.step is not None and self._at_step_level():
                    steps.append(json.loads("".join(self.step)))
                    self.step = None
            elif char == "," and len(self.stack) == 1:
                self.expect_key = True
        return steps

    def _string_char(self, char: str) -> None:
        if self.escaped:
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_string = False
            if self.expect_key and len(self.stack) == 1:
                self.root_key = json.loads('"' + "".join(self.string) + '"')
                self.expect_key = False
            return
        self.string.append(char)

    def _at_step_level(self) -> bool:
        return self.stack == ["{", "["] and self.root_key == "steps"
