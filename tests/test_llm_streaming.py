"""`stream_plan`: steps are released while the model still writes, in dependency order, and
the final plan is the one a whole answer gives. `run_streamed` / `Engine.execute_stream`:
those steps run at once, and the run ends as the run of the whole plan would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, PlanMismatch, Tool, tool
from agentflow.engine.streaming import STREAMING_HASH
from agentflow.llm import PlanningFailed, encode_strict_plan, plan_for, run_streamed
from agentflow.llm.streaming import PlanReady, StepReady, StepScanner, stream_plan
from agentflow.plan import compile_plan
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
    openai_server.chars_per_chunk = 40
    openai_server.hold_stream_at(answer.index('"other"'))  # until a step is released
    openai_server.script(answer, answer)
    events, streamed_at_first_step = [], None
    for event in stream_plan("news digest", tools=[fetch, summarise], client=openai_client,
                             model="planner"):
        if isinstance(event, StepReady) and streamed_at_first_step is None:
            streamed_at_first_step = openai_server.streamed_chars
            openai_server.release_stream()
        events.append(event)
    steps = [e for e in events if isinstance(e, StepReady)]
    assert [e.step["id"] for e in steps] == ["page", "digest", "other"]
    assert steps[0].step == PLAN["steps"][1]
    final = events[-1]
    assert isinstance(final, PlanReady)
    assert streamed_at_first_step is not None
    assert streamed_at_first_step < len(answer)  # while the model was still writing
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


# --- streamed execution: steps run while the model writes ----------------------------------

def engine_in(tmp_path: Path) -> Engine:
    return Engine(str(tmp_path / "runs.db"))


def fetch_recording(urls: list[str], on_call: Callable[[], object] = lambda: None) -> Tool:
    @tool(name="fetch")
    def recording_fetch(url: str) -> dict[str, str]:
        """Fetch a page."""
        urls.append(url)
        on_call()
        return {"text": url}

    return recording_fetch


def released(plan: dict[str, Any], *ids: str) -> list[StepReady | PlanReady]:
    """The events of a stream releasing `ids` in this order, then `plan` whole."""
    steps = {step["id"]: step for step in plan["steps"]}
    return [*(StepReady(steps[sid], 0.0) for sid in ids), PlanReady(plan, 0.0)]


def test_streamed_run_starts_a_step_while_the_model_still_writes(
        openai_server: OpenAIServer, openai_client: Any, tmp_path: Path) -> None:
    answer = json.dumps(encode_strict_plan(PLAN))
    openai_server.chars_per_chunk = 20
    openai_server.hold_stream_at(answer.index('"other"'))  # until a step has started
    openai_server.script(answer)
    urls: list[str] = []
    streamed: list[int] = []  # characters of the answer sent when each fetch ran

    def note_and_release() -> None:
        streamed.append(openai_server.streamed_chars)
        openai_server.release_stream()

    result = run_streamed("news digest", tools=[fetch_recording(urls, note_and_release),
                                                summarise],
                          client=openai_client, model="planner", engine=engine_in(tmp_path))
    assert result.status == "completed" and result.outputs == {"digest": "https://ex"}
    assert urls[0] == PLAN["steps"][1]["args"]["url"] and streamed[0] < len(answer)


def test_streamed_run_ends_as_the_run_of_the_whole_plan(
        openai_server: OpenAIServer, openai_client: Any, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"site": {"type": "string"}},
              "required": ["site"]}
    plan = {**PLAN, "inputs": schema, "steps": [
        *PLAN["steps"][:2], {"id": "other", "tool": "fetch", "args": {"url": "${inputs.site}"}}]}
    answer = json.dumps(encode_strict_plan(plan))
    openai_server.script(answer, answer)
    engine, tools, inputs = engine_in(tmp_path), [fetch, summarise], {"site": "example.org"}
    streamed = run_streamed("news", tools=tools, client=openai_client, model="m", run_id="s",
                            engine=engine, inputs=inputs, inputs_schema=schema)
    whole = engine.execute(plan_for("news", tools=tools, client=openai_client, model="m",
                                    inputs_schema=schema),
                           tools=tools, inputs=inputs, run_id="w")

    def journal(run_id: str) -> list[tuple[Any, ...]]:
        entries = [(e.key, e.kind, e.data, e.attempt, e.tool, e.args_hash)
                   for e in engine.journal(run_id)]
        return sorted(entries, key=lambda entry: entry[0])  # stable: each key's own order

    assert streamed.plan_hash == whole.plan_hash == compile_plan(plan, {
        "fetch": fetch, "summarise": summarise}).plan_hash
    assert engine.plan_of("s") == engine.plan_of("w")
    assert journal("s") == journal("w")
    assert (streamed.status, streamed.outputs) == (whole.status, whole.outputs)
    assert engine.resume("s", tools=tools).steps.keys() == whole.steps.keys()


def test_a_step_that_does_not_validate_stops_the_stream_and_fails_the_run(
        tmp_path: Path) -> None:
    plan = {**PLAN, "steps": [*PLAN["steps"], {"id": "crawl", "tool": "crawl", "args": {}}]}
    calls: list[str] = []
    engine = engine_in(tmp_path)
    result = engine.execute_stream(released(plan, "page", "crawl", "other"),
                                   tools=[fetch_recording(calls), summarise], run_id="r")
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "PlanValidationError" and "crawl" in result.error.message
    assert [(e.key, e.kind) for e in engine.journal("r")] == [("page", "intent"),
                                                             ("page", "result")]
    assert calls == [PLAN["steps"][1]["args"]["url"]]


def test_a_whole_plan_that_changes_a_streamed_step_fails_the_run(tmp_path: Path) -> None:
    changed = {**PLAN, "steps": [PLAN["steps"][0],
                                 {"id": "page", "tool": "fetch", "args": {"url": "elsewhere"}},
                                 PLAN["steps"][2]]}
    events = [StepReady(PLAN["steps"][1], 0.0), PlanReady(changed, 0.0)]
    result = engine_in(tmp_path).execute_stream(events, tools=[fetch, summarise])
    assert result.status == "failed" and result.error is not None
    assert "page" in result.error.message and "differs" in result.error.message


def broken_stream() -> Iterator[StepReady | PlanReady]:
    yield StepReady(PLAN["steps"][1], 0.0)
    raise ConnectionError("the stream was cut")


def test_a_broken_stream_raises_and_leaves_the_run_unfinished(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    with pytest.raises(ConnectionError, match="cut"):
        engine.execute_stream(broken_stream(), tools=[fetch, summarise], run_id="r")
    run = engine.store.get_run("default", "r")
    assert run is not None and (run.status, run.lease_owner) == ("running", None)
    assert run.plan_hash == STREAMING_HASH
    assert [(e.key, e.kind) for e in engine.journal("r")] == [("page", "intent"),
                                                             ("page", "result")]


def test_resume_refuses_a_run_whose_plan_was_still_streaming(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    with pytest.raises(ConnectionError):
        engine.execute_stream(broken_stream(), tools=[fetch, summarise], run_id="r")
    before = (engine.store.get_run("default", "r"), engine.journal("r"))
    with pytest.raises(PlanMismatch, match=r"still streaming.*execute_stream and the same run_id"):
        engine.resume("r", tools=[fetch, summarise])
    assert (engine.store.get_run("default", "r"), engine.journal("r")) == before


def test_streaming_again_with_the_same_run_id_replays_the_steps_that_ran(
        tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    with pytest.raises(ConnectionError):
        engine.execute_stream(broken_stream(), tools=[fetch, summarise], run_id="r")
    calls: list[str] = []
    result = engine.execute_stream(released(PLAN, "page", "digest", "other"),
                                   tools=[fetch_recording(calls), summarise], run_id="r")
    assert result.status == "completed" and result.outputs == {"digest": "https://ex"}
    assert calls == ["https://example.org"]
    assert result.plan_hash == compile_plan(PLAN, {"fetch": fetch,
                                                   "summarise": summarise}).plan_hash


def test_a_streamed_run_that_waits_is_pinned_and_resumes_like_any_run(tmp_path: Path) -> None:
    plan = {**PLAN, "steps": [PLAN["steps"][1], {"id": "ok", "approval": {"prompt": "Go?"}},
                              {**PLAN["steps"][0], "after": ["ok"]}]}

    async def source() -> AsyncIterator[StepReady | PlanReady]:
        for event in released(plan, "page", "ok", "digest"):
            for _ in range(6000):  # the approval is asked for while streaming
                if not isinstance(event, PlanReady) or engine.store.list_waits("default", "r"):
                    break
                await asyncio.sleep(0.01)
            yield event

    engine, tools = engine_in(tmp_path), [fetch, summarise]
    waiting = engine.execute_stream(source(), tools=tools, run_id="r")
    pinned = compile_plan(plan, {"fetch": fetch, "summarise": summarise}).plan_hash
    assert (waiting.status, waiting.plan_hash) == ("waiting", pinned)
    assert [wait.plan_hash for wait in engine.store.list_waits("default", "r")] == [pinned]
    engine.approve("r", waiting.pending[0].id, by="alice")
    assert engine.resume("r", tools=tools).outputs == {"digest": "https://ex"}


def test_run_streamed_again_with_the_same_run_id_does_not_ask_the_model(
        openai_server: OpenAIServer, openai_client: Any, tmp_path: Path) -> None:
    openai_server.script(json.dumps(encode_strict_plan(PLAN)))
    engine = engine_in(tmp_path)
    first = run_streamed("news", tools=[fetch, summarise], client=openai_client, model="m",
                         run_id="r", engine=engine)
    again = run_streamed("news", tools=[fetch, summarise], client=openai_client, model="m",
                         run_id="r", engine=engine)
    assert again == first and len(openai_server.requests) == 1
