"""The `agentflow` commands: parse the arguments, call the engine, print. No logic of its own.

Exit status: 0 done (a run completed), 1 a run failed or was cancelled, or a user error (one
line `error: ...` on stderr, never a traceback), 2 a usage error, 3 a run is waiting (for
an approval, an event or a timer).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from agentflow import __version__
from agentflow.cli import render
from agentflow.cli.decide import decide
from agentflow.cli.live import live_board
from agentflow.engine import Engine, RunResult, StepResult, subplans
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.loading import load_plan
from agentflow.engine.registry import parse_reference
from agentflow.engine.tenant import Tenant
from agentflow.errors import AgentflowError, PlanValidationError, RunNotFound, ValidationIssue
from agentflow.executors.progress import Observer
from agentflow.plan import CompiledPlan, compile_plan, parse_plan, plan_schema
from agentflow.plan.code import CodePlan
from agentflow.plan.diagram import to_dot, to_mermaid
from agentflow.sandbox import CompiledCodePlan, compile_code_plan
from agentflow.sandbox.outline import code_plan_graph
from agentflow.store import local_store_path
from agentflow.tools import Tool, tool_registry, tools_from_module

EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 1, "waiting": 3, "running": 3}
"""The exit status of a command that ran a run, by the run's status."""
PLAN_SCAN_LIMIT = 10_000
"""Most recent runs `runs --plan NAME` looks through (a plan hash is an index look-up)."""


class CliError(Exception):
    """A mistake in what the user typed that only the CLI can see (a bad --input, ...)."""


class _Commands(TyperGroup):
    """Turns user errors into one `error: ...` line and exit status 1: the CLI's only
    error handling."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(0) from None
        except (AgentflowError, CliError, ValueError, OSError) as error:
            Console(stderr=True).print(Text.assemble(("error: ", "bold red"), _message(error)),
                                       soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (`agentflow logs RUN | head`): stop without a message,
    and point stdout at /dev/null so that the interpreter's final flush cannot complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _message(error: Exception) -> str:
    if isinstance(error, PlanValidationError):
        if len(error.issues) == 1 and error.issues[0].code in ("file", "json"):
            return error.issues[0].message
        hint = (" (name the tools' module with --tools MODULE)"
                if any(issue.code == "unknown_tool" for issue in error.issues) else "")
        return "plan is invalid: " + "; ".join(str(issue) for issue in error.issues) + hint
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).splitlines())


app = typer.Typer(
    cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    help="Validate AI-agent plans and execute them durably.\n\n"
         "Exit status: 0 done, 1 run failed or cancelled (or a user error), 2 usage error, "
         "3 run waiting.\n\n"
         "Example: agentflow run plans/ci_pipeline.json --tools agentflow.demo")
console = Console()

StoreOption = Annotated[str | None, typer.Option(
    "--store", help="Store URL or path (default: $AGENTFLOW_STORE or ./agentflow.db).")]
ToolsOption = Annotated[list[str] | None, typer.Option(
    "--tools", help="Module with tools (its TOOLS list), or module:attribute. Repeatable.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
TenantOption = Annotated[str, typer.Option(
    "--tenant", help="The tenant whose runs, plans or policy these are.")]
InputPairsOption = Annotated[list[str] | None, typer.Option(
    "--input", "-i", help="Plan input NAME=VALUE (VALUE read as JSON when it is JSON). "
    "Repeatable.")]
InputsFileOption = Annotated[Path | None, typer.Option(
    "--inputs", help="JSON file with the plan's inputs.")]
RunIdArgument = Annotated[str, typer.Argument(help="Run id.", show_default=False)]
PlanArgument = Annotated[Path, typer.Argument(
    help="Plan file: a JSON step graph (.json) or a code plan (.py).", show_default=False)]
RunPlanArgument = Annotated[Path, typer.Argument(
    help="Plan file (.json or .py), or the NAME (or NAME@VERSION) of a plan registered "
    "with `agentflow plans put`.", show_default=False)]
ResumeOption = Annotated[bool, typer.Option(
    "--resume", help="Continue the run here and now (give --tools) instead of leaving it to "
    "a worker.")]


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"agentflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
         = False) -> None:
    """Validate AI-agent plans and execute them durably."""


@contextmanager
def _engine(store: str | None, *, must_exist: bool = True) -> Iterator[Engine]:
    """The engine on `store`. Commands that read or decide runs (`must_exist`) refuse a
    store that does not exist rather than create an empty one; every command refuses a
    store whose directory does not exist, saying to create it."""
    _check_store(store, must_exist)
    engine = Engine(store)
    try:
        yield engine
    finally:
        engine.close()


def _check_store(store: str | None, must_exist: bool) -> None:
    path = local_store_path(store)
    if path is None or path.exists():
        return
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"store directory {str(folder)!r} does not exist (store {str(path)!r});"
                       f" create it first: mkdir -p {shlex.quote(str(folder))}")
    if must_exist:
        raise CliError(f"no store at {str(path)!r}: nothing has run with it yet (check "
                       "--store or $AGENTFLOW_STORE; `agentflow run` creates a store)")


def _tools(specs: list[str] | None) -> list[Tool]:
    """The tools of each `--tools` spec. Modules are looked for in the current directory
    first, as `python -m` does, so a `mytools.py` beside the plan is found."""
    if specs and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return [found for spec in specs or [] for found in tools_from_module(spec)]


Compiled = CompiledPlan | CompiledCodePlan


def _compile(data: Any, registry: dict[str, Tool]) -> Compiled:
    """A JSON plan or a code plan, validated against `registry`."""
    if isinstance(data, CodePlan):
        return compile_code_plan(data, registry)
    return compile_plan(data, registry)


def _structure_issues(data: Any, known: dict[str, Tool]
                      ) -> tuple[str, list[ValidationIssue], list[str]]:
    """Validation without tools (but the `known` ones: a store's sub-plans): (plan name,
    the issues that do not depend on which tools exist, the names taken for tools)."""
    try:
        compiled = _compile(data, known)
    except PlanValidationError as error:
        issues = error.issues
    else:
        return _plan_name(compiled), [], []
    if isinstance(data, CodePlan):
        unknown = [issue for issue in issues if issue.code == "unknown_name"
                   and issue.message.startswith("unknown tool or function ")]
        names = [issue.message.split("'")[1] for issue in unknown]
        return data.name, [issue for issue in issues if issue not in unknown], names
    kept = [issue for issue in issues if issue.code != "unknown_tool"]
    if kept:
        return "", kept, []
    parsed = parse_plan(data)
    return parsed.name, [], [step.tool for step in parsed.steps if step.tool]


def _plan_name(compiled: Compiled) -> str:
    return compiled.plan.name if isinstance(compiled, CompiledPlan) else compiled.name


def _step_count(compiled: Compiled) -> str:
    if isinstance(compiled, CompiledPlan):
        return f"{len(compiled.steps)} steps"
    return "code plan"


def _json_value(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{option}: not valid JSON ({error.msg} at column {error.colno}): "
                       f"{text[:80]!r}") from None


def _inputs(pairs: list[str] | None, inputs_file: Path | None) -> dict[str, Any] | None:
    """The run's inputs, or None when none were given (so a re-run need not repeat them)."""
    if inputs_file is None and not pairs:
        return None
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        loaded = _json_value(inputs_file.read_text(encoding="utf-8"), f"--inputs {inputs_file}")
        if not isinstance(loaded, dict):
            raise CliError(f"--inputs {inputs_file}: inputs must be a JSON object")
        inputs.update(loaded)
    inputs.update(json_pairs(pairs, "--input"))
    return inputs


def json_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """NAME=VALUE pairs of a repeatable option, each VALUE read as JSON when it is JSON."""
    found: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise CliError(f"{option} {pair!r}: expected NAME=VALUE")
        try:
            found[name] = json.loads(text)
        except json.JSONDecodeError:
            found[name] = text
    return found


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _exit_for(result: RunResult) -> None:
    code = EXIT_CODES.get(result.status, 1)
    if code:
        raise typer.Exit(code)


def _progress(steps: Iterable[StepResult], quiet: bool,
              call: Callable[[Observer | None], RunResult]) -> RunResult:
    """Run `call` with a live step table (none when `quiet`)."""
    if quiet:
        return call(None)
    with live_board(console, steps) as observer:
        return call(observer)


def _finish(result: RunResult, started: float, as_json: bool,
            hints: render.ContinueHints) -> None:
    """Print a run's outcome (summary or JSON) and exit with its status code."""
    if as_json:
        typer.echo(json.dumps(render.result_data(result), indent=2, default=str))
    else:
        render.summary(console, result, time.monotonic() - started, hints)
    _exit_for(result)


def _resume(engine: Engine, run_id: str, tools: list[str] | None, store: str | None,
            as_json: bool) -> None:
    started = time.monotonic()
    registry = _tools(tools)
    result = _progress(engine.get_run(run_id).steps.values(), as_json,
                       lambda observer: engine.resume(run_id, tools=registry,
                                                      observer=observer))
    _finish(result, started, as_json, render.ContinueHints(store, tools or []))


# -- plans ------------------------------------------------------------------------------


@app.command()
def validate(plan: PlanArgument, tools: ToolsOption = None, store: StoreOption = None,
             tenant: TenantOption = DEFAULT_TENANT, as_json: JsonOption = False) -> None:
    """Validate a plan (.json or .py) against the tools and list every issue (exit 1 when
    invalid). Without --tools, only the structure is checked, and the output says so.
    With a store (--store, or an existing default one), a sub-plan is checked against the
    tenant's registered plans, and the plan against the tenant's policy.

    Example: agentflow validate plans/release_with_subplan.json --tools agentflow.demo
    """
    data = load_plan(plan)
    registry = tool_registry(_tools(tools))
    with _tenant_if_stored(store, tenant, registry) as found:
        if not tools:
            known = {} if found is None else subplans.plan_tools(found.engine, found.id, data)
            _validate_structure(plan, data, known, as_json)
            return
        try:
            compiled = _compile(data, registry) if found is None else found.validate(data)
        except PlanValidationError as error:
            _print_issues(plan, error.issues, as_json)
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"valid": True, "name": _plan_name(compiled),
                               "plan_hash": compiled.plan_hash, "tools_checked": True,
                               "steps": list(compiled.steps)
                               if isinstance(compiled, CompiledPlan) else None}, indent=2))
    else:
        console.print(Text.assemble(("valid", "bold green"), f": {_plan_name(compiled)}, "
                                    f"{_step_count(compiled)}, plan hash "
                                    f"{compiled.plan_hash[:12]}"))


@contextmanager
def _tenant_if_stored(store: str | None, tenant: str,
                      registry: dict[str, Tool]) -> Iterator[Tenant | None]:
    """The tenant on `store` when that store exists (validation creates none), else None."""
    path = local_store_path(store)
    if path is not None and not path.exists():
        if store is not None:
            _check_store(store, must_exist=True)
        yield None
        return
    with _engine(store) as engine:
        yield engine.tenant(tenant, tools=list(registry.values()))


def _validate_structure(plan: Path, data: Any, known: dict[str, Tool], as_json: bool) -> None:
    name, issues, assumed = _structure_issues(data, known)
    if issues:
        _print_issues(plan, issues, as_json)
        raise typer.Exit(1)
    tools = sorted(set(assumed))
    if as_json:
        typer.echo(json.dumps({"valid": True, "name": name, "tools_checked": False,
                               "tools": tools}, indent=2))
        return
    console.print(Text.assemble(
        ("structure valid", "bold green"), f": {name}; tools were not checked (give --tools "
        f"MODULE to check {', '.join(tools) or 'them'})"), soft_wrap=True, highlight=False)


def _print_issues(plan: Path, issues: list[ValidationIssue], as_json: bool) -> None:
        if as_json:
            typer.echo(json.dumps({"valid": False, "issues": [
                {"path": i.path, "step": i.step_id, "message": i.message, "code": i.code}
                for i in issues]}, indent=2))
        else:
            table = Table("path", "step", "message")
            for issue in issues:
                table.add_row(issue.path, issue.step_id or "", issue.message)
            console.print(f"{plan}: {len(issues)} issue(s)", soft_wrap=True,
                          highlight=False)
            console.print(table)


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    png = "png"


@app.command()
def graph(
    plan: PlanArgument,
    output_format: Annotated[GraphFormat, typer.Option(
        "--format", "-f", help="mermaid or dot text; svg or png through Graphviz's dot.")]
    = GraphFormat.mermaid,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.")] = None,
    tools: Annotated[list[str] | None, typer.Option(
        "--tools", help="Also validate the plan against these tools (optional).")] = None,
) -> None:
    """Draw a plan's steps and dependencies: Mermaid text by default. A code plan (.py) is
    drawn as the tool and built-in calls it makes, in source order, with their lines.

    Example: agentflow graph plans/ci_pipeline.json --format svg --output ci.svg
    """
    data = load_plan(plan)
    registry = tool_registry(_tools(tools)) if tools else None
    if isinstance(data, CodePlan):
        source: Any = code_plan_graph(data, registry)
    else:
        source = compile_plan(data, registry) if registry is not None else data
    if output_format is GraphFormat.mermaid:
        drawn: bytes = to_mermaid(source).encode()
    else:
        drawn = to_dot(source).encode()
        if output_format is not GraphFormat.dot:
            drawn = _graphviz(drawn, output_format.value)
    if output is None:
        typer.get_binary_stream("stdout").write(drawn)
    else:
        output.write_bytes(drawn)


def _graphviz(dot_text: bytes, output_format: str) -> bytes:
    """Render DOT text with the Graphviz `dot` program."""
    program = shutil.which("dot")
    if program is None:
        raise CliError(f"--format {output_format} needs Graphviz's `dot` program: install "
                       "graphviz (apt install graphviz, brew install graphviz), or use "
                       "--format mermaid or --format dot")
    done = subprocess.run([program, f"-T{output_format}"], input=dot_text,
                          capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise CliError(f"dot -T{output_format} failed: {detail[0] if detail else done.returncode}")
    return done.stdout


@app.command()
def schema() -> None:
    """Print the JSON Schema of the plan format.

    Example: agentflow schema > plan.schema.json
    """
    typer.echo(json.dumps(plan_schema(), indent=2))


# -- running ----------------------------------------------------------------------------


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
    with _engine(store, must_exist=reference is not None) as engine:
        tenant = engine.tenant(DEFAULT_TENANT, tools=registry)
        if reference is not None:  # a plan registered with `agentflow plans put`
            data = tenant.plans.get(*reference)
        compiled = tenant.compile(data)  # its sub-plans are the tenant's registered plans
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
    """Approve a pending approval, optionally with edited arguments.

    Example:
    agentflow approve rel-7 deploy@approval:3fa2c1ab --by alice --resume --tools agentflow.demo
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
    """Reject a pending approval.

    Example: agentflow reject rel-7 deploy@approval:3fa2c1ab --by bob --reason 'freeze week'
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


# -- reading ----------------------------------------------------------------------------


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

