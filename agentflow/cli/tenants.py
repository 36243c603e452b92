"""`agentflow policy show|set` (a tenant's policy), and `agentflow dry-run`, `fork` and
`migrate` (replaying a run's journal under another plan or with edited results). They
register on the same `app` as `commands.py`."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Annotated, cast

import typer

from agentflow.cli import render
from agentflow.cli.commands import (
    JsonOption,
    RunIdArgument,
    RunPlanArgument,
    StoreOption,
    TenantOption,
    ToolsOption,
    _engine,
    _finish,
    _tools,
    app,
    console,
    json_pairs,
)
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.policy import OnLimit, Policy
from agentflow.engine.replay import DryRun

policy_app = typer.Typer(
    help="A tenant's policy (tools, approval gates, limits, budget), kept in the store.\n\n"
         "Example: agentflow policy set --tenant acme --max-steps 500 "
         "--requires-approval deploy",
    no_args_is_help=True)
app.add_typer(policy_app, name="policy")


def _print_policy(policy: Policy, tenant: str, as_json: bool) -> None:
    data = policy.to_json()
    if as_json:
        typer.echo(json.dumps({"tenant": tenant, **data}, indent=2))
        return
    for key, value in data.items():
        shown = "no limit" if value is None else (
            ", ".join(value) if isinstance(value, list) else json.dumps(value)
            if isinstance(value, dict) else str(value))
        console.print(f"{key}: {shown or '-'}", highlight=False)


@policy_app.command("show")
def show_policy(tenant: TenantOption = DEFAULT_TENANT, store: StoreOption = None,
                as_json: JsonOption = False) -> None:
    """Print the tenant's policy (no limits if it never set one).

    Example: agentflow policy show --tenant acme --json
    """
    with _engine(store) as engine:
        policy = engine.tenant(tenant).current_policy()
    _print_policy(policy, tenant, as_json)


@policy_app.command("set")
def set_policy(
    tenant: TenantOption = DEFAULT_TENANT,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="A tool the tenant's plans may call (repeatable; default: all).")]
    = None,
    requires_approval: Annotated[list[str] | None, typer.Option(
        "--requires-approval", help="A tool each call of which waits for an approval "
        "(repeatable).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", min=0, help="Most steps that call tools per run.")] = None,
    max_tool_calls: Annotated[int | None, typer.Option(
        "--max-tool-calls", min=0, help="Most distinct tool calls per run.")] = None,
    max_concurrent_runs: Annotated[int | None, typer.Option(
        "--max-concurrent-runs", min=0, help="Most runs executing at once.")] = None,
    max_llm_tokens: Annotated[int | None, typer.Option(
        "--max-llm-tokens", min=0, help="Model tokens a run may spend.")] = None,
    max_cost_usd: Annotated[float | None, typer.Option(
        "--max-cost-usd", min=0, help="Money a run may spend (ctx.charge).")] = None,
    on_limit: Annotated[str, typer.Option(
        "--on-limit", help="A call past a limit: fail, or wait for an approval.")] = "fail",
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replace the tenant's policy: what is not given has no limit. Prints the new policy.

    Example: agentflow policy set --tenant acme --max-steps 500 --requires-approval deploy
    """
    budget = {key: value for key, value in (("llm_tokens", max_llm_tokens),
                                            ("cost_usd", max_cost_usd)) if value is not None}
    with _engine(store, must_exist=False) as engine:
        policy = engine.tenant(tenant).policy(
            allowed_tools=allow, requires_approval=requires_approval or (),
            max_steps=max_steps, max_tool_calls=max_tool_calls,
            max_concurrent_runs=max_concurrent_runs, budget=budget,
            on_limit=cast(OnLimit, on_limit))  # the policy refuses anything else
    _print_policy(policy, tenant, as_json)


def _print_report(report: DryRun, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({**dataclasses.asdict(report), "matches": report.matches},
                              indent=2))
        return
    verdict = "matches" if report.matches else "does not match"
    console.print(f"plan {report.plan_hash[:12]} {verdict} the journal of run "
                  f"{report.run_id!r}", highlight=False)
    for label, keys in (("replayed", report.replayed), ("would run", report.would_run),
                        ("would wait for", report.waiting),
                        ("never reached", report.unreplayed)):
        console.print(f"  {label}: {', '.join(keys) or '-'}", highlight=False, soft_wrap=True)
    if report.mismatch is not None:
        console.print(f"  first mismatch: {report.mismatch}", style="red", highlight=False)


@app.command("dry-run")
def dry_run(
    plan: RunPlanArgument,
    against: Annotated[str, typer.Option(
        "--against", help="The run whose recorded results the plan is replayed against.",
        show_default=False)],
    tools: ToolsOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replay a changed plan against a run's recorded results without calling any tool:
    which calls it replays, which would run, what it would wait for, and the first recorded
    call it no longer makes the same way (exit 1 when it does not match the journal).

    Example:
    agentflow dry-run plans/release_with_approval.json --against rel-7 --tools agentflow.demo
    """
    with _engine(store) as engine:
        report = engine.tenant(tenant, tools=_tools(tools)).dry_run(str(plan), against=against)
    _print_report(report, as_json)
    if not report.matches:
        raise typer.Exit(1)


@app.command()
def migrate(
    run_id: RunIdArgument,
    to: Annotated[str, typer.Option(
        "--to", help="The version (or a prefix of it) of the run's registered plan.",
        show_default=False)],
    tools: ToolsOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an unfinished run of a registered plan to another version of that plan, only
    when a dry run of that version matches the run's journal (refused otherwise, naming
    the first mismatch; nothing changes).

    Example: agentflow migrate rel-7 --to 3fa2c1 --tools agentflow.demo
    """
    with _engine(store) as engine:
        report = engine.tenant(tenant, tools=_tools(tools)).migrate(run_id, to=to)
    if not as_json:
        console.print(f"run {run_id!r} now runs version {report.plan_hash[:12]}",
                      highlight=False)
    _print_report(report, as_json)


@app.command()
def fork(
    run_id: RunIdArgument,
    at_step: Annotated[str, typer.Option(
        "--at-step", help="The step (a code plan: the call position, such as c3) to execute "
        "again, with what depends on it.", show_default=False)],
    results: Annotated[list[str] | None, typer.Option(
        "--result", help="STEP=JSON: an edited output for a step (a code plan: a call "
        "position). Repeatable.")] = None,
    new_run_id: Annotated[str | None, typer.Option(
        "--run-id", help="The fork's run id (default: RUN-fork-XXXXXXXX).")] = None,
    tools: ToolsOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a new run of a run's plan and inputs that reuses the recorded results of what
    depends neither on --at-step nor on an edited step, takes the edited results, and
    executes the rest here (exit status as for run).

    Example: agentflow fork rel-7 --at-step deploy --result build='{"artifact": "b2"}'
    --tools agentflow.demo
    """
    started = time.monotonic()
    edited = json_pairs(results, "--result")
    with _engine(store) as engine:
        result = engine.tenant(tenant, tools=_tools(tools)).fork(
            run_id, at_step=at_step, results=edited, new_run_id=new_run_id)
    _finish(result, started, as_json, render.ContinueHints(store, tools or []))
