"""A deploy plan with an approval gate, driven from separate processes in the tests.

`python -m tests.support.approval_plan ACTION STORE SIDE_FILE RUN_ID [PENDING_ID]` where
ACTION is `start`, `approve`, `resume` or `approve-and-resume`; prints the run's status,
outputs and pending ids as JSON. Every tool call appends its call key to SIDE_FILE.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from agentflow import Engine, RunResult, ToolContext, tool
from agentflow.errors import AgentflowError


def _log(ctx: ToolContext) -> None:
    with open(os.environ["APPROVAL_SIDE_FILE"], "a", encoding="utf-8") as side:
        side.write(json.dumps({"key": ctx.call_key, "pid": os.getpid()}) + "\n")


@tool
def build(ref: str, ctx: ToolContext) -> dict[str, str]:
    _log(ctx)
    return {"artifact": f"app-{ref}.tar.gz"}


@tool
def deploy(artifact: str, ctx: ToolContext) -> dict[str, str]:
    _log(ctx)
    return {"url": f"https://prod.example.test/{artifact}"}


@tool
def notify(text: str, ctx: ToolContext) -> str:
    _log(ctx)
    return text


TOOLS = [build, deploy, notify]

PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "deploy",
    "inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
    "steps": [
        {"id": "build", "tool": "build", "args": {"ref": "${inputs.ref}"}},
        {"id": "ok", "approval": {"prompt": "Deploy ${steps.build.output.artifact}?"}},
        {"id": "deploy", "tool": "deploy",
         "args": {"artifact": "${steps.build.output.artifact}"},
         "when": "steps.ok.output.approved"},
        {"id": "notify", "tool": "notify", "args": {"text": "deploy ${steps.deploy.status}"},
         "after": ["deploy"], "when": "always()"},
    ],
    "outputs": {"url": "${steps.deploy.output.url}", "notice": "${steps.notify.output}"},
}


def summary(result: RunResult) -> dict[str, Any]:
    return {"status": result.status, "outputs": result.outputs,
            "pending": [p.id for p in result.pending]}


def main(action: str, store: str, side_file: str, run_id: str, pending_id: str = "") -> None:
    os.environ["APPROVAL_SIDE_FILE"] = side_file
    engine = Engine(store, tools=TOOLS)
    try:
        if action == "start":
            result = engine.execute(PLAN, inputs={"ref": "v2"}, run_id=run_id)
        elif action == "approve":
            engine.approve(run_id, pending_id, by="alice", comment="ship it")
            result = engine.get_run(run_id)
        elif action == "resume":
            result = engine.resume(run_id)
        else:
            try:
                engine.approve(run_id, pending_id, by=f"pid{os.getpid()}")
            except AgentflowError as error:
                print(json.dumps({"approve_error": type(error).__name__}), file=sys.stderr)
            result = engine.resume(run_id)
    except AgentflowError as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        return
    print(json.dumps(summary(result)))


if __name__ == "__main__":
    main(*sys.argv[1:])
