"""`stream_plan`: steps are released while the model still writes, in dependency order, and
the final plan is the one a whole answer gives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentflow import tool
from agentflow.llm import PlanningFailed, encode_strict_plan, plan_for
from agentflow.llm.streaming import PlanReady, StepReady, StepScanner, stream_plan
from tests.support.openai_server import OpenAIServer


@tool
def fetch(url: str) -> dict[str, str]:
    """Fetch a page."""
    return {"text": url}


@tool
def summarise(text: str) -> str:
    """Summarise a text."""
    return text[:10]


PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "news", "steps": [
        {"id": "digest", "tool": "summarise", "args": {"text": "${steps.page.output.text}"}},
        {"id": "page", "tool": "fetch", "args": {"url": "https://example.com/{\"x\"}"}},
        {"id": "other", "tool": "fetch", "args": {"url": "https://example.org"}},
    ],
    "outputs": {"digest": "${steps.digest.output}"}}


def test_steps_are_released_in_dependency_order_before_the_end(
        openai_server: OpenAIServer, openai_client: Any) -> None:
    answer = json.dumps(encode_strict_plan(PLAN))
    openai_server.chars_per_chunk, openai_server.chunk_interval = 40, 0.02
    openai_server.script(answer, answer)
    events = list(stream_plan("news digest", tools=[fetch, summarise], client=openai_client,
                              model="planner"))
    steps = [e for e in events if isinstance(e, StepReady)]
    assert [e.step["id"] for e in steps] == ["page", "digest", "other"]
    assert steps[0].step == PLAN["steps"][1]
    final = events[-1]
    assert isinstance(final, PlanReady)
    assert steps[0].elapsed < final.elapsed - 0.15  # while the model was still writing
    whole = plan_for("news digest", tools=[fetch, summarise], client=openai_client,
                     model="planner")
    assert final.plan == whole == PLAN
    assert openai_server.requests[0].body["stream"] is True


def test_invalid_streamed_plan_raises_with_its_issues(
        openai_server: OpenAIServer, openai_client: Any) -> None:
    broken = {**PLAN, "steps": [{"id": "page", "tool": "crawl", "args": {}}], "outputs": {}}
    openai_server.script(json.dumps(encode_strict_plan(broken)))
    with pytest.raises(PlanningFailed) as failure:
        list(stream_plan("news", tools=[fetch, summarise], client=openai_client, model="m"))
    assert [issue.code for issue in failure.value.issues] == ["unknown_tool"]


def test_scanner_finds_steps_across_chunk_borders() -> None:
    text = json.dumps({"name": "steps", "steps": [{"id": "a", "args": "{\"k\": \"}]\\\"\"}"},
                                                  {"id": "b"}], "outputs": {"steps": [{}]}})
    scanner = StepScanner()
    found = [step for i in range(0, len(text), 3) for step in scanner.feed(text[i:i + 3])]
    assert found == [{"id": "a", "args": "{\"k\": \"}]\\\"\"}"}, {"id": "b"}]
