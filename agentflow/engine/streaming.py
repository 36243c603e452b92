"""Plans that arrive step by step, while a model still writes them.

A source (such as `agentflow.llm.stream_plan`) yields `StepReady` for each step once it and
the steps it depends on are complete, then `PlanReady` with the whole plan. `PlanStream`
turns those events into ever larger compiled plans, validating each step with the steps
before it, so the executor can start a step as soon as it arrives.

A streamed run is created when its first step is ready, pinned to `STREAMING_PLAN` (a marker
shared by all runs whose plan is still streaming: a partial plan must never be resumed as if
it were whole) and re-pinned to the whole plan when `PlanReady` arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from agentflow.errors import AgentflowError
from agentflow.plan import CompiledPlan, compile_plan
from agentflow.store import StoredPlan
from agentflow.tools import Tool


@dataclass(frozen=True)
class StepReady:
    """A step that can be scheduled: it and every step it depends on are complete.
    `elapsed` is the seconds since the request was sent."""

    step: dict[str, Any]
    elapsed: float


@dataclass(frozen=True)
class PlanReady:
    """The whole plan, validated."""

    plan: dict[str, Any]
    elapsed: float


PlanEvent = StepReady | PlanReady
PlanEvents = Iterable[PlanEvent] | AsyncIterable[PlanEvent]

STREAMING_KIND = "streaming"
STREAMING_BODY = '{"name":"streaming","streaming":true}'
STREAMING_HASH = hashlib.sha256(STREAMING_BODY.encode()).hexdigest()


def streaming_plan(tenant_id: str) -> StoredPlan:
    """The provisional pin of a run whose plan is still streaming."""
    return StoredPlan(tenant_id, STREAMING_HASH, STREAMING_KIND, STREAMING_BODY, 0.0)


class PlanStream:
    """The plan of a run as its events arrive, each arrival validated against `tools`.

    Stops consuming the source at `PlanReady`. A sync source (a blocking iterator, such as
    one reading an HTTP stream) is read on a thread of its own, so the loop runs tools
    meanwhile.
    """

    def __init__(self, events: PlanEvents, tools: dict[str, Tool],
                 inputs_schema: dict[str, Any] | None) -> None:
        self.events = events
        self.tools = tools
        self.inputs_schema = inputs_schema or {}
        self.steps: list[dict[str, Any]] = []
        self._source: AsyncIterator[PlanEvent] | _Pump | None = None

    async def next_plan(self) -> tuple[CompiledPlan, bool]:
        """The plan after the next event, and whether it is the whole plan: the steps
        streamed so far (validated together, without outputs), or `PlanReady`'s plan.
        `PlanValidationError` when it does not validate; `AgentflowError` when the source
        ends without `PlanReady`; the source's own errors propagate."""
        event = await self._next_event()
        if isinstance(event, PlanReady):
            self.close()
            return compile_plan(event.plan, self.tools), True
        if not isinstance(event, StepReady):
            raise AgentflowError(f"a plan stream yields StepReady and PlanReady events, not "
                                 f"{type(event).__name__}")
        self.steps.append(event.step)
        return compile_plan({"inputs": self.inputs_schema, "steps": self.steps},
                            self.tools), False

    async def _next_event(self) -> PlanEvent:
        if self._source is None:
            self._source = (aiter(self.events) if isinstance(self.events, AsyncIterable)
                            else _Pump(self.events))
        try:
            return await anext(self._source)
        except StopAsyncIteration:
            raise AgentflowError("the plan stream ended before the whole plan "
                                 "(no PlanReady)") from None

    def close(self) -> None:
        """Stop reading a sync source (its thread closes it at its next event)."""
        if isinstance(self._source, _Pump):
            self._source.stopped.set()


class _Pump:
    """Iterates a blocking source on a daemon thread and hands its events to the loop.

    A daemon thread rather than the loop's executor: a source blocked on the network must
    not hold up the loop's shutdown once the run is over.
    """

    def __init__(self, events: Iterable[PlanEvent]) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[PlanEvent | None, BaseException | None]] = \
            asyncio.Queue()
        self.stopped = threading.Event()
        threading.Thread(target=self._read, args=(events,), daemon=True,
                         name="agentflow-plan-stream").start()

    def __aiter__(self) -> _Pump:
        return self

    async def __anext__(self) -> PlanEvent:
        event, error = await self.queue.get()
        if error is not None:
            raise error
        if event is None:
            raise StopAsyncIteration
        return event

    def _read(self, events: Iterable[PlanEvent]) -> None:
        iterator: Iterator[PlanEvent] | None = None
        try:
            iterator = iter(events)
            for event in iterator:
                if self.stopped.is_set():
                    return
                self._put(event, None)
            self._put(None, None)
        except Exception as error:
            self._put(None, error)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _put(self, event: PlanEvent | None, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (event, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stopped.set()
