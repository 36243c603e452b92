"""Streamed against whole planning, for a scripted model writing at a fixed token rate.

The scripted OpenAI-compatible server (tests/support/openai_server.py) writes a 6-step
plan at `--chars` characters per chunk every `--interval` seconds (a whole answer comes
after the time the stream takes). Measured, as medians of `--repeat` rounds, from the
moment the request is sent:

- whole: `plan_for` returns the validated plan; then `execute_plan` runs it (each tool
  sleeps `--work` seconds): time to the first tool call and to the run's end;
- streamed: `stream_plan` releases the first schedulable step, and the whole plan.

Streamed *execution* (steps running while the plan is written) needs the executor to take
steps as they come; until then the streamed figure is the earliest moment a step could
start, to compare with the whole plan's first tool call.

    python bench/llm_streaming.py [--chars 4] [--interval 0.02] [--work 0.1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai

from agentflow import Tool, execute_plan, tool
from agentflow.llm import encode_strict_plan, plan_for
from agentflow.llm.streaming import PlanReady, StepReady, stream_plan
from tests.support.openai_server import OpenAIServer

PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "research",
    "steps": [
        {"id": "search", "tool": "work", "args": {"label": "search the web"}},
        {"id": "read_1", "tool": "work", "args": {"label": "${steps.search.output}"}},
        {"id": "read_2", "tool": "work", "args": {"label": "${steps.search.output}"}},
        {"id": "notes", "tool": "work", "args": {"label": "take notes"}},
        {"id": "draft", "tool": "work", "args": {"label": "${steps.read_1.output}"},
         "after": ["read_2", "notes"]},
        {"id": "review", "tool": "work", "args": {"label": "${steps.draft.output}"}},
    ],
    "outputs": {"review": "${steps.review.output}"},
}


def make_tool(work: float, starts: list[float]) -> Tool:
    @tool(name="work")
    def work_tool(label: str) -> str:
        """Do some work."""
        starts.append(time.monotonic())
        time.sleep(work)
        return label[:40]

    return work_tool


def whole(client: openai.OpenAI, work: float, store: str) -> tuple[float, float, float]:
    starts: list[float] = []
    tools = [make_tool(work, starts)]
    began = time.monotonic()
    plan = plan_for("research", tools=tools, client=client, model="bench")
    planned = time.monotonic() - began
    result = execute_plan(plan, tools=tools, store=store)
    assert result.status == "completed", result.error
    return planned, starts[0] - began, time.monotonic() - began


def streamed(client: openai.OpenAI, work: float) -> tuple[float, float]:
    tools = [make_tool(work, [])]
    first = None
    for event in stream_plan("research", tools=tools, client=client, model="bench"):
        if isinstance(event, StepReady) and first is None:
            first = event.elapsed
        if isinstance(event, PlanReady):
            assert event.plan == PLAN
            assert first is not None
            return first, event.elapsed
    raise RuntimeError("the stream ended without a plan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=4, help="characters per chunk")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds per chunk")
    parser.add_argument("--work", type=float, default=0.1, help="seconds per tool call")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    answer = json.dumps(encode_strict_plan(PLAN))
    rows: dict[str, list[float]] = {}
    with OpenAIServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.chars_per_chunk, server.chunk_interval = args.chars, args.interval
        server.responder = lambda request: answer
        client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        for round_ in range(args.repeat):
            planned, first_call, total = whole(client, args.work,
                                               str(Path(tmp) / f"runs-{round_}.db"))
            first_step, plan_done = streamed(client, args.work)
            for name, value in [("whole: plan received", planned),
                                ("whole: first tool call", first_call),
                                ("whole: run finished", total),
                                ("streamed: first step schedulable", first_step),
                                ("streamed: plan received", plan_done)]:
                rows.setdefault(name, []).append(value)
    rate = args.chars / args.interval
    print(f"scripted model: {len(answer)} characters at {rate:.0f} chars/s "
          f"({args.chars} per {args.interval * 1000:.0f} ms); tool work {args.work:.2f} s; "
          f"median of {args.repeat}")
    for name, values in rows.items():
        print(f"  {name:<34} {statistics.median(values):7.3f} s")


if __name__ == "__main__":
    main()
