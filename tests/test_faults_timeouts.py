"""A sync tool past its step's timeout cannot be stopped (Python cannot kill a thread): the
step fails or retries at the timeout, but a retry waits for the timed-out attempt to end,
unless the tool declares that attempts may overlap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from agentflow import Engine, ToolContext, tool


def plan_with_timeout() -> dict[str, object]:
    return {"format": "agentflow/v1", "name": "hang",
            "steps": [{"id": "slow", "tool": "slow", "args": {}, "timeout": 0.2,
                       "retry": {"max_attempts": 2, "initial_delay": 0.01}}],
            "outputs": {"attempt": "${steps.slow.output}"}}


def test_a_retry_never_overlaps_a_timed_out_attempt_still_running(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    @tool
    def slow(ctx: ToolContext) -> int:
        events.append(("start", ctx.attempt))
        if ctx.attempt == 1:
            time.sleep(1.0)  # far past the 0.2 s timeout
        events.append(("end", ctx.attempt))
        return ctx.attempt

    result = Engine(str(tmp_path / "runs.db")).execute(plan_with_timeout(), tools=[slow])
    assert result.status == "completed" and result.outputs == {"attempt": 2}
    assert events == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]


def test_a_tool_may_declare_that_its_attempts_overlap(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    release = threading.Event()

    @tool(overlapping_retries=True)
    def slow(ctx: ToolContext) -> int:
        events.append(("start", ctx.attempt))
        if ctx.attempt == 1:
            release.wait(30)
        events.append(("end", ctx.attempt))
        return ctx.attempt

    try:
        result = Engine(str(tmp_path / "runs.db")).execute(plan_with_timeout(), tools=[slow])
    finally:
        release.set()
    assert result.outputs == {"attempt": 2}
    assert events[:3] == [("start", 1), ("start", 2), ("end", 2)]
