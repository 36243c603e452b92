"""`agentflow worker`, `submit` and `wait`: a fleet of workers around one store.

Kept apart from `commands.py`; they register on the same `app` and only parse and print
(the work is `agentflow.worker.Worker` and `Engine.submit`/`Engine.wait`)."""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from agentflow.cli import render
from agentflow.cli.commands import (
    InputPairsOption,
    InputsFileOption,
    JsonOption,
    PlanArgument,
    RunIdArgument,
    StoreOption,
    TenantOption,
    ToolsOption,
    _engine,
    _exit_for,
    _inputs,
    _tools,
    app,
    console,
)
from agentflow.engine import RunResult
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.loading import load_plan
from agentflow.plan import CompiledPlan
from agentflow.worker import Worker


@app.command()
def worker(
    tools: ToolsOption = None,
    store: StoreOption = None,
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="Run only this tenant's runs (default: every tenant, in turn).")]
    = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, help="Runs executed at once by this worker.")] = 4,
    tenant_cap: Annotated[int | None, typer.Option(
        "--tenant-cap", min=1, help="Most runs of one tenant executing at once, across all "
        "workers (give every worker the same value); a tenant whose policy sets a lower "
        "max_concurrent_runs keeps its own.")] = None,
    lease: Annotated[float, typer.Option(
        "--lease", min=0.5, help="Lease seconds: how long a dead worker's runs wait before "
        "another worker takes them over (renewed every third of it while alive).")] = 30.0,
    poll: Annotated[float, typer.Option(
        "--poll", min=0.01, help="Seconds between looks when no notification comes "
        "(PostgreSQL notifies; SQLite only polls).")] = 1.0,
    drain: Annotated[float, typer.Option(
        "--drain", min=0.0, help="At SIGTERM, seconds runs in progress get to finish "
        "before their leases are released.")] = 30.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Run what is runnable now, then exit (for cron).")] = False,
    max_runs: Annotated[int | None, typer.Option(
        "--max-runs", min=1, help="Exit after running this many runs.")] = None,
) -> None:
    """Claim and run submitted runs, due timers, decided approvals, arrived events and
    runs whose worker died, until stopped. Start as many as you like, on any machines
    that reach the store.

    Ctrl-C or SIGTERM stops claiming, lets runs in progress finish (up to --drain
    seconds), releases the rest to other workers, then exits.

    Example: agentflow worker --tools agentflow.demo --concurrency 32 --store postgresql://postgres@127.0.0.1:5432/test
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    registry = _tools(tools)
    if not registry:
        Console(stderr=True).print(
            "warning: no --tools given: this worker runs only plans that call no tool; a run "
            "that calls one is left, once its lease expires, to a worker with its tools "
            "(agentflow worker --tools MODULE)", highlight=False, soft_wrap=True)
    printing = threading.Lock()

    def report(result: RunResult) -> None:
        error = f"  {result.error}" if result.error else ""
        with printing:
            if console.is_terminal:
                console.print(Text.assemble(f"run {result.run_id} ",
                                            render.status_text(result.status), error))
            else:  # a log: plain lines (rich renders one in ~150 us, a no-op run's steps)
                print(f"run {result.run_id} {result.status}{error}", flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _engine(store, must_exist=False) as engine:
            engine.lease_seconds = lease
            Worker(engine, tools=registry, tenant=tenant, concurrency=concurrency,
                   tenant_cap=tenant_cap, poll=poll, drain=drain,
                   on_result=report).run(stop, max_runs=max_runs, once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def submit(
    plan: PlanArgument,
    input_pairs: InputPairsOption = None,
    inputs_file: InputsFileOption = None,
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="Run id (default: new). Submitting an existing id changes nothing.")]
    = None,
    tools: ToolsOption = None,
    store: StoreOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Validate a plan and queue a run of it for a worker; prints the run id at once.

    Example: agentflow submit plans/ci_pipeline.json --tools agentflow.demo --run-id ci-1
    """
    registry = _tools(tools)
    data = load_plan(plan)
    with _engine(store, must_exist=False) as engine:
        compiled = engine.tenant(tenant, tools=registry).compile(data)  # sub-plans included
        typer.echo(engine.submit(compiled.plan if isinstance(compiled, CompiledPlan) else data,
                                 tools=registry, inputs=_inputs(input_pairs, inputs_file),
                                 run_id=run_id, tenant=tenant))


@app.command()
def wait(
    run_id: RunIdArgument,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.0, help="Seconds to wait before giving up (exit status 1).")]
    = 60.0,
    store: StoreOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
    as_json: JsonOption = False,
) -> None:
    """Block until a run is completed, failed, cancelled or waiting, then print it; exit
    status as for `run` (0 completed, 1 failed or cancelled, 3 waiting).

    Example: agentflow wait ci-1 --timeout 60
    """
    with _engine(store) as engine:
        result = engine.wait(run_id, timeout=timeout, tenant=tenant)
    if as_json:
        typer.echo(json.dumps(render.result_data(result), indent=2, default=str))
    else:
        console.print(Text.assemble(f"run {result.run_id} ", render.status_text(result.status)))
    _exit_for(result)
