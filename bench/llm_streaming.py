"""Streamed against whole plan execution, for a scripted model writing at a fixed token rate.

The scripted OpenAI-compatible server (tests/support/openai_server.py) writes an 8-step
research plan (three independent searches first, then reads, a draft and a review) at
`--chars` characters per chunk every `--interval` seconds; a whole answer comes after the
time the stream takes. Each tool call sleeps `--work` seconds. Measured from the moment the
request is sent, as medians of `--repeat` rounds after an unmeasured warm-up at full speed:

- whole: `plan_for` returns the validated plan, then `execute_plan` runs it;
- streamed: `run_streamed`, each step starting as soon as the model has written it and its
  dependencies.

For each: time to the first tool call and to the end of the run; then streamed / whole.
Streaming saves at most the tool time it overlaps with the writing: the last steps of a plan
are written last. The scripted stream sleeps once per chunk, so it runs ~1% slower than its
nominal rate; that counts against the streamed figures.

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

from agentflow import Engine, RunResult, Tool, execute_plan, tool
from agentflow.llm import encode_strict_plan, plan_for, run_streamed
from tests.support.openai_server import OpenAIServer

PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "research",
    "steps": [
        {"id": "search_web", "tool": "work", "args": {"label": "search the web"}},
        {"id": "search_docs", "tool": "work", "args": {"label": "search the docs"}},
        {"id": "search_issues", "tool": "work", "args": {"label": "search the issues"}},
        {"id": "read_web", "tool": "work", "args": {"label": "${steps.search_web.output}"}},
        {"id": "read_docs", "tool": "work", "args": {"label": "${steps.search_docs.output}"}},
        {"id": "notes", "tool": "work", "args": {"label": "${steps.search_issues.output}"}},
        {"id": "draft", "tool": "work", "args": {"label": "${steps.read_web.output}"},
         "after": ["read_docs", "notes"]},
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


def whole(client: openai.OpenAI, work: float, store: str) -> tuple[float, float]:
    starts: list[float] = []
    tools = [make_tool(work, starts)]
    began = time.monotonic()
    plan = plan_for("research", tools=tools, client=client, model="bench")
    result = execute_plan(plan, tools=tools, store=store)
    return check(result, starts, began)


def streamed(client: openai.OpenAI, work: float, store: str) -> tuple[float, float]:
    starts: list[float] = []
    tools = [make_tool(work, starts)]
    began = time.monotonic()
    result = run_streamed("research", tools=tools, client=client, model="bench",
                          engine=Engine(store))
    return check(result, starts, began)


def check(result: RunResult, starts: list[float], began: float) -> tuple[float, float]:
    """(first tool call, end of run), in seconds from `began`, of a completed run."""
    ended = time.monotonic()
    assert result.status == "completed", result.error
    assert len(starts) == len(PLAN["steps"])
    return min(starts) - began, ended - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=4, help="characters per chunk")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds per chunk")
    parser.add_argument("--work", type=float, default=0.1, help="seconds per tool call")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    answer = json.dumps(encode_strict_plan(PLAN))
    rows: dict[str, list[tuple[float, float]]] = {"whole": [], "streamed": []}
    with OpenAIServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.responder = lambda request: answer
        client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        whole(client, 0.0, f"{tmp}/warm-whole.db")  # first-use costs (imports, pydantic
        streamed(client, 0.0, f"{tmp}/warm-streamed.db")  # models) are not measured
        server.chars_per_chunk, server.chunk_interval = args.chars, args.interval
        for round_ in range(args.repeat):
            rows["whole"].append(whole(client, args.work, f"{tmp}/whole-{round_}.db"))
            rows["streamed"].append(streamed(client, args.work, f"{tmp}/streamed-{round_}.db"))
        writing = server.generation_time(answer)
    rate = args.chars / args.interval
    print(f"scripted model: {len(answer)} characters at {rate:.0f} chars/s "
          f"({args.chars} per {args.interval * 1000:.0f} ms, {writing:.2f} s to write the "
          f"plan); {len(PLAN['steps'])} steps, tool work {args.work:.2f} s; "
          f"median of {args.repeat}")
    print(f"  {'':<14} {'first tool call':>16} {'run finished':>14}")
    medians = {name: (statistics.median(first for first, _ in values),
                      statistics.median(total for _, total in values))
               for name, values in rows.items()}
    for name, (first, total) in medians.items():
        print(f"  {name:<14} {first:14.3f} s {total:12.3f} s")
    (first_w, total_w), (first_s, total_s) = medians["whole"], medians["streamed"]
    print(f"  {'streamed/whole':<14} {first_s / first_w:14.3f}   {total_s / total_w:12.3f}")


if __name__ == "__main__":
    main()
