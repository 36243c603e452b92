"""A sync tool past its step's timeout cannot be stopped (Python cannot kill a thread): the
step fails or retries at the timeout, but a retry waits for the timed-out attempt to end,
unless the tool declares that attempts may overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentflow import Engine, ToolContext, tool
from agentflow.executors import calls
from agentflow.executors.calls import stray_calls


def plan_with_timeout() -> dict[str, object]:
    return {"format": "agentflow/v1", "name": "hang",
            "steps": [{"id": "slow", "tool": "slow", "args": {}, "timeout": 0.2,
                       "retry": {"max_attempts": 2, "initial_delay": 0.01}}],
            "outputs": {"attempt": "${steps.slow.output}"}}


def wait_until(condition: Callable[[], bool]) -> None:
    """Until `condition` holds (a minute at most: a safety net, not a measure)."""
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def test_a_retry_never_overlaps_a_timed_out_attempt_still_running(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    strays = stray_calls()

    @tool
    def slow(ctx: ToolContext) -> int:
        events.append(("start", ctx.attempt))
        if ctx.attempt == 1:  # ends only once the engine has timed it out (at any speed)
            wait_until(lambda: stray_calls() > strays)
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


def test_timed_out_calls_still_running_are_bounded_per_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The calls earlier tests timed out return first: one returning during this test took
    # the count below what it counts (it failed so under load: (1, 1) != (1, 2)).
    wait_until(lambda: stray_calls() == 0)
    strays, started = stray_calls(), [0]
    monkeypatch.setattr(calls, "MAX_STRAY_CALLS", strays + 2)
    release = threading.Event()

    @tool
    def hang() -> str:
        started[0] += 1
        release.wait(60)
        return "done"

    def plan(timeout: float) -> dict[str, object]:
        return {"format": "agentflow/v1", "name": "hang",
                "steps": [{"id": "h", "tool": "hang", "args": {}, "timeout": timeout}],
                "outputs": {"h": "${steps.h.output}"}}

    engine = Engine(str(tmp_path / "runs.db"), tools=[hang])
    try:
        for n in (1, 2):  # up to the bound, each call starts and is left running
            result = engine.execute(plan(0.01))
            assert result.error is not None and result.error.type == "StepTimeout"
            assert (started[0], stray_calls()) == (n, strays + n)
        refused = engine.execute(plan(0.01))
        assert refused.error is not None and refused.error.type == "StepTimeout"
        assert refused.error.message == (
            f"step 'h': tool 'hang' was not started: {strays + 2} timed-out calls of sync "
            f"tools still run in this process (at most {strays + 2}; a thread cannot be "
            "stopped, so none starts until one returns)")
        assert started[0] == 2
    finally:
        release.set()
    wait_until(lambda: stray_calls() == strays)  # they returned: calls start again
    assert engine.execute(plan(60)).outputs == {"h": "done"} and started[0] == 3
