"""OpenTelemetry traces of runs (the `[otel]` extra): `instrument()` turns them on.

Spans, all named `agentflow.*` with `agentflow.tenant` and `agentflow.run_id` attributes:

- `agentflow.run`: one execution of a run (start, or a resume in any process), with its
  plan hash and final status. It links to the run's previous execution, whose trace context
  the store keeps (`Store.put_trace`), so a run resumed days later in another process
  still leads back to the spans that came before it.
- `agentflow.round`: a scheduling round's commit of journal entries (how many intents,
  results, errors ...).
- `agentflow.tool`: one attempt of one tool call: step id, call key, attempt, idempotency
  key, and the result's size or the error (then the span's status is ERROR). The tool gets
  the span's context in `ToolContext.trace_context` (W3C `traceparent`).
- `agentflow.wait`: each wait (approval, event, timer) a run stops at.
- `agentflow.decision`: an approval approved or rejected, linked to the run's latest
  execution.

Tracing costs nothing until `instrument()` is called: the executors' one hook
(`executors.progress.tracer`) stays None and the engine's hooks return at once, and
nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from agentflow.executors import progress
from agentflow.store import RunRecord, Store, WaitRecord
from agentflow.tools import ToolContext

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, Tracer, TracerProvider

T = TypeVar("T")
_tracing: _Tracing | None = None


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace this process's runs with `tracer_provider` (default: the global one).
    `ImportError` without the `[otel]` extra."""
    global _tracing
    from opentelemetry import trace

    _tracing = _Tracing(trace.get_tracer("agentflow", tracer_provider=tracer_provider))
    progress.tracer = _tracing


def uninstrument() -> None:
    """Stop tracing (back to no cost at all)."""
    global _tracing
    _tracing = None
    progress.tracer = None


async def traced_execution(store: Store, run: RunRecord, execution: Awaitable[T]) -> T:
    """Await one execution of `run` (an executor's `run()`), in an `agentflow.run` span
    when traced. The outcome's `status` becomes the span's."""
    if _tracing is None:
        return await execution
    return await _tracing.execution(store, run, execution)


def traced_decision(store: Store, decided: WaitRecord) -> None:
    """Record a decision just made on `decided`, when traced."""
    if _tracing is not None:
        _tracing.decision(store, decided)


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def span_context(header: str) -> SpanContext | None:
    """The span context of a W3C traceparent; None for one this module did not write."""
    from opentelemetry.trace import SpanContext, TraceFlags

    parts = header.split("-")
    try:
        version, trace_id, span_id, flags = parts
        context = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                              trace_flags=TraceFlags(int(flags, 16)))
    except ValueError:
        return None
    return context if version == "00" and context.is_valid else None


@dataclass
class _Call:
    """A tool call in its span (`progress.TracedCall`)."""

    ctx: ToolContext
    span: Span

    def succeeded(self, result: Any) -> None:
        size = len(json.dumps(result, separators=(",", ":")))
        self.span.set_attribute("agentflow.result_size", size)


class _Tracing:
    """The spans; the executors reach it through `progress.tracer`."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        # Each execution's run span, for spans begun on threads that do not carry the
        # execution's context (a code plan's thread): they become its children all the same.
        self.running: dict[tuple[str, str], Span] = {}

    async def execution(self, store: Store, run: RunRecord, execution: Awaitable[T]) -> T:
        from opentelemetry.trace import Link, StatusCode

        previous = store.get_trace(run.tenant_id, run.run_id)
        before = span_context(previous) if previous else None
        links = [] if before is None else [Link(before, {"agentflow.link": "previous"})]
        with self.tracer.start_as_current_span(
                "agentflow.run", links=links,
                attributes={**_ids(run.tenant_id, run.run_id),
                            "agentflow.plan_hash": run.plan_hash,
                            "agentflow.resumed": before is not None}) as span:
            store.put_trace(run.tenant_id, run.run_id, traceparent(span.get_span_context()))
            self.running[run.tenant_id, run.run_id] = span
            try:
                outcome = await execution
            finally:
                self.running.pop((run.tenant_id, run.run_id), None)
            status = str(getattr(outcome, "status", ""))
            span.set_attribute("agentflow.status", status)
            if status == "failed":
                span.set_status(StatusCode.ERROR, str(getattr(outcome, "error", "")))
            if status == "waiting":
                for wait in store.list_waits(run.tenant_id, run.run_id, status="pending"):
                    self._wait(wait)
        return outcome

    def _wait(self, wait: WaitRecord) -> None:
        attributes: dict[str, Any] = {**_ids(wait.tenant_id, wait.run_id),
                                      "agentflow.pending_id": wait.wait_id,
                                      "agentflow.wait_kind": wait.kind,
                                      "agentflow.step_id": wait.step_id or ""}
        if wait.expires_at is not None:
            attributes["agentflow.expires_at"] = wait.expires_at
        with self.tracer.start_as_current_span("agentflow.wait", attributes=attributes):
            pass

    def decision(self, store: Store, decided: WaitRecord) -> None:
        from opentelemetry.trace import Link

        latest = store.get_trace(decided.tenant_id, decided.run_id)
        context = span_context(latest) if latest else None
        with self.tracer.start_as_current_span(
                "agentflow.decision",
                links=[] if context is None else [Link(context)],
                attributes={**_ids(decided.tenant_id, decided.run_id),
                            "agentflow.pending_id": decided.wait_id,
                            "agentflow.decision": decided.status,
                            "agentflow.by": str((decided.decision or {}).get("by", ""))}):
            pass

    @contextmanager
    def call(self, ctx: ToolContext, tool: str) -> Iterator[_Call]:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes = {**_ids(ctx.tenant_id, ctx.run_id), "agentflow.step_id": ctx.step_id,
                      "agentflow.call_key": ctx.call_key, "agentflow.attempt": ctx.attempt,
                      "agentflow.idempotency_key": ctx.idempotency_key, "agentflow.tool": tool}
        with self.tracer.start_as_current_span(
                "agentflow.tool", context=self._parent(ctx.tenant_id, ctx.run_id),
                attributes=attributes) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            try:
                yield _Call(replace(ctx, trace_context=carrier), span)
            except Exception as error:
                span.set_attribute("agentflow.error", f"{type(error).__name__}: {error}")
                raise

    def _parent(self, tenant_id: str, run_id: str) -> Context | None:
        """None (the current context) where a span is current, else the run's span."""
        from opentelemetry import trace

        if trace.get_current_span().get_span_context().is_valid:
            return None
        span = self.running.get((tenant_id, run_id))
        return None if span is None else trace.set_span_in_context(span)

    def commit(self, tenant_id: str, run_id: str, kinds: list[str]) -> None:
        counts = {f"agentflow.entries.{kind}": kinds.count(kind) for kind in set(kinds)}
        with self.tracer.start_as_current_span(
                "agentflow.round", context=self._parent(tenant_id, run_id),
                attributes={**_ids(tenant_id, run_id), "agentflow.entries": len(kinds),
                            **counts}):
            pass


def _ids(tenant_id: str, run_id: str) -> dict[str, Any]:
    return {"agentflow.tenant": tenant_id, "agentflow.run_id": run_id}
