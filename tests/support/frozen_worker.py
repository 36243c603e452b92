"""A worker process that freezes itself (SIGSTOP) at a chosen point, for fencing tests.

`python -m tests.support.frozen_worker STORE RUN_ID` runs a three-call plan (first ->
second -> third; a graph plan, or the same as a code plan with `AF_PLAN=code`) with a lease
of `AF_LEASE` seconds and prints one JSON line: the outcome (`result`, `LeaseLost`,
`RunLeased`).

- `AF_SIDE_FILE`: each tool call appends `{"key", "pid", "event"}` lines (`start`, `end`).
- `AF_FREEZE=between`: the process stops itself just as the executor starts the second
  call (its intent and the result of `first` are journaled); `AF_FREEZE=inside`: it stops
  in the middle of the second call, after logging its start. A signal a process sends
  itself may take effect a moment later, so the frozen thread then also waits for the
  file `AF_CONT_FILE`, which the test creates just before it sends SIGCONT.

Each tool returns the pid of the process that ran it, so a test can tell whose result the
journal kept.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from agentflow import Engine, LeaseLost, RunLeased, ToolContext, code_plan, tool
from agentflow.executors.progress import ProgressEvent


def log(event: str, key: str) -> None:
    line = json.dumps({"event": event, "key": key, "pid": os.getpid()}) + "\n"
    fd = os.open(os.environ["AF_SIDE_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def second_key() -> str:
    return "c2" if os.environ.get("AF_PLAN") == "code" else "second"


def freeze() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)
    while not os.path.exists(os.environ["AF_CONT_FILE"]):
        time.sleep(0.01)


def _work(ctx: ToolContext) -> int:
    log("start", ctx.call_key)
    if os.environ.get("AF_FREEZE") == "inside" and ctx.call_key == second_key():
        freeze()
    log("end", ctx.call_key)
    return os.getpid()


@tool
def first(ctx: ToolContext) -> int:
    return _work(ctx)


@tool
def second(after: int, ctx: ToolContext) -> int:
    return _work(ctx)


@tool
def third(after: int, ctx: ToolContext) -> int:
    return _work(ctx)


TOOLS = [first, second, third]
PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "frozen_worker",
    "steps": [
        {"id": "first", "tool": "first", "args": {}},
        {"id": "second", "tool": "second", "args": {"after": "${steps.first.output}"}},
        {"id": "third", "tool": "third", "args": {"after": "${steps.second.output}"}},
    ],
    "outputs": {"first": "${steps.first.output}", "second": "${steps.second.output}",
                "third": "${steps.third.output}"},
}
CODE_PLAN = code_plan("""
a = first()
b = second(after=a)
return {"first": a, "second": b, "third": third(after=b)}
""", name="frozen_worker")


def freeze_between(event: ProgressEvent) -> None:
    if event.kind == "call_started" and event.key == second_key():
        freeze()


def main(store: str, run_id: str) -> None:
    engine = Engine(store, lease_seconds=float(os.environ["AF_LEASE"]))
    between = os.environ.get("AF_FREEZE") == "between"
    try:
        plan = CODE_PLAN if os.environ.get("AF_PLAN") == "code" else PLAN
        result = engine.execute(plan, tools=TOOLS, run_id=run_id,
                                observer=freeze_between if between else None)
    except (RunLeased, LeaseLost) as error:
        print(json.dumps({"outcome": type(error).__name__}))
        return
    print(json.dumps({"outcome": "result", "status": result.status}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
