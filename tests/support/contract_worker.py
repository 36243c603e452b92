"""A small plan run in a separate process by the contract tests.

`python -m tests.support.contract_worker STORE RUN_ID` runs (or continues) the run and prints
one JSON line: `{"outcome": "result", "status": ..., "outputs": ...}`, or
`{"outcome": "RunLeased"}` when another worker holds the run, or `{"outcome": "LeaseLost"}`
when this worker's lease was taken over while it worked.

Environment:
- `AF_SIDE_FILE` (required): every tool call appends a `start` line (call key, idempotency
  key, attempt, pid) before it works and an `end` line after, so a test can count
  executions across processes.
- `AF_KILL_KEY`: the call with this key SIGKILLs its own process on its first attempt, right
  after logging its start: a worker that dies in the middle of a tool call.
- `AF_GO_FILE`: wait until this file exists before starting (to line up racing workers).
- `AF_SLEEP`: seconds each call works (default 0.01).
- `AF_LEASE`: lease length in seconds of the worker's `Engine` (default: the engine's).

The tools are deterministic: the outputs depend only on the inputs, never on the run id,
the attempt or the timing, so an interrupted-and-resumed run must end with the same outputs
as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agentflow import Engine, LeaseLost, RunLeased, ToolContext, tool


def side_events(side: Path) -> list[dict[str, Any]]:
    """The side file's records, skipping a last line cut short by a kill."""
    if not side.exists():
        return []
    lines = side.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def starts(side: Path) -> list[dict[str, Any]]:
    return [event for event in side_events(side) if event["event"] == "start"]


def _log(event: str, ctx: ToolContext) -> None:
    line = json.dumps({"event": event, "key": ctx.call_key, "step": ctx.step_id,
                       "idem": ctx.idempotency_key, "attempt": ctx.attempt,
                       "run": ctx.run_id, "pid": os.getpid()})
    fd = os.open(os.environ["AF_SIDE_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _work(ctx: ToolContext) -> None:
    _log("start", ctx)
    if os.environ.get("AF_KILL_KEY") == ctx.call_key and ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("AF_SLEEP", "0.01")))
    _log("end", ctx)


@tool
def seed(n: int, ctx: ToolContext) -> dict[str, Any]:
    _work(ctx)
    return {"value": n * 10, "items": [n + 1, n + 2, n + 3]}


@tool
def square(x: int, ctx: ToolContext) -> int:
    _work(ctx)
    return x * x


@tool
def join(values: list[int], base: int, ctx: ToolContext) -> int:
    _work(ctx)
    return base + sum(values)


@tool
def label(total: int, ctx: ToolContext) -> dict[str, str]:
    _work(ctx)
    return {"text": f"total={total}"}


TOOLS = [seed, square, join, label]
# Every call key of one run, in dependency order.
CALL_KEYS = ["seed", "fan[0]", "fan[1]", "fan[2]", "join", "last"]


def build_plan() -> dict[str, Any]:
    return {
        "format": "agentflow/v1",
        "name": "contract_worker",
        "inputs": {"type": "object", "properties": {"n": {"type": "integer"}},
                   "required": ["n"]},
        "steps": [
            {"id": "seed", "tool": "seed", "args": {"n": "${inputs.n}"}},
            {"id": "fan", "tool": "square", "foreach": "${steps.seed.output.items}",
             "args": {"x": "${item}"}, "max_parallel": 2},
            {"id": "join", "tool": "join",
             "args": {"values": "${steps.fan.output}", "base": "${steps.seed.output.value}"}},
            {"id": "last", "tool": "label", "args": {"total": "${steps.join.output}"}},
        ],
        "outputs": {"squares": "${steps.fan.output}", "total": "${steps.join.output}",
                    "text": "${steps.last.output.text}"},
    }


INPUTS = {"n": 2}
# What an uninterrupted run returns (n=2: items 3, 4, 5; 20 + 9 + 16 + 25 = 70).
EXPECTED_OUTPUTS = {"squares": [9, 16, 25], "total": 70, "text": "total=70"}


def main(store: str, run_id: str) -> None:
    go = os.environ.get("AF_GO_FILE")
    if go:
        deadline = time.monotonic() + 30
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise SystemExit("go file never appeared")
            time.sleep(0.0005)
    lease = os.environ.get("AF_LEASE")
    engine = Engine(store, lease_seconds=float(lease)) if lease else Engine(store)
    try:
        result = engine.execute(build_plan(), tools=TOOLS, inputs=INPUTS, run_id=run_id)
    except (RunLeased, LeaseLost) as error:
        print(json.dumps({"outcome": type(error).__name__}))
        return
    print(json.dumps({"outcome": "result", "status": result.status,
                      "outputs": result.outputs}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
