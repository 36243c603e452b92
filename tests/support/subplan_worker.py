"""A process that runs tenant acme's `release` plan, whose `ship` step is a sub-plan, until
killed: `python -m tests.support.subplan_worker STORE SIDE RUN_ID [graph|code]` (`code`: the
code plan that calls `run_plan("ship", ...)`). Every tool call appends a line to the side
file; `deploy` then sleeps while $SUBPLAN_HANG is set."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agentflow import Engine, ToolContext, code_plan, tool

CHILD: dict[str, Any] = {
    "format": "agentflow/v1", "name": "ship",
    "inputs": {"type": "object", "properties": {"artifact": {"type": "string"}}},
    "steps": [{"id": "deploy", "tool": "deploy", "args": {"artifact": "${inputs.artifact}"}}],
    "outputs": {"deployed": "${steps.deploy.output}"}}
PARENT: dict[str, Any] = {
    "format": "agentflow/v1", "name": "release",
    "steps": [{"id": "build", "tool": "build", "args": {"ref": "v1"}},
              {"id": "ship", "plan": "ship", "inputs": {"artifact": "${steps.build.output}"}}],
    "outputs": {"shipped": "${steps.ship.output.deployed}"}}
CODE_PARENT = code_plan('artifact = build(ref="v1")\n'
                        'return {"shipped": run_plan("ship", artifact=artifact)["deployed"]}\n',
                        "release")


def _log(ctx: ToolContext, name: str) -> None:
    with Path(os.environ["SUBPLAN_SIDE"]).open("a") as out:
        out.write(json.dumps({"tool": name, "run": ctx.run_id, "attempt": ctx.attempt,
                              "key": ctx.idempotency_key}) + "\n")


@tool
def build(ref: str, ctx: ToolContext) -> str:
    _log(ctx, "build")
    return f"artifact-{ref}"


@tool
def deploy(artifact: str, ctx: ToolContext) -> str:
    _log(ctx, "deploy")
    if os.environ.get("SUBPLAN_HANG"):
        time.sleep(600)
    return f"deployed {artifact}"


if __name__ == "__main__":
    store, side, run_id = sys.argv[1:4]
    kind = sys.argv[4] if len(sys.argv) > 4 else "graph"
    os.environ["SUBPLAN_SIDE"] = side
    engine = Engine(store, lease_seconds=1.0)
    acme = engine.tenant("acme", tools=[build, deploy])
    acme.plans.put("ship", CHILD)
    acme.execute(CODE_PARENT if kind == "code" else PARENT, run_id=run_id)
