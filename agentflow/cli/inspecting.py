"""`agentflow runs`, `show` and `logs`: the commands that read runs back. They register on
the `app` of `commands.py`."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated

import typer

from agentflow.cli import render
from agentflow.cli.commands import JsonOption, RunIdArgument, StoreOption, _engine, app, console

PLAN_SCAN_LIMIT = 10_000
"""Most recent runs `runs --plan NAME` looks through (a plan hash is an index look-up)."""


class RunStatusChoice(StrEnum):
    running = "running"
    waiting = "waiting"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


@app.command()
def runs(
    status: Annotated[RunStatusChoice | None, typer.Option(
        "--status", help="Only runs with this status.")] = None,
    plan: Annotated[str | None, typer.Option(
        "--plan", help="Only runs of this plan: its name or a prefix of its hash.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most runs shown.")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first.

    Example: agentflow runs --status waiting --plan release
    """
    full_hash = plan if plan is not None and re.fullmatch(r"[0-9a-f]{64}", plan) else None
    chosen = None if status is None else status.value
    with _engine(store) as engine:
        if plan is None or full_hash is not None:
            records = engine.list_runs(status=chosen, plan_hash=full_hash, limit=limit)
        else:  # the name runs record, an index look-up; else a prefix of the plan's hash
            records = engine.list_runs(status=chosen, plan_name=plan, limit=limit)
            if not records and re.fullmatch(r"[0-9a-f]{4,63}", plan):
                records = [record for record in engine.list_runs(
                    status=chosen, limit=PLAN_SCAN_LIMIT) if record.plan_hash.startswith(plan)]
        names: dict[str, str] = {}
        for record in records:
            if record.plan_hash not in names:
                names[record.plan_hash] = record.plan_name or str(
                    engine.plan_of(record.run_id).get("name", ""))
    records = records[:limit]
    if as_json:
        typer.echo(json.dumps([render.run_data(record, names[record.plan_hash])
                               for record in records], indent=2, default=str))
    elif records:
        console.print(render.runs_table(records, names))
    else:
        console.print("no runs", style="dim")


@app.command()
def show(run_id: RunIdArgument, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Show a run: its steps (status, attempts, timings, results, errors) and what it waits
    for.

    Example: agentflow show ci-42
    """
    with _engine(store) as engine:
        result = engine.get_run(run_id)
    if as_json:
        typer.echo(json.dumps(render.result_data(result), indent=2, default=str))
    else:
        render.show(console, result)


@app.command()
def logs(run_id: RunIdArgument, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Print a run's journal: every call intent, result, error, wait and decision in order
    (--json: one JSON object per line).

    Example: agentflow logs ci-42 --json | jq .kind
    """
    with _engine(store) as engine:
        entries = engine.journal(run_id)
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(render.journal_data(entry), default=str))
    else:
        console.print(render.journal_table(entries))
        for text in render.journal_tracebacks(entries):
            console.print(text, soft_wrap=True, highlight=False)
