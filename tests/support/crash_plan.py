"""A 38-call plan whose tools log every call to a side file, run as a separate process.

Used by the crash tests: `python -m tests.support.crash_plan STORE SIDE_FILE RUN_ID` runs
(or resumes) the run and prints its outputs as JSON. Each tool call writes a `start` line
before it works and an `end` line after, with its call key, idempotency key and attempt,
so the test can tell which calls ran again after a SIGKILL.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from agentflow import ToolContext, execute_plan, tool
from tests.support.crash import work

BRANCHES = 4
BRANCH_LENGTH = 5
FANOUT = 8


@tool
def seed(n: int, ctx: ToolContext) -> dict[str, Any]:
    value = work(ctx, "seed", n)
    return {"value": value, "items": [value % 97 + i for i in range(FANOUT)]}


@tool
def step(previous: int, label: str, ctx: ToolContext) -> dict[str, int]:
    return {"value": work(ctx, previous, label)}


@tool
def square(x: int, ctx: ToolContext) -> dict[str, int]:
    work(ctx, "square", x)
    return {"value": x * x}


@tool
def combine(values: list[int], squares: list[dict[str, int]], ctx: ToolContext) -> dict[str, int]:
    return {"value": work(ctx, values, squares) + sum(s["value"] for s in squares)}


TOOLS = [seed, step, square, combine]


def build_plan() -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "seed", "tool": "seed", "args": {"n": "${inputs.n}"}}]
    ends = []
    for b in range(BRANCHES):
        previous = "${steps.seed.output.value}"
        for i in range(BRANCH_LENGTH):
            sid = f"b{b}_{i}"
            steps.append({"id": sid, "tool": "step",
                          "args": {"previous": previous, "label": sid}})
            previous = f"${{steps.{sid}.output.value}}"
        ends.append(previous)
    steps.append({"id": "squares", "tool": "square", "foreach": "${steps.seed.output.items}",
                  "args": {"x": "${item}"}, "max_parallel": 3})
    steps.append({"id": "join", "tool": "combine",
                  "args": {"values": ends, "squares": "${steps.squares.output}"}})
    previous = "${steps.join.output.value}"
    for i in range(FANOUT):
        sid = f"tail_{i}"
        steps.append({"id": sid, "tool": "step", "args": {"previous": previous, "label": sid}})
        previous = f"${{steps.{sid}.output.value}}"
    return {"format": "agentflow/v1", "name": "crash_plan",
            "inputs": {"type": "object", "properties": {"n": {"type": "integer"}},
                       "required": ["n"]},
            "steps": steps,
            "outputs": {"final": previous, "join": "${steps.join.output.value}",
                        "squares": "${steps.squares.output}"}}


CALLS = 1 + BRANCHES * BRANCH_LENGTH + FANOUT + 1 + FANOUT


def main(store: str, side_file: str, run_id: str) -> None:
    os.environ["CRASH_SIDE_FILE"] = side_file
    result = execute_plan(build_plan(), tools=TOOLS, inputs={"n": 7}, run_id=run_id,
                          store=store, max_concurrency=4)
    print(json.dumps({"status": result.status, "outputs": result.outputs}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
