"""The built-in `llm` tool: a chat completion as a plan step, journaled like any tool call.

Its result (content, parsed JSON, model, token usage) is recorded by the executor, so a
replay or a resume never calls the model again for a completed step. Errors keep the
openai client's types (`RateLimitError`, `InternalServerError`, `APIConnectionError`, ...),
so a step's retry policy can name them: `"retry": {"max_attempts": 4, "retry_on":
["RateLimitError", "InternalServerError", "APIConnectionError"]}`; a policy without
`retry_on` retries every error of them too. An unusable answer (not JSON, not matching
`response_schema`, refused, malformed) raises `LLMResponseError`.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import jsonschema
import openai
from pydantic import Field
from typing_extensions import TypedDict

from agentflow.errors import ToolArgumentsError
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
from agentflow.llm.errors import LLMResponseError
from agentflow.llm.schema import strict_compatible
from agentflow.plan.safe_schema import PlanSchemaValidator, pattern_issues
from agentflow.tools import Tool

_DESCRIPTION = (
    "Ask a language model. `prompt` is the user message, `system` optional instructions. "
    "With `response_schema` (a JSON Schema object) the answer is JSON matching it, returned "
    "parsed in `parsed`; otherwise `parsed` is null and the text is in `content`. "
    "`max_tokens` caps the answer's length.")
CHARS_PER_TOKEN = 3
"""Prompt size estimate for `LLMTool.token_limit`: a token is rarely shorter than this."""


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LLMResult(TypedDict):
    """The output of an `llm` step."""

    content: str
    parsed: Any
    model: str
    usage: Usage


@dataclass
class LLMTool(Tool):
    """The `llm` tool; also says what a call may spend (for a run's token budget)."""

    spends_tokens = True

    def token_limit(self, args: Mapping[str, Any]) -> int | None:
        """Most tokens a call with `args` may spend (estimated prompt + `max_tokens`), or
        None when `max_tokens` is not set."""
        limit = args.get("max_tokens")
        if limit is None:
            return None
        text = "".join(str(args.get(name) or "") for name in ("prompt", "system"))
        if args.get("response_schema") is not None:
            text += json.dumps(args["response_schema"])
        return math.ceil(len(text) / CHARS_PER_TOKEN) + int(limit)

    def tokens_spent(self, result: Any) -> int:
        """Tokens a completed call spent, from its recorded result."""
        return int(result["usage"]["total_tokens"])


def llm_tool(client: openai.OpenAI | None = None, *, model: str, name: str = "llm",
             description: str = _DESCRIPTION) -> LLMTool:
    """A tool named `name` that asks `model` through `client` (None: `openai.OpenAI()` from
    OPENAI_BASE_URL / OPENAI_API_KEY, built at the first call)."""
    holder: list[openai.OpenAI] = [client] if client is not None else []
    lock = threading.Lock()

    def connection() -> openai.OpenAI:
        with lock:
            if not holder:
                holder.append(client_or_default(None))
            return holder[0]

    def llm(prompt: str, system: str | None = None,
            response_schema: dict[str, Any] | None = None,
            temperature: Annotated[float, Field(ge=0, le=2)] | None = None,
            max_tokens: Annotated[int, Field(ge=1)] | None = None) -> LLMResult:
        messages: list[Message] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        params: dict[str, Any] = {}
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_completion_tokens"] = max_tokens
        if response_schema is None:
            answer = ask(connection(), model, messages, **params)
            return _result(answer, None)
        _check_schema(response_schema)
        answer = _ask_structured(connection(), model, messages, response_schema, params)
        return _result(answer, _parsed(answer, response_schema))

    return LLMTool(llm, name=name, description=description, side_effects=False)


def _ask_structured(client: openai.OpenAI, model: str, messages: list[Message],
                    schema: dict[str, Any], params: dict[str, Any]) -> Answer:
    """Structured output (strict when the schema allows it); JSON mode with the schema in
    the prompt when the endpoint refuses `json_schema`."""
    response_format = json_schema_format("response", schema,
                                         strict=strict_compatible(schema))
    try:
        return ask(client, model, messages, response_format=response_format, **params)
    except openai.APIStatusError as error:
        if not schema_refused(error):
            raise
    instruction = f"Answer with one JSON object matching this JSON Schema: {json.dumps(schema)}"
    fallback: list[Message] = [{"role": "system", "content": instruction}, *messages]
    return ask(client, model, fallback, response_format=JSON_OBJECT_FORMAT, **params)


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ToolArgumentsError(f"response_schema is not a valid JSON Schema: "
                                 f"{error.message}") from None
    for path, message in pattern_issues(schema, "response_schema"):
        raise ToolArgumentsError(f"{path}: {message}")


def _parsed(answer: Answer, schema: dict[str, Any]) -> Any:
    """The answer as JSON data matching `schema`, else LLMResponseError."""
    try:
        value = json.loads(answer.content)
    except ValueError as error:
        raise LLMResponseError(f"the model's answer is not JSON ({error}){cut_off_note(answer)}: "
                               f"{answer.content[:200]!r}", answer.content) from None
    problem = jsonschema.exceptions.best_match(
        PlanSchemaValidator(schema).iter_errors(value))
    if problem is not None:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                              for p in problem.absolute_path)
        raise LLMResponseError(f"the model's answer does not match response_schema at "
                               f"{where}: {problem.message}", answer.content)
    return value


def _result(answer: Answer, parsed: Any) -> LLMResult:
    usage = Usage(prompt_tokens=answer.usage["prompt_tokens"],
                  completion_tokens=answer.usage["completion_tokens"],
                  total_tokens=answer.usage["total_tokens"])
    return LLMResult(content=answer.content, parsed=parsed, model=answer.model, usage=usage)
