"""A graph round ended by something that is not a tool failure (a tool raising
KeyboardInterrupt, or Ctrl-C, while sibling calls still run): the siblings finish and are
journaled before the run is given back, so a resume never runs them again. (A tool's
SystemExit is a failure of that tool: see `ToolControlFlowError`.)"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, tool


def test_siblings_of_an_interrupting_call_are_journaled_before_release(tmp_path: Path) -> None:
    interrupt = KeyboardInterrupt
    raised = threading.Event()
    runs: dict[str, int] = {"boom": 0, "sibling": 0}

    @tool
    def boom() -> str:
        runs["boom"] += 1
        if runs["boom"] == 1:
            raised.set()
            raise interrupt()
        return "boom"

    @tool
    def sibling() -> str:
        runs["sibling"] += 1
        if runs["sibling"] == 1:
            assert raised.wait(30)
            time.sleep(0.3)  # still running when the interrupt reaches the round
        return "sibling"

    plan = {"format": "agentflow/v1", "name": "pair",
            "steps": [{"id": "sibling", "tool": "sibling", "args": {}},
                      {"id": "boom", "tool": "boom", "args": {}}],
            "outputs": {"a": "${steps.sibling.output}", "b": "${steps.boom.output}"}}
    engine = Engine(str(tmp_path / "runs.db"))
    with pytest.raises(interrupt):
        engine.execute(plan, tools=[boom, sibling], run_id="r")

    record = {(e.key, e.kind) for e in engine.journal("r")}
    assert ("sibling", "result") in record
    assert engine.store.get_run("default", "r").lease_owner is None  # type: ignore[union-attr]
    result = engine.resume("r", tools=[boom, sibling])
    assert result.status == "completed"
    assert result.outputs == {"a": "sibling", "b": "boom"}
    assert runs == {"boom": 2, "sibling": 1}


def _ctrl_c_to_the_process() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def _ctrl_c_to_this_thread() -> None:
    """Ctrl-C as the kernel may deliver it: to a tool's thread, not the engine's. Python
    runs the handler in the main thread only, once its loop wakes up."""
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)


@pytest.mark.parametrize("ctrl_c", [_ctrl_c_to_the_process, _ctrl_c_to_this_thread],
                         ids=["to-the-process", "to-a-tool-thread"])
def test_ctrl_c_lets_running_calls_finish_and_journals_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
        ctrl_c: Callable[[], None]) -> None:
    # In order, at any speed: both calls start, Ctrl-C comes, asyncio's handler in the
    # engine's thread takes it (cancelling the round), and only then do the calls return.
    # With sleeps instead the sibling could start after the Ctrl-C under load, and was
    # rightly never run. Delivered to a tool's thread, the Ctrl-C reaches the handler only
    # if it wakes the engine's loop (the calls, waiting for it, would wake it only when
    # their 60 s ran out and failed: ('a', 'error')).
    # Ctrl-C as in an interactive Python, also when pytest runs as a background job
    # (which ignores SIGINT, and asyncio then takes no Ctrl-C).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    runs: dict[str, int] = {"interrupter": 0, "sibling": 0}
    sibling_started, ctrl_c_taken = threading.Event(), threading.Event()
    on_sigint = asyncio.runners.Runner._on_sigint  # type: ignore[attr-defined]

    def take_ctrl_c(runner: asyncio.Runner, *args: Any, **kwargs: Any) -> None:
        try:
            on_sigint(runner, *args, **kwargs)
        finally:
            ctrl_c_taken.set()

    monkeypatch.setattr(asyncio.runners.Runner, "_on_sigint", take_ctrl_c)

    @tool
    def interrupter() -> str:
        runs["interrupter"] += 1
        if runs["interrupter"] == 1:
            assert sibling_started.wait(60)
            ctrl_c()  # Ctrl-C while both calls run
            assert ctrl_c_taken.wait(60)
        return "interrupter"

    @tool
    def sibling() -> str:
        runs["sibling"] += 1
        sibling_started.set()
        assert ctrl_c_taken.wait(60)
        return "sibling"

    plan = {"format": "agentflow/v1", "name": "pair",
            "steps": [{"id": "a", "tool": "interrupter", "args": {}},
                      {"id": "b", "tool": "sibling", "args": {}}],
            "outputs": {"a": "${steps.a.output}", "b": "${steps.b.output}"}}
    engine = Engine(str(tmp_path / "runs.db"))
    with pytest.raises(KeyboardInterrupt):
        engine.execute(plan, tools=[interrupter, sibling], run_id="r")
    assert ctrl_c_taken.is_set()
    record = {(e.key, e.kind) for e in engine.journal("r")}
    assert {("a", "result"), ("b", "result")} <= record
    assert engine.resume("r", tools=[interrupter, sibling]).outputs == {
        "a": "interrupter", "b": "sibling"}
    assert runs == {"interrupter": 1, "sibling": 1}
