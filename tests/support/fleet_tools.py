"""The tool of the fleet tests: logs each execution (run, journal key, pid, start time) to
the file `FLEET_LOG` names, so the test can count executions across worker processes."""

from __future__ import annotations

import os
import time

from agentflow import ToolContext, tool


@tool
def count(label: str, ctx: ToolContext) -> str:
    started = time.time()
    with open(os.environ["FLEET_LOG"], "a") as log:
        log.write(f"{ctx.tenant_id}\t{ctx.run_id}\t{ctx.call_key}\t{os.getpid()}\t{started!r}\n")
    time.sleep(float(os.environ.get("FLEET_TOOL_SECONDS", "0.02")))
    return label


TOOLS = [count]
