"""A traced run for the OpenTelemetry test: a step that fails once and is retried, then a
payment behind an approval. `python -m tests.support.otel_plan STORE RUN_ID` resumes the run
in a process of its own, traced into memory, and prints the spans it made as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any

from agentflow import Engine, ToolContext, tool

TENANT = "acme"


@tool
def fetch_rates(currency: str, ctx: ToolContext) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ConnectionError("rates service unreachable")
    return {"currency": currency, "rate": 2}


@tool
def pay(amount: int, ctx: ToolContext) -> dict[str, Any]:
    """Returns the trace context it was given, so the test can compare it with its span."""
    return {"paid": amount, "trace_context": dict(ctx.trace_context)}


TOOLS = [fetch_rates, pay]
PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "traced_payment",
    "steps": [
        {"id": "rates", "tool": "fetch_rates", "args": {"currency": "EUR"},
         "retry": {"max_attempts": 2, "initial_delay": 0.01}},
        {"id": "pay", "tool": "pay", "args": {"amount": "${steps.rates.output.rate}"},
         "approval": {"prompt": "Pay?"}},
    ],
    "outputs": {"paid": "${steps.pay.output}"},
}


def span_data(span: Any) -> dict[str, Any]:
    """What the test reads of a finished SDK span."""
    context = span.get_span_context()
    return {
        "name": span.name, "trace_id": context.trace_id, "span_id": context.span_id,
        "parent": span.parent.span_id if span.parent else None,
        "links": [[link.context.trace_id, link.context.span_id] for link in span.links],
        "attributes": dict(span.attributes or {}), "status": span.status.status_code.name,
        "start": span.start_time,
    }


def main(store: str, run_id: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agentflow.engine.telemetry import instrument

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(provider)
    result = Engine(store, tools=TOOLS).tenant(TENANT).resume(run_id)
    for span in exporter.get_finished_spans():
        print(json.dumps(span_data(span)))
    print(json.dumps({"status": result.status, "outputs": result.outputs}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
