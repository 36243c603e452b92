"""Tools of `bench/scale_out.py`: `step` sleeps `SCALE_TOOL_SECONDS` (0: a no-op), standing
for an I/O-bound call such as an HTTP request."""

from __future__ import annotations

import os
import time

from agentflow import tool

DELAY = float(os.environ.get("SCALE_TOOL_SECONDS", "0"))


@tool
def step(n: int) -> int:
    if DELAY:
        time.sleep(DELAY)
    return n


TOOLS = [step]
