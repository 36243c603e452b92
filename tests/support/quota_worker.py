"""A process that runs tenant acme's `spend` plan until killed: `python -m
tests.support.quota_worker STORE SIDE RUN_ID`. Each call of `spend` appends a line to the
side file, reports a cost of 1 USD through `ctx.charge`, and, for the item named by
$QUOTA_HANG_ON, then sleeps until the process is killed."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agentflow import Engine, ToolContext, tool

PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "spend",
    "steps": [{"id": "spend", "tool": "spend", "foreach": [1, 2, 3, 4, 5], "max_parallel": 1,
               "args": {"item": "${item}"}}],
    "outputs": {"spent": "${steps.spend.output}"}}


@tool
def spend(item: int, ctx: ToolContext) -> int:
    side = Path(os.environ["QUOTA_SIDE"])
    with side.open("a") as out:
        out.write(json.dumps({"item": item, "attempt": ctx.attempt}) + "\n")
    ctx.charge(cost_usd=1.0, tokens=10)
    if os.environ.get("QUOTA_HANG_ON") == str(item):
        time.sleep(600)
    return item


if __name__ == "__main__":
    store, side, run_id = sys.argv[1:4]
    os.environ["QUOTA_SIDE"] = side
    Engine(store).tenant("acme", tools=[spend]).execute(PLAN, run_id=run_id)
