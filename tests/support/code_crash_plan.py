"""A 24-call code plan (loop, parallel block, conditional, approval), run as a separate process.

Used by tests/test_crash_code.py: `python -m tests.support.code_crash_plan STORE SIDE RUN_ID`
runs (or resumes) the run and prints its status, outputs and pending approval ids as JSON.
Each tool call writes a `start` line to the side file before it works and an `end` line
after, with its call position, idempotency key and attempt, so the test can tell which calls
ran again after a SIGKILL.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from agentflow import ToolContext, code_plan, execute_plan, tool
from tests.support.crash import work

PLAN = code_plan('''
base = seed(n=inputs["n"])
chain = base["value"]
for i in range(6):
    chain = step(previous=chain, label=f"loop{i}")["value"]

def branch(x):
    squared = square(x=x)["value"]
    return step(previous=squared, label=f"branch{x}")["value"]

branches = parallel([lambda x=x: branch(x) for x in base["items"]])
total = combine(values=[chain] + branches)["value"]
if total % 2 == 0:
    parity = step(previous=total, label="even")["value"]
    parity = step(previous=parity, label="even-again")["value"]
else:
    parity = combine(values=[total, 1])["value"]
    parity = step(previous=parity, label="odd")["value"]

shipped = None
if approve(f"Ship {total}?", total=total):
    tail = parity
    for i in range(5):
        tail = step(previous=tail, label=f"tail{i}")["value"]
    shipped = ship(value=tail)
return {"chain": chain, "branches": branches, "total": total, "parity": parity,
        "shipped": shipped}
''', name="code_crash_plan")

CALLS_BEFORE_APPROVAL = 1 + 6 + 4 * 2 + 1 + 2
CALLS = CALLS_BEFORE_APPROVAL + 5 + 1


@tool
def seed(n: int, ctx: ToolContext) -> dict[str, Any]:
    value = work(ctx, "seed", n)
    return {"value": value, "items": [value % 97 + i for i in range(4)]}


@tool
def step(previous: int, label: str, ctx: ToolContext) -> dict[str, int]:
    return {"value": work(ctx, previous, label)}


@tool
def square(x: int, ctx: ToolContext) -> dict[str, int]:
    work(ctx, "square", x)
    return {"value": x * x}


@tool
def combine(values: list[int], ctx: ToolContext) -> dict[str, int]:
    return {"value": work(ctx, values) + sum(values)}


@tool
def ship(value: int, ctx: ToolContext) -> str:
    return f"shipped {value} ({work(ctx, 'ship', value)})"


TOOLS = [seed, step, square, combine, ship]


def main(store: str, side_file: str, run_id: str) -> None:
    os.environ["CRASH_SIDE_FILE"] = side_file
    result = execute_plan(PLAN, tools=TOOLS, inputs={"n": 7}, run_id=run_id, store=store,
                          max_concurrency=3)
    print(json.dumps({"status": result.status, "outputs": result.outputs,
                      "error": str(result.error) if result.error else None,
                      "pending": [p.id for p in result.pending]}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
