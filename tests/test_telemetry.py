"""OpenTelemetry spans of a run that retried one step, paused for an approval and was
resumed in another process: the span tree, its attributes, the link from the resumed
execution to the one before it, and the span context a tool receives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.web_server import ROOT, require

require("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from agentflow import Engine, idempotency_key  # noqa: E402
from agentflow.engine.telemetry import instrument, traceparent, uninstrument  # noqa: E402
from agentflow.executors import progress  # noqa: E402
from tests.support.otel_plan import PLAN, TENANT, TOOLS, span_data  # noqa: E402
from tests.support.stores import store_url_for  # noqa: E402


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrument(provider)
    yield memory
    uninstrument()


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"] == name]


def test_span_tree_of_a_retried_paused_and_resumed_run(exporter: InMemorySpanExporter,
                                                       tmp_path: Path) -> None:
    with store_url_for(tmp_path) as store:
        check_span_tree(exporter, store)


def check_span_tree(exporter: InMemorySpanExporter, store: str) -> None:
    engine = Engine(store, tools=TOOLS, max_inline_wait=0.0)
    waiting = engine.tenant(TENANT).execute(PLAN, run_id="traced-1")
    assert waiting.status == "waiting"
    [pending] = waiting.pending
    first = [span_data(span) for span in exporter.get_finished_spans()]

    [run] = named(first, "agentflow.run")
    assert run["parent"] is None and run["links"] == []
    assert run["attributes"] | {"agentflow.plan_hash": None} == {
        "agentflow.tenant": TENANT, "agentflow.run_id": "traced-1",
        "agentflow.plan_hash": None, "agentflow.resumed": False,
        "agentflow.status": "waiting"}
    assert {span["parent"] for span in first if span is not run} == {run["span_id"]}
    assert {span["trace_id"] for span in first} == {run["trace_id"]}

    failed, retried = sorted(named(first, "agentflow.tool"),
                             key=lambda span: span["attributes"]["agentflow.attempt"])
    for span, attempt in ((failed, 1), (retried, 2)):
        assert {key: span["attributes"][key] for key in (
            "agentflow.tenant", "agentflow.run_id", "agentflow.step_id", "agentflow.attempt",
            "agentflow.idempotency_key")} == {
            "agentflow.tenant": TENANT, "agentflow.run_id": "traced-1",
            "agentflow.step_id": "rates", "agentflow.attempt": attempt,
            "agentflow.idempotency_key": idempotency_key(TENANT, "traced-1", "rates",
                                                         {"currency": "EUR"})}
    assert failed["status"] == "ERROR"
    assert failed["attributes"]["agentflow.error"] == (
        "ConnectionError: rates service unreachable")
    assert "agentflow.result_size" not in failed["attributes"]
    assert retried["status"] == "UNSET" and "agentflow.error" not in retried["attributes"]
    assert retried["attributes"]["agentflow.result_size"] == len(
        json.dumps({"currency": "EUR", "rate": 2}, separators=(",", ":")))

    rounds = named(first, "agentflow.round")
    committed = {kind: sum(span["attributes"].get(f"agentflow.entries.{kind}", 0)
                           for span in rounds) for kind in ("intent", "error", "result")}
    assert committed == {"intent": 2, "error": 1, "result": 1}
    # the round that commits an attempt's intent ends before that attempt's call starts
    intents = sorted(span["start"] for span in rounds
                     if span["attributes"].get("agentflow.entries.intent"))
    assert intents[0] < failed["start"] and intents[1] < retried["start"]

    [wait] = named(first, "agentflow.wait")
    assert (wait["attributes"]["agentflow.pending_id"],
            wait["attributes"]["agentflow.wait_kind"]) == (pending.id, "approval")

    exporter.clear()
    engine.tenant(TENANT).approve("traced-1", pending.id, by="alice")
    [decision] = [span_data(span) for span in exporter.get_finished_spans()]
    assert decision["name"] == "agentflow.decision"
    assert decision["links"] == [[run["trace_id"], run["span_id"]]]
    assert (decision["attributes"]["agentflow.decision"],
            decision["attributes"]["agentflow.by"]) == ("approved", "alice")

    resumed = subprocess.run(
        [sys.executable, "-m", "tests.support.otel_plan", store, "traced-1"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert resumed.returncode == 0, resumed.stderr
    *lines, last = resumed.stdout.strip().splitlines()
    outcome = json.loads(last)
    second = [json.loads(line) for line in lines]
    [again] = named(second, "agentflow.run")
    assert again["links"] == [[run["trace_id"], run["span_id"]]]
    assert again["attributes"]["agentflow.resumed"] is True
    assert again["attributes"]["agentflow.status"] == "completed"
    [paid] = named(second, "agentflow.tool")  # the retried step is replayed, not called
    assert (paid["attributes"]["agentflow.step_id"], paid["attributes"]["agentflow.attempt"],
            paid["parent"]) == ("pay", 1, again["span_id"])
    assert outcome["status"] == "completed"
    carried = outcome["outputs"]["paid"]["trace_context"]["traceparent"]
    assert carried.split("-")[:3] == ["00", f"{paid['trace_id']:032x}", f"{paid['span_id']:016x}"]
    engine.close()


def test_untraced_runs_reach_no_tracing_code(tmp_path: Path) -> None:
    assert progress.tracer is None
    engine = Engine(str(tmp_path / "runs.db"), tools=TOOLS, max_inline_wait=0.0)
    waiting = engine.tenant(TENANT).execute(PLAN, run_id="plain-1")
    assert waiting.status == "waiting"
    assert engine.store.get_trace(TENANT, "plain-1") is None
    engine.tenant(TENANT).approve("plain-1", waiting.pending[0].id, by="alice")
    done = engine.tenant(TENANT).resume("plain-1")
    assert done.outputs["paid"]["trace_context"] == {}
    engine.close()


def test_an_untraced_process_never_imports_opentelemetry(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from agentflow import Engine\n"
        "from tests.support.otel_plan import PLAN, TENANT, TOOLS\n"
        f"engine = Engine({str(tmp_path / 'runs.db')!r}, tools=TOOLS, max_inline_wait=0)\n"
        "waiting = engine.tenant(TENANT).execute(PLAN, run_id='r')\n"
        "engine.tenant(TENANT).approve('r', waiting.pending[0].id, by='alice')\n"
        "assert engine.tenant(TENANT).resume('r').status == 'completed'\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_traceparent_round_trips() -> None:
    from agentflow.engine.telemetry import span_context

    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = span_context(header)
    assert context is not None and traceparent(context) == header
    assert span_context("garbage") is None
    assert span_context("00-" + "0" * 32 + "-" + "0" * 16 + "-01") is None  # invalid ids


def test_a_code_plans_calls_are_children_of_its_run_span(exporter: InMemorySpanExporter,
                                                         tmp_path: Path) -> None:
    from agentflow import code_plan

    engine = Engine(str(tmp_path / "runs.db"), tools=TOOLS)
    result = engine.tenant(TENANT).execute(code_plan("return pay(amount=3)"), run_id="code-1")
    assert result.status == "completed", result.error
    spans = [span_data(span) for span in exporter.get_finished_spans()]
    [run] = named(spans, "agentflow.run")
    [call] = named(spans, "agentflow.tool")  # made on the plan's own thread
    assert {span["parent"] for span in spans if span is not run} == {run["span_id"]}
    assert result.outputs["trace_context"]["traceparent"].split("-")[2] == (
        f"{call['span_id']:016x}")
    engine.close()
