"""The `llm` tool inside plans: result shape, structured output, retries, errors, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine
from agentflow.llm import llm_tool
from tests.support import llm_worker
from tests.support.openai_server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parent.parent
CLOSED = {"type": "object", "properties": {"colour": {"type": "string"}},
          "required": ["colour"], "additionalProperties": False}


def one_step(args: dict[str, Any], retry: dict[str, Any] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"id": "ask", "tool": "llm", "args": args}
    if retry is not None:
        step["retry"] = retry
    return {"format": "agentflow/v1", "steps": [step], "outputs": {"answer": "${steps.ask.output}"}}


@pytest.fixture
def engine(tmp_path: Path, openai_client: Any) -> Engine:
    return Engine(str(tmp_path / "runs.db"), tools=[llm_tool(openai_client, model="m-1")])


def test_result_has_content_model_and_usage(engine: Engine,
                                            openai_server: OpenAIServer) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    openai_server.script(Reply("blue", usage=usage))
    result = engine.execute(one_step({"prompt": "a colour?", "system": "Be brief.",
                                      "temperature": 0.2, "max_tokens": 5}))
    assert result.outputs == {"answer": {"content": "blue", "parsed": None,
                                         "model": "scripted-model", "usage": usage}}
    body = openai_server.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "a colour?"}]
    assert (body["model"], body["temperature"], body["max_completion_tokens"]) == ("m-1", 0.2, 5)


def test_response_schema_gives_parsed_json_in_strict_mode(engine: Engine,
                                                          openai_server: OpenAIServer) -> None:
    openai_server.script('{"colour": "blue"}')
    result = engine.execute(one_step({"prompt": "a colour?", "response_schema": CLOSED}))
    assert result.outputs["answer"]["parsed"] == {"colour": "blue"}
    assert openai_server.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": CLOSED, "strict": True}}


def test_open_schema_is_requested_without_strict(engine: Engine,
                                                 openai_server: OpenAIServer) -> None:
    open_schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    openai_server.script('{"n": 3}')
    result = engine.execute(one_step({"prompt": "a number?", "response_schema": open_schema}))
    assert result.outputs["answer"]["parsed"] == {"n": 3}
    assert openai_server.requests[0].body["response_format"]["json_schema"]["strict"] is False


@pytest.mark.parametrize(("status", "error_type"), [(429, "RateLimitError"),
                                                    (500, "InternalServerError")])
def test_server_error_is_retried_by_the_step_policy(
        engine: Engine, openai_server: OpenAIServer, status: int, error_type: str) -> None:
    openai_server.script(Reply(status=status, headers={"Retry-After": "0"}), "blue")
    retry = {"max_attempts": 3, "initial_delay": 0.01, "retry_on": [error_type]}
    result = engine.execute(one_step({"prompt": "a colour?"}, retry))
    assert result.status == "completed"
    assert result.outputs["answer"]["content"] == "blue"
    assert result.steps["ask"].attempts == 2
    assert len(openai_server.requests) == 2


def test_rate_limit_without_retry_fails_the_run(engine: Engine,
                                                openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(status=429, error="slow down"))
    result = engine.execute(one_step({"prompt": "a colour?"}))
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "RateLimitError"
    assert "slow down" in result.error.message


@pytest.mark.parametrize(("reply", "message"), [
    (Reply('{"colour": 7}', off_schema=True), "does not match response_schema at $.colour"),
    (Reply("blue, I think", off_schema=True), "the model's answer is not JSON"),
    (Reply(body="{truncated"), "the endpoint sent a malformed response"),
])
def test_malformed_answer_fails_the_step_clearly(
        engine: Engine, openai_server: OpenAIServer, reply: Reply, message: str) -> None:
    openai_server.script(reply)
    retry = {"max_attempts": 3, "initial_delay": 0.01}
    result = engine.execute(one_step({"prompt": "a colour?", "response_schema": CLOSED},
                                     retry))
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "LLMResponseError"
    assert message in result.error.message
    assert len(openai_server.requests) == 1  # not retried by a policy that does not name it


def test_invalid_response_schema_is_an_argument_error(engine: Engine,
                                                      openai_server: OpenAIServer) -> None:
    result = engine.execute(one_step({"prompt": "?", "response_schema": {"type": "colour"}}))
    assert result.error is not None and result.error.type == "ToolArgumentsError"
    assert openai_server.requests == []


def test_token_limit_counts_prompt_and_max_tokens(openai_client: Any) -> None:
    tool = llm_tool(openai_client, model="m-1")
    assert tool.token_limit({"prompt": "x" * 30, "max_tokens": 50}) == 60
    assert tool.token_limit({"prompt": "x" * 30}) is None


def test_resume_after_kill_never_repeats_a_completed_llm_call(
        tmp_path: Path, openai_server: OpenAIServer) -> None:
    store = str(tmp_path / "runs.db")
    openai_server.script("red", Reply("cherry", delay=60))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.llm_worker", store, openai_server.base_url,
         "crash-1"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while openai_server.count("second:") == 0:
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    openai_server.script("strawberry")
    result = llm_worker.run(store, openai_server.base_url, "crash-1")
    assert result.status == "completed"
    assert result.outputs == {"colour": "red", "fruit": "strawberry"}
    assert openai_server.count("first:") == 1
    assert openai_server.count("second: a fruit of colour red") == 2
