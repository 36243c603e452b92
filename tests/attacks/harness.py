"""The attacker's harness: the tools attack plans call, and the checks every attack must pass.

An attack is stopped cleanly when
- it is refused before anything runs (an `AgentflowError` naming what and where; no run is
  created, no tool runs), or its run ends `failed` (or `waiting` at a gate that held) with
  an agentflow error, or the plan's own exception, whose message names the problem;
- no message the attacker sees leaks the host: paths, object addresses, tracebacks, the
  engine's own classes;
- the engine's process stayed responsive (in isolation mode "process", where plan code runs
  elsewhere): while an isolate ran the attack until a limit stopped it, a heartbeat thread
  of the engine beat at least `MIN_BEATS` times between the plan's first call and its end
  (a count between two events: a frozen engine makes none, however loaded the machine);
- no completed tool call ran twice (each idempotency key ran once), also after a resume;
- no run is left "running", and the engine runs the next plan as usual.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentflow import Engine, RunNotFound, SandboxLimits, ToolContext, code_plan, tool
from agentflow.errors import AgentflowError, PlanValidationError
from agentflow.executors.limits import Limits
from tests.support.isolates import Heartbeat

MIN_BEATS = 3  # heartbeats while an isolate runs an attack until stopped: it keeps beating
STOPPED_AT_LIMIT = {"IsolateTimedOut", "IsolateCpuExceeded"}
"""How a run ends when its isolate ran until a limit of time stopped it."""

#: Small limits, so each attack is stopped in a fraction of a second.
SMALL = SandboxLimits(max_seconds=0.5, max_memory_growth=200 << 20, max_depth=50,
                      max_operations=50_000, max_sequence_length=1_000_000,
                      max_int_bits=20_000)
SMALL_VALUES = Limits(max_value_bytes=1 << 20, max_foreach_items=1_000,
                      max_run_journal_bytes=8 << 20)

#: What no message shown to a plan's author may contain.
HOST_MARKERS = ("/work/", "/root", "/home/", "/tmp/", "site-packages", "/usr/lib", " at 0x",
                "Traceback (most recent", 'File "', "bound method", "_Execution",
                "ValueGuards", "BuiltinGuards", "CodeExecutor", "GraphExecutor", "PlanFunction",
                "_af_main_", "agentflow.")
PLAN_ERRORS = {"SandboxViolation", "IsolateTimedOut", "IsolateCpuExceeded",
               "IsolateOutOfMemory", "LimitExceeded", "ExpressionError", "ToolCallError",
               "TypeError", "ValueError", "StopIteration", "RuntimeError", "RecursionError",
               "NonDeterminismError", "AttributeError", "KeyError", "OverflowError",
               "StepTimeout", "ReferenceResolutionError", "AssertionError", "IndexError",
               "ZeroDivisionError", "UnboundLocalError", "UnicodeError", "NameError",
               "AgentflowError"}
"""Error types a run may end with: agentflow's own, or the exception the plan itself raised
(or caused) in its code."""


@dataclass
class Calls:
    """Every tool call, by idempotency key; `labels` counts side_effect's labels and
    `beats_at` holds the heartbeat's count when each label was first seen."""

    keys: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    beats_at: dict[str, int] = field(default_factory=dict)
    heartbeat: Heartbeat | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, ctx: ToolContext, label: str | None = None) -> None:
        with self.lock:
            self.keys[ctx.idempotency_key] += 1
            if label is not None:
                self.labels[label] += 1
                if self.heartbeat is not None:
                    self.beats_at.setdefault(label, self.heartbeat.beats)

    def clear(self) -> None:
        self.keys.clear()
        self.labels.clear()
        self.beats_at.clear()

    def none_twice(self) -> None:
        twice = [key for key, count in self.keys.items() if count > 1]
        assert not twice, f"{len(twice)} completed call(s) executed twice"


calls = Calls()


@tool
def side_effect(label: str, ctx: ToolContext) -> str:
    """A call with a side effect: the attack's prefix, to see it is never made twice."""
    calls.note(ctx, label)
    return label


@tool
def echo(value: Any, ctx: ToolContext) -> Any:
    calls.note(ctx)
    return value


@tool
def produce(n: int, ctx: ToolContext, size: int = 1) -> list[str]:
    """A list of `n` strings of `size` characters: a tool result an attack amplifies."""
    calls.note(ctx)
    return ["x" * size] * n


@tool
def text(n: int, ctx: ToolContext) -> str:
    calls.note(ctx)
    return "a" * n


@tool(requires_approval=True)
def deploy(target: str, ctx: ToolContext) -> str:
    """A tool the host gates: no plan may run it without a person's approval."""
    calls.note(ctx, f"deploy:{target}")
    return target


@tool(requires_approval=True, approvers=["alice"])
def transfer(amount: int, ctx: ToolContext) -> int:
    """A gated tool only alice may approve."""
    calls.note(ctx, f"transfer:{amount}")
    return amount


@tool
def read_config(name: str, ctx: ToolContext) -> str:
    """Fails as host code does: with a host path and the environment in its message."""
    calls.note(ctx)
    raise FileNotFoundError(2, f"No such file (HOME={os.environ.get('HOME')})",
                            f"/etc/agentflow/{name}")


TOOLS = [side_effect, echo, produce, text, deploy, transfer, read_config]
FIRST = "side_effect(label='before')\n"


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Objects the test process holds stay out of the garbage collector's full passes while
    attacks run: a pause to walk the whole test suite's heap is not the engine's doing."""
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def open_engine(store_url: str, isolation: str, isolates: Any) -> Engine:
    calls.clear()
    return Engine(store_url, tools=TOOLS, isolation=isolation, isolates=isolates,  # type: ignore[arg-type]
                  limits=SMALL_VALUES, max_inline_wait=0.2)


def assert_no_leak(text: str, what: str) -> None:
    for marker in HOST_MARKERS:
        assert marker not in text, f"{what} leaks {marker!r}: {text[:300]!r}"


@dataclass
class Outcome:
    """How an attack ended: refused (an exception) or a run's result."""

    refused: AgentflowError | None
    status: str | None
    error_type: str | None
    message: str
    beats: int | None
    """Heartbeats between the plan's first call and its end (None: it made no call)."""


def attack(engine: Engine, plan: Any, *, run_id: str = "attack", tenant: str = "default",
           limits: SandboxLimits | None = SMALL, inputs: dict[str, Any] | None = None,
           allowed: set[str] | frozenset[str] = frozenset(PLAN_ERRORS),
           may_wait: bool = False) -> Outcome:
    """Run one attack plan and check it was stopped cleanly (see the module docstring)."""
    calls.clear()
    refused: AgentflowError | None = None
    gc.freeze()  # see `frozen_heap`: the heartbeat counts the engine, not the suite's heap
    with Heartbeat().running() as heartbeat:
        calls.heartbeat = heartbeat
        try:
            result = engine.execute(plan, run_id=run_id, tenant=tenant, limits=limits,
                                    inputs=inputs)
        except AgentflowError as error:
            refused = error
        finally:
            calls.heartbeat = None
        first = calls.beats_at.get("before")
        beats = None if first is None else heartbeat.beats - first
    if refused is not None:
        outcome = Outcome(refused, None, type(refused).__name__, str(refused), beats)
        assert outcome.message
        assert_no_leak(outcome.message, "the refusal")
        if isinstance(refused, PlanValidationError):
            assert refused.issues and all(issue.path and issue.message
                                          for issue in refused.issues)
            assert not calls.keys, "a tool ran for a plan that was refused"
            with pytest.raises(RunNotFound):
                engine.get_run(run_id, tenant=tenant)
    else:
        error = result.error
        outcome = Outcome(None, result.status, error.type if error else None,
                          error.message if error else "", beats)
        if engine.isolation == "process" and outcome.error_type in STOPPED_AT_LIMIT \
                and beats is not None:
            assert beats >= MIN_BEATS, \
                f"the engine froze: {beats} heartbeat(s) while its isolate ran the attack"
        if result.status == "waiting":
            assert may_wait, f"the attack left its run waiting: {result.pending}"
        else:
            assert result.status == "failed" and error is not None, \
                f"the attack was not stopped: {result.status} {str(result.outputs)[:200]}"
            assert error.type in allowed, f"{error.type}: {error.message[:300]}"
            assert error.message
            assert_no_leak(error.message, "the run's error")
        assert engine.get_run(run_id, tenant=tenant).status == result.status
        again = engine.resume(run_id, tenant=tenant)
        assert again.status == result.status
    running = engine.list_runs(tenant=tenant, status="running")
    assert not running, f"runs left running: {[(run.run_id, run.status) for run in running]}"
    calls.none_twice()
    assert calls.labels["before"] <= 1
    return outcome


def code_attack(engine: Engine, source: str, **options: Any) -> Outcome:
    """A code plan attack after a first call with a side effect."""
    return attack(engine, code_plan(FIRST + source), **options)


def next_plan_runs(engine: Engine) -> None:
    """The engine (and its isolate pool) serves the next plan as usual."""
    result = engine.execute(code_plan("return side_effect(label='next')"), run_id="next")
    assert (result.status, result.outputs) == ("completed", "next"), result.error


def cases(table: dict[str, Any]) -> list[Any]:
    """pytest params of a {name: case} table, with the names as ids."""
    return [pytest.param(case, id=name) for name, case in table.items()]
