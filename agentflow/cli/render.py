"""How the CLI prints runs, steps, waits and journals: rich tables for people, JSON for
machines. Printing only; every value comes from the engine."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from agentflow.engine import Pending, RunResult
from agentflow.engine.html import call_label, clock, relative
from agentflow.engine.subplans import EVENT_PREFIX
from agentflow.store import JournalEntry, RunRecord

STATUS_STYLES = {
    "completed": "green", "succeeded": "green", "approved": "green",
    "failed": "red", "cancelled": "red", "rejected": "red", "expired": "red",
    "waiting": "yellow", "running": "cyan", "skipped": "dim", "pending": "dim",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def short(value: Any, limit: int = 60) -> str:
    """Compact JSON of `value`, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def seconds(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{end - start:.2f}s"


def result_data(result: RunResult) -> dict[str, Any]:
    """A run result as JSON data (the `--json` output of run, resume and show)."""
    return asdict(result)


WIDE_ENOUGH_FOR_START_TIMES = 120
"""Narrower terminals leave out the steps' start times (`logs` has them): at 80 columns the
other columns took every column, and the results were not shown at all."""


def steps_table(result: RunResult, width: int = WIDE_ENOUGH_FOR_START_TIMES) -> Table:
    """One row per step: what it called (and the code-plan line), status, attempts (calls
    started, all items), foreach items, start (on a terminal `width` wide enough), duration,
    result or error."""
    with_start = width >= WIDE_ENOUGH_FOR_START_TIMES
    table = Table()
    for column in ("step", "call", "status", "attempts", "items",
                   *(["started"] if with_start else []), "took"):
        table.add_column(column, no_wrap=True)
    table.add_column("result / error", overflow="fold", ratio=1)
    for sid, step in result.steps.items():
        shown = step.error if step.error else ("" if step.output is None else short(step.output))
        table.add_row(sid, call_label(step), status_text(step.status), str(step.attempts),
                      "" if step.items is None else str(step.items),
                      *([clock(step.started_at)] if with_start else []),
                      seconds(step.started_at, step.finished_at),
                      Text(shown, style="red" if step.error else ""))
    return table


def tracebacks(result: RunResult) -> list[Text]:
    """The traceback of each failed tool, under the step it failed in."""
    return [Text.assemble((f"traceback of step {sid}", "bold red"),
                          f" ({step.error_type}):\n", (step.traceback.rstrip(), "dim"))
            for sid, step in result.steps.items() if step.traceback]


def pending_text(wait: Pending) -> Text:
    """One thing a run waits for: kind, id, step, tool, prompt or event, arguments, expiry."""
    text = Text.assemble((f"{wait.kind} ", "bold yellow"), (wait.id, "bold"),
                         f" (step {wait.step_id}")
    text.append(f", tool {wait.tool}" if wait.tool else "")
    if wait.kind == "timer":
        text.append(f"): wakes {relative(wait.expires_at)}")
        return text
    text.append(f", expires {relative(wait.expires_at)})" if wait.expires_at else ")")
    text.append(f"\n  {'prompt' if wait.kind == 'approval' else 'event'}: {wait.prompt}")
    if wait.args is not None:
        text.append(f"\n  args: {short(wait.args, 400)}")
    return text


def outputs_table(outputs: Any) -> Table:
    """A run's outputs, one row per key, each value as compact JSON."""
    table = Table("output", "value", box=None, pad_edge=False)
    table.columns[1].overflow = "fold"
    rows = outputs.items() if isinstance(outputs, dict) else [("", outputs)]
    for key, value in rows:
        table.add_row(str(key), _json_line(value))
    return table


def _json_line(value: Any) -> Text:
    return JSONHighlighter()(Text(json.dumps(value, default=str), overflow="fold"))


def run_header(result: RunResult) -> Text:
    text = Text.assemble(("run ", "bold"), (result.run_id, "bold"), "  ",
                         status_text(result.status))
    text.append(f"  plan {result.plan_hash[:12]}  created {relative(result.created_at)}, "
                f"updated {relative(result.updated_at)}")
    return text


def show(console: Console, result: RunResult) -> None:
    """Everything `agentflow show` prints about a run."""
    console.print(run_header(result))
    console.print(steps_table(result, console.width))
    for text in tracebacks(result):
        console.print(text, soft_wrap=True, highlight=False)
    for wait in result.pending:
        console.print(pending_text(wait), soft_wrap=True)
    if result.outputs is not None:
        console.print(outputs_table(result.outputs))
    if result.error is not None:
        console.print(Text.assemble(("error: ", "bold red"), str(result.error)))


def summary(console: Console, result: RunResult, elapsed: float,
            continue_with: ContinueHints) -> None:
    """The end of `run` and `resume`: status, outputs, error, and what to do about waits.
    Commands are never wrapped, so that they can be copied as they are."""
    console.print(Text.assemble(("run ", "bold"), (result.run_id, "bold"), " ",
                                status_text(result.status), f" in {elapsed:.2f}s"))
    if result.outputs is not None:
        console.print(outputs_table(result.outputs))
    if result.error is not None:
        console.print(Text.assemble(("error: ", "bold red"), str(result.error)), soft_wrap=True)
    for wait in result.pending:
        console.print(waiting_hint(result.run_id, wait, continue_with), soft_wrap=True)


class ContinueHints:
    """Builds the exact commands that continue a run, with the store and tools options the
    user gave, so that they can be pasted as they are."""

    def __init__(self, store: str | None, tools: Sequence[str]) -> None:
        self.store = [] if store is None else ["--store", store]
        self.tools = [part for spec in tools for part in ("--tools", spec)]

    def command(self, *words: str, resume: bool = False) -> str:
        """`agentflow WORDS --store ...`, plus `--resume --tools ...` when `resume`."""
        more = ["--resume", *self.tools] if resume else []
        return shlex.join(["agentflow", *words, *self.store, *more])

    def with_tools(self, *words: str) -> str:
        return shlex.join(["agentflow", *words, *self.store, *self.tools])


def waiting_hint(run_id: str, wait: Pending, hints: ContinueHints) -> Text:
    """What the run waits for and the commands that move it on."""
    text = pending_text(wait)
    if wait.kind == "approval":
        text.append("\n  approve: " + hints.command("approve", run_id, wait.id, "--by", "NAME",
                                                    resume=True))
        text.append("\n  reject:  " + hints.command("reject", run_id, wait.id, "--by", "NAME",
                                                    "--reason", "WHY", resume=True))
    elif wait.kind == "event" and (wait.prompt or "").startswith(EVENT_PREFIX):
        child = (wait.prompt or "").removeprefix(EVENT_PREFIX)
        text.append(f"\n  its child run {child} sends it when it ends: "
                    + hints.command("show", child))
    elif wait.kind == "event":
        text.append("\n  send it: " + hints.command("send-event", run_id, wait.prompt or "NAME",
                                                    "--payload", "{}", resume=True))
    else:
        text.append(f"\n  then: {hints.with_tools('worker')}   (or: "
                    f"{hints.with_tools('resume', run_id)})")
    return text


def runs_table(runs: Sequence[RunRecord], plan_names: dict[str, str]) -> Table:
    table = Table()
    for column in ("run", "plan", "status", "created", "updated", "error"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for run in runs:
        error = run.error or {}
        table.add_row(run.run_id, plan_names.get(run.plan_hash, run.plan_hash[:12]),
                      status_text(run.status), relative(run.created_at, now),
                      relative(run.updated_at, now),
                      short(error.get("message", ""), 60) if error else "")
    return table


def run_data(run: RunRecord, plan_name: str | None) -> dict[str, Any]:
    return {"run_id": run.run_id, "plan": plan_name, "plan_hash": run.plan_hash,
            "status": run.status, "created_at": run.created_at, "updated_at": run.updated_at,
            "wake_at": run.wake_at, "error": run.error}


def journal_table(entries: Sequence[JournalEntry]) -> Table:
    """Every journal entry, its data cut to one line (tracebacks: `journal_tracebacks`)."""
    table = Table()
    for column in ("#", "time", "key", "kind", "attempt", "tool"):
        table.add_column(column, no_wrap=True)
    table.add_column("data", overflow="fold", ratio=1)
    for entry in entries:
        data = entry.data
        if isinstance(data, dict) and "traceback" in data:
            data = {key: value for key, value in data.items() if key != "traceback"}
        table.add_row(str(entry.seq), clock(entry.at), entry.key,
                      status_text(entry.kind), str(entry.attempt or ""), entry.tool or "",
                      "" if data is None else short(data, 80))
    return table


def journal_tracebacks(entries: Sequence[JournalEntry]) -> list[Text]:
    """The whole traceback of each error entry that has one, named by its entry number."""
    return [Text.assemble((f"traceback of #{entry.seq} ({entry.key})", "bold red"), ":\n",
                          (entry.data["traceback"].rstrip(), "dim"))
            for entry in entries
            if isinstance(entry.data, dict) and isinstance(entry.data.get("traceback"), str)]


def journal_data(entry: JournalEntry) -> dict[str, Any]:
    """An entry as `logs --json` prints it: its fields, without the store's encoding cache."""
    data = asdict(entry)
    del data["text"]
    return data
