"""Progress events: what an executor reports while it works (for CLIs and notebooks).

Observers are called on the executor's thread and must return quickly; an observer that
raises is ignored rather than allowed to break a run.

`tracer` is the one hook for tracing (`agentflow.engine.telemetry.instrument()` sets it):
a span around each tool call and each journal commit. While it is None, which it is unless
tracing was asked for, a call pays one comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentflow.tools import ToolContext

EventKind = Literal["call_started", "call_succeeded", "call_failed", "call_retrying",
                    "step_settled", "waiting", "run_finished"]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    run_id: str
    step_id: str | None = None
    key: str | None = None
    status: str | None = None
    attempt: int = 0
    detail: Any = None
    at: float = field(default_factory=time.time)


Observer = Callable[[ProgressEvent], None]


def notify(observer: Observer | None, event: ProgressEvent) -> None:
    """Tell the observer, never letting its failure reach the run."""
    if observer is None:
        return
    try:
        observer(event)
    except Exception:
        return


class TracedCall(Protocol):
    """One traced tool call: `ctx` carries the call's span context into the tool."""

    ctx: ToolContext

    def succeeded(self, result: Any) -> None:
        """Record the call's JSON result (its size)."""


class Tracer(Protocol):
    def call(self, ctx: ToolContext, tool: str) -> AbstractContextManager[TracedCall]:
        """A span around one tool call; an exception leaving the block marks it failed."""

    def commit(self, tenant_id: str, run_id: str, kinds: list[str]) -> None:
        """A scheduling round committed journal entries of these kinds."""


tracer: Tracer | None = None
