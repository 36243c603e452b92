"""What a graph execution keeps: its calls, the progress of its started steps, its outcome,
and the state every part of `GraphExecutor` shares (see `executors.graph`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from agentflow.executors.budget import Budget
from agentflow.executors.children import SubPlans
from agentflow.executors.journal import RunJournal
from agentflow.executors.progress import Observer
from agentflow.executors.waits import WaitBook
from agentflow.plan import CompiledPlan, CompiledStep, Scope, StepView
from agentflow.plan.models import ApprovalSpec
from agentflow.tools import Tool, is_json_scalar

POLICY_GATE = ApprovalSpec(prompt="", on_reject="fail")


@dataclass(slots=True)
class Call:
    """One unit of work of a step: a tool call (one per foreach item), or a wait."""

    key: str
    step: CompiledStep
    kind: str  # tool | approval | timer | event
    item_index: int | None = None
    tool: Tool | None = None
    args: dict[str, Any] | None = None  # converted to the tool's parameter types
    raw: dict[str, Any] | None = None  # as JSON, as journaled
    hashed_args: str | None = None
    gate: ApprovalSpec | None = None
    prompt: str = ""
    due: float = 0.0
    idempotency_key: str = ""
    attempts: int = 0
    failures: int = 0
    timeout: float | None = None  # the step's, evaluated when it started
    size: int | None = None  # of `raw` as JSON, once measured against the limits
    where: str = ""  # how messages name the call: `step 's' (s[2])`


def same_flat_json(converted: Any, raw: Any) -> bool:
    """Whether `converted` arguments are `raw` ones unchanged and already JSON data:
    objects of the same JSON scalars of the same types (so `to_json_value` would give them
    back as they are, and a size measured on one is the other's; `1 == 1.0` is not)."""
    if type(converted) is not dict or type(raw) is not dict or len(converted) != len(raw):
        return False
    for key, value in converted.items():
        if key not in raw or type(value) is not type(other := raw[key]) \
                or not is_json_scalar(value) or value != other:
            return False
    return True


@dataclass(slots=True)
class StepProgress:
    """A started step whose calls have not all settled."""

    calls: list[Call]
    outputs: list[Any]
    unsettled: int
    running: int = 0
    first_error: dict[str, Any] | None = None
    rejection: dict[str, Any] | None = None
    queued: deque[Call] = field(default_factory=deque)
    blocked: list[Call] = field(default_factory=list)
    plain: bool = False
    """Whether every call is a tool call without a gate (then and on every later round:
    retries and calls past a budget come back as they were), so that once the concurrency
    is used up, the rest of the queue can wait without being looked at."""



@dataclass(frozen=True)
class GraphOutcome:
    status: str  # completed | failed | waiting
    outputs: Any
    error: dict[str, Any] | None
    wake_at: float | None = None


class GraphState:
    """The state of one `GraphExecutor` run, made once per execution attempt."""

    def __init__(
        self, compiled: CompiledPlan, tools: Mapping[str, Tool], journal: RunJournal,
        waits: WaitBook, inputs: Mapping[str, Any], *, tenant_id: str, max_concurrency: int,
        threads: Executor, observer: Observer | None = None, max_inline_wait: float = 1.0,
        poll_interval: float = 0.5, budget: Budget | None = None, stream_open: bool = False,
        subplans: SubPlans | None = None,
    ) -> None:
        self.plan = compiled
        self.tools = tools
        self.journal = journal
        self.waits = waits
        self.inputs = inputs
        self.tenant_id = tenant_id
        self.max_concurrency = max_concurrency
        self.threads = threads
        self.observer = observer
        self.max_inline_wait = max_inline_wait
        self.poll_interval = poll_interval
        self.budget = budget or Budget(None, journal, tools)
        self.subplans = subplans
        self.views: dict[str, StepView] = {}
        self.failed_upstream: set[str] = set()  # failed steps and steps below a failure
        self.first_failure: dict[str, Any] | None = None
        self.unsettled_deps = {sid: len(s.dependencies) for sid, s in compiled.steps.items()}
        self.ready: deque[str] = deque(sid for sid, n in self.unsettled_deps.items() if n == 0)
        self.progress: dict[str, StepProgress] = {}
        self.launchable: dict[str, None] = {}  # steps with queued calls, in order
        self.running: dict[asyncio.Future[Any], Call] = {}
        self.delayed: dict[asyncio.Future[Any], Call] = {}
        self.timed_out: dict[str, concurrent.futures.Future[Any]] = {}  # still running
        self.stream_open = stream_open
        self.stream_error: Exception | None = None
        self._arrival: asyncio.Future[None] | None = None  # done when the stream moved
        # the scope of most steps (no item, upstream succeeded): it reads `views` as it grows
        self._plain_scope = Scope(inputs=inputs, steps=self.views,
                                  max_text=journal.limits.max_value_bytes)

    def _scope(self, step: CompiledStep, *, upstream_ok: bool = True,
               item: Any = None, index: int | None = None) -> Scope:
        failure = bool(self.failed_upstream) \
            and not self.failed_upstream.isdisjoint(step.dependencies)
        if upstream_ok and not failure and index is None and item is None:
            return self._plain_scope
        return Scope(inputs=self.inputs, steps=self.views, item=item, index=index,
                     upstream_success=upstream_ok, upstream_failure=failure,
                     max_text=self.journal.limits.max_value_bytes)
