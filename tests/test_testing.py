"""`agentflow.testing`: the scripted model users test their own planners with, in process
and over HTTP, through the real `openai` client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from agentflow import execute_plan, tool
from agentflow.llm import llm_tool, plan_for, stream_plan
from agentflow.llm.schema import encode_strict_plan
from agentflow.llm.streaming import PlanReady, StepReady
from agentflow.testing import OpenAIServer, Reply, Request, ScriptedModel

ROOT = Path(__file__).resolve().parent.parent


@tool
def greet(name: str) -> str:
    """Say hello to `name`."""
    return f"hello {name}"


PLAN: dict[str, Any] = {"format": "agentflow/v1", "name": "hi", "steps": [
    {"id": "a", "tool": "greet", "args": {"name": "ann"}},
    {"id": "b", "tool": "greet", "args": {"name": "${steps.a.output}"}}],
    "outputs": {"said": "${steps.b.output}"}}


def test_in_process_client_drives_the_planner_and_its_repair(tmp_path: Path) -> None:
    wrong = {**PLAN, "steps": [{"id": "a", "tool": "shout", "args": {}}]}
    model = ScriptedModel(json.dumps(encode_strict_plan(wrong)),
                          json.dumps(encode_strict_plan(PLAN)))
    plan = plan_for("greet ann twice", tools=[greet], client=model.client(),
                    model="scripted-model")
    assert plan["steps"] == PLAN["steps"]
    assert len(model.requests) == 2 and "shout" in model.requests[1].prompt
    assert model.requests[0].body["response_format"]["json_schema"]["strict"] is True
    assert model.problems == []
    result = execute_plan(plan, tools=[greet], store=str(tmp_path / "runs.db"))
    assert result.outputs == {"said": "hello hello ann"}


def test_a_responder_function_answers_like_a_function_model(tmp_path: Path) -> None:
    seen: list[Request] = []

    def answer(request: Request) -> str:
        seen.append(request)
        return request.prompt.upper()

    model = ScriptedModel(responder=answer)
    llm = llm_tool(model.client(), model="scripted-model")
    result = execute_plan({"name": "ask", "steps": [
        {"id": "q", "tool": "llm", "args": {"prompt": "shout this"}}],
        "outputs": {"text": "${steps.q.output.content}"}}, tools=[llm],
        store=str(tmp_path / "runs.db"))
    assert result.status == "completed", result.error
    assert result.outputs == {"text": "SHOUT THIS"}
    assert [request.prompt for request in seen] == ["shout this"]


def test_in_process_streaming_and_errors() -> None:
    model = ScriptedModel(json.dumps(encode_strict_plan(PLAN)))
    model.chars_per_chunk = 7
    events = list(stream_plan("greet", tools=[greet], client=model.client(),
                              model="scripted-model"))
    assert [type(event) for event in events] == [StepReady, StepReady, PlanReady]
    assert model.streamed_chars == len(json.dumps(encode_strict_plan(PLAN)))
    model.script(Reply(status=429, error="slow down", headers={"Retry-After": "0"}))
    with pytest.raises(openai.RateLimitError, match="slow down"):
        model.client().chat.completions.create(model="m", messages=[
            {"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        model.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"})
    with pytest.raises(openai.InternalServerError):
        model.client().chat.completions.create(model="m", messages=[
            {"role": "user", "content": "unscripted"}])
    assert model.problems == ["unscripted request: 'unscripted'"]


def test_the_http_server_serves_another_process() -> None:
    code = ("import openai, sys\n"
            "client = openai.OpenAI(base_url=sys.argv[1], api_key='k', max_retries=0)\n"
            "answer = client.chat.completions.create(model='m', messages=["
            "{'role': 'user', 'content': 'ping'}])\n"
            "print(answer.choices[0].message.content, answer.usage.total_tokens)\n")
    with OpenAIServer(Reply("pong", usage={"prompt_tokens": 1, "completion_tokens": 2,
                                           "total_tokens": 3})) as server:
        done = subprocess.run([sys.executable, "-c", code, server.base_url],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pong 3\n"
    assert [request.prompt for request in server.requests] == ["ping"]


def test_the_planning_notebook_imports_nothing_from_the_tests() -> None:
    notebook = json.loads((ROOT / "notebooks" / "agent_planning.ipynb").read_text())
    source = "".join("".join(cell["source"]) for cell in notebook["cells"])
    assert "from agentflow.testing import" in source
    assert "tests.support" not in source and "sys.path" not in source
