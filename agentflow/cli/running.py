"""`agentflow run`, `resume`, `approve`, `reject`, `send-event` and `cancel`: the commands
that start, continue and decide runs. They register on the `app` of `commands.py`."""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from agentflow.cli import render
from agentflow.cli.commands import (
    CliError,
    Compiled,
    InputPairsOption,
    InputsFileOption,
    JsonOption,
    ResumeOption,
    RunIdArgument,
    RunPlanArgument,
    StoreOption,
    ToolsOption,
    _engine,
    _finish,
    _inputs,
    _json_value,
    _progress,
    _resume,
    _tools,
    _whoami,
    app,
    check_input_names,
    console,
)
from agentflow.cli.decide import decide
from agentflow.engine import Engine, StepResult
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.loading import load_plan
from agentflow.engine.registry import parse_reference
from agentflow.errors import PlanNotFound, RunNotFound
from agentflow.plan import CompiledPlan
from agentflow.store import local_store_path


@app.command()
def run(
    plan: RunPlanArgument,
    input_pairs: InputPairsOption = None,
    inputs_file: InputsFileOption = None,
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="Run id (default: new). The id of an existing run continues it.")]
    = None,
    tools: ToolsOption = None,
    store: StoreOption = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", help="Ask approve / reject / edit at each approval, then go on.")]
    = False,
    by: Annotated[str | None, typer.Option(
        "--by", help="Approver name for --interactive (default: your login name).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a plan durably with a live step table, then print a summary.

    Exit status: 0 completed, 1 failed or cancelled, 3 waiting (the summary prints the
    commands that continue the run).

    Example: agentflow run plans/release_with_approval.json --tools agentflow.demo --interactive
    """
    if interactive and as_json:
        raise CliError("--interactive cannot be combined with --json")
    started = time.monotonic()
    registry = _tools(tools)
    reference = None if plan.exists() else parse_reference(str(plan))
    data = None if reference is not None else load_plan(plan)
    inputs = _inputs(input_pairs, inputs_file)
    hints = render.ContinueHints(store, tools or [])
    if reference is not None:
        _check_registered_store(plan, store)
    with _engine(store, must_exist=reference is not None) as engine:
        tenant = engine.tenant(DEFAULT_TENANT, tools=registry)
        if reference is not None:  # a plan registered with `agentflow plans put`
            try:
                data = tenant.plans.get(*reference)
            except PlanNotFound as error:
                raise CliError(f"no plan file at {str(plan)!r}, and {error}") from None
        compiled = tenant.compile(data)  # its sub-plans are the tenant's registered plans
        if isinstance(compiled, CompiledPlan):
            check_input_names(compiled.plan.inputs, inputs, repr(str(plan)))
        target = str(plan) if reference is not None else (
            compiled.plan if isinstance(compiled, CompiledPlan) else data)
        result = _progress(
            _known_steps(engine, run_id, compiled), as_json,
            lambda observer: tenant.execute(target, inputs=inputs, run_id=run_id,
                                            observer=observer))
        key = result.run_id
        while interactive and result.status == "waiting":
            approvals = [wait for wait in result.pending if wait.kind == "approval"]
            if not approvals:
                break
            try:
                for pending in approvals:
                    answer = decide(console, engine, key, pending, by or _whoami())
                    console.print(Text(f"{pending.id}: {answer}", style="bold"))
            except EOFError:
                console.print("\nno answer: the run stays waiting")
                break
            result = _progress(result.steps.values(), False,
                               lambda observer: engine.resume(key, tools=registry,
                                                              observer=observer))
        _finish(result, started, as_json, hints)


def _check_registered_store(plan: Path, store: str | None) -> None:
    """`run NAME` where neither a file NAME nor a store holding registered plans exists:
    say both, not only that the store is missing."""
    path = local_store_path(store)
    if path is not None and not path.exists():
        raise CliError(f"no plan file at {str(plan)!r}, and no store at {str(path)!r} "
                       "for a plan registered under that name (`agentflow plans put`)")


def _known_steps(engine: Engine, run_id: str | None, compiled: Compiled) -> list[StepResult]:
    """The steps as the live table starts them: an existing run's as recorded (finished
    ones are shown replayed), a new graph run's as pending, a new code run's none yet."""
    if run_id is not None:
        with suppress(RunNotFound):
            return list(engine.get_run(run_id).steps.values())
    if isinstance(compiled, CompiledPlan):
        return [StepResult(sid, "pending") for sid in compiled.steps]
    return []


@app.command()
def resume(run_id: RunIdArgument, tools: ToolsOption = None, store: StoreOption = None,
           as_json: JsonOption = False) -> None:
    """Continue a run with the plan it was started with (exit status as for run).

    Example: agentflow resume ci-42 --tools agentflow.demo
    """
    with _engine(store) as engine:
        _resume(engine, run_id, tools, store, as_json)


@app.command()
def approve(
    run_id: RunIdArgument,
    pending_id: Annotated[str, typer.Argument(help="Pending approval id (see `show RUN`).",
                                              show_default=False)],
    by: Annotated[str, typer.Option("--by", help="Who approves.", show_default=False)],
    comment: Annotated[str | None, typer.Option("--comment", help="A note.")] = None,
    args: Annotated[str | None, typer.Option(
        "--args", help="Edited tool arguments as a JSON object (checked against the tool's "
        "schema).")] = None,
    resume_now: ResumeOption = False,
    tools: ToolsOption = None,
    store: StoreOption = None,
) -> None:
    """Approve a pending approval, optionally with edited arguments. PENDING_ID is the
    whole id that `run` and `show RUN` print (deploy@approval: and 64 hex digits).

    Example: agentflow approve rel-7 PENDING_ID --by alice --resume --tools agentflow.demo
    """
    edited = None if args is None else _json_value(args, "--args")
    with _engine(store) as engine:
        decided = engine.approve(run_id, pending_id, by=by, comment=comment, args=edited)
        console.print(f"approved {decided.id} (step {decided.step_id}) of run {run_id}",
                      highlight=False, soft_wrap=True)
        _after_decision(engine, run_id, resume_now, tools, store)


@app.command()
def reject(
    run_id: RunIdArgument,
    pending_id: Annotated[str, typer.Argument(help="Pending approval id (see `show RUN`).",
                                              show_default=False)],
    by: Annotated[str, typer.Option("--by", help="Who rejects.", show_default=False)],
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why (later steps can read it).")] = None,
    resume_now: ResumeOption = False,
    tools: ToolsOption = None,
    store: StoreOption = None,
) -> None:
    """Reject a pending approval. PENDING_ID is the whole id that `run` and `show RUN`
    print (deploy@approval: and 64 hex digits).

    Example: agentflow reject rel-7 PENDING_ID --by bob --reason 'freeze week'
    """
    with _engine(store) as engine:
        decided = engine.reject(run_id, pending_id, by=by, reason=reason)
        console.print(f"rejected {decided.id} (step {decided.step_id}) of run {run_id}",
                      highlight=False, soft_wrap=True)
        _after_decision(engine, run_id, resume_now, tools, store)


@app.command("send-event")
def send_event(
    run_id: RunIdArgument,
    name: Annotated[str, typer.Argument(help="Event name.", show_default=False)],
    payload: Annotated[str | None, typer.Option(
        "--payload", help="Event payload as JSON (default: null).")] = None,
    resume_now: ResumeOption = False,
    tools: ToolsOption = None,
    store: StoreOption = None,
) -> None:
    """Send an event to a run; it is kept until a wait_for_event step takes it.

    Example: agentflow send-event order-9 payment.received --payload '{"amount": 12}'
    """
    data = None if payload is None else _json_value(payload, "--payload")
    with _engine(store) as engine:
        seq = engine.send_event(run_id, name, data)
        console.print(f"sent event {name!r} (#{seq}) to run {run_id}", highlight=False)
        _after_decision(engine, run_id, resume_now, tools, store)


def _after_decision(engine: Engine, run_id: str, resume_now: bool, tools: list[str] | None,
                    store: str | None) -> None:
    if resume_now:
        _resume(engine, run_id, tools, store, False)
        return
    hints = render.ContinueHints(store, tools or ["MODULE"])
    console.print(f"continue it with: {hints.with_tools('resume', run_id)}  (or a worker: "
                  f"{hints.with_tools('worker')})", highlight=False, soft_wrap=True)


@app.command()
def cancel(
    run_id: RunIdArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept as the run's error).")]
    = "cancelled",
    store: StoreOption = None,
) -> None:
    """Stop a run for good (a worker executing it stops at its next step).

    Example: agentflow cancel ci-42 --reason 'superseded by ci-43'
    """
    with _engine(store) as engine:
        result = engine.cancel(run_id, reason=reason)
        console.print(Text.assemble(f"run {run_id} ", render.status_text(result.status)))
