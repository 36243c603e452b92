"""`agentflow plans put|list|show` (a tenant's plan registry) and `agentflow prune`
(retention). They register on the same `app` as `commands.py`."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentflow.cli.commands import (
    CliError,
    JsonOption,
    StoreOption,
    TenantOption,
    ToolsOption,
    _engine,
    _tools,
    app,
    console,
)
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.html import clock
from agentflow.plan.code import CodePlan

plans_app = typer.Typer(
    help="Keep plans by name and version (the version is the plan's content hash).\n\n"
         "Example: agentflow plans put release plans/release_with_approval.json "
         "--tools agentflow.demo",
    no_args_is_help=True)
app.add_typer(plans_app, name="plans")

NameArgument = Annotated[str, typer.Argument(help="Plan name.", show_default=False)]


@plans_app.command("put")
def put(
    name: NameArgument,
    plan: Annotated[Path, typer.Argument(help="Plan file (.json or .py).",
                                         show_default=False)],
    tools: ToolsOption = None,
    store: StoreOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
) -> None:
    """Validate a plan against the tools and make it the current version of NAME; prints
    the version. `agentflow run NAME` then runs it.

    Example: agentflow plans put release plans/release_with_approval.json --tools agentflow.demo
    """
    loaded = _tools(tools)
    with _engine(store, must_exist=False) as engine:
        version = engine.tenant(tenant, tools=loaded).plans.put(name, plan)
    if as_json:
        typer.echo(json.dumps({"name": name, "version": version, "tenant": tenant}))
    else:
        console.print(f"{name}@{version[:12]}", highlight=False)


@plans_app.command("list")
def list_plans(store: StoreOption = None, tenant: TenantOption = DEFAULT_TENANT,
               as_json: JsonOption = False) -> None:
    """List the registered plans with their current versions.

    Example: agentflow plans list --json
    """
    with _engine(store) as engine:
        names = engine.tenant(tenant).plans.list()
    if as_json:
        typer.echo(json.dumps([{"name": p.name, "version": p.version, "versions": p.versions,
                                "created_at": p.created_at} for p in names], indent=2))
        return
    if not names:
        console.print("no plans", style="dim")
        return
    table = Table("name", "version", "versions", "put at")
    for p in names:
        table.add_row(p.name, p.version[:12], str(p.versions), clock(p.created_at))
    console.print(table)


@plans_app.command("show")
def show(
    name: NameArgument,
    version: Annotated[str | None, typer.Option(
        "--version", help="A version (or a prefix of it); default: the current one.")] = None,
    store: StoreOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
) -> None:
    """Print a registered plan (JSON, or a code plan's source) and its versions.

    Example: agentflow plans show release --version 3fa2c1
    """
    with _engine(store) as engine:
        plans = engine.tenant(tenant).plans
        chosen = plans.version(name, version)
        data = plans.get(name, chosen)
        versions = plans.versions(name)
    body = data.source if isinstance(data, CodePlan) else data
    if as_json:
        typer.echo(json.dumps({"name": name, "version": chosen, "plan": body,
                               "versions": [{"version": v, "created_at": at}
                                            for v, at in versions]}, indent=2))
        return
    for v, at in versions:
        mark = "*" if v == chosen else " "
        console.print(f"{mark} {v[:12]}  {clock(at)}", highlight=False)
    typer.echo(body if isinstance(body, str) else json.dumps(body, indent=2))


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """"30d", "12h", "90m", "45s", "2w" as a timedelta."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise CliError(f"--older-than {text!r}: give a number and a unit, such as 30d, "
                       "12h, 90m, 45s or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


@app.command()
def prune(
    older_than: Annotated[str, typer.Option(
        "--older-than", help="Age of the last change: 30d, 12h, 90m, 45s, 2w.")],
    status: Annotated[list[str] | None, typer.Option(
        "--status", help="Only runs with this finished status (completed, failed, "
        "cancelled). Repeatable; default: all three.")] = None,
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="Only this tenant's runs (default: every tenant's).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be deleted; delete nothing.")] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete finished runs with their journal, waits and events (in short batches), and
    the plans nothing refers to any more.

    Example: agentflow prune --older-than 30d --status completed --dry-run
    """
    age = parse_age(older_than)
    with _engine(store) as engine:
        runs = engine.prune(older_than=age, tenant=tenant, dry_run=dry_run,
                            status=status or ("cancelled", "completed", "failed"))
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "runs": [
            {"tenant": t, "run_id": r} for t, r in runs]}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {len(runs)} run{'s' if len(runs) != 1 else ''}", highlight=False)
    if dry_run:
        for t, r in runs:
            console.print(f"  {t}/{r}", highlight=False)
