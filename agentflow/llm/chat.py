"""One chat completion against an OpenAI-compatible endpoint: its content, model and usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from agentflow.llm.errors import LLMResponseError

Message = dict[str, str]
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(frozen=True)
class Answer:
    """The first choice of a completion. `usage` has `USAGE_FIELDS` (0 when the endpoint
    reports none)."""

    content: str
    model: str
    usage: dict[str, int]
    finish_reason: str | None


def client_or_default(client: openai.OpenAI | None) -> openai.OpenAI:
    """`client`, else a client configured from OPENAI_BASE_URL / OPENAI_API_KEY."""
    return client if client is not None else openai.OpenAI()


def json_schema_format(name: str, schema: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    """The `response_format` asking for structured output matching `schema`."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict}}


JSON_OBJECT_FORMAT: dict[str, Any] = {"type": "json_object"}


def ask(client: openai.OpenAI, model: str, messages: list[Message], *,
        response_format: dict[str, Any] | None = None, **params: Any) -> Answer:
    """Send one chat completion request (no streaming) and return its first choice.

    The openai client's own errors (RateLimitError, InternalServerError, APIConnectionError,
    BadRequestError, ...) propagate unchanged; an answer that is not a usable completion
    (a malformed body, no choices, a refusal, no content) raises LLMResponseError.
    """
    if response_format is not None:
        params["response_format"] = response_format
    try:
        response = client.chat.completions.create(
            model=model, messages=cast("list[ChatCompletionMessageParam]", messages), **params)
    except ValueError as error:  # the body is not JSON or not a completion
        raise LLMResponseError(f"the endpoint sent a malformed response: {error}") from None
    if not response.choices:
        raise LLMResponseError("the response has no choices")
    choice = response.choices[0]
    if choice.message.refusal:
        raise LLMResponseError(f"the model refused: {choice.message.refusal}")
    if choice.message.content is None:
        raise LLMResponseError("the response has no content")
    return Answer(choice.message.content, response.model or model, usage_of(response.usage),
                  choice.finish_reason)


def usage_of(usage: Any) -> dict[str, int]:
    """The token counts of a completion's `usage` object."""
    return {name: int(getattr(usage, name, 0) or 0) for name in USAGE_FIELDS}


def schema_refused(error: openai.APIStatusError) -> bool:
    """Whether the endpoint refused the request because of structured outputs (a model or
    server without strict `json_schema` support), as opposed to any other bad request."""
    text = str(error).lower()
    return error.status_code in (400, 422) and any(
        word in text for word in ("response_format", "json_schema", "strict"))


def cut_off_note(answer: Answer) -> str:
    """A hint for an unusable answer that ended at the token limit."""
    return " (the answer was cut off at the token limit)" if answer.finish_reason == "length" \
        else ""
