"""The `agentflow` command: parses arguments, calls the engine, prints. No logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentflow.engine import Engine, RunResult
from agentflow.engine.loading import load_plan
from agentflow.errors import AgentflowError
from agentflow.plan import compile_plan, plan_schema
from agentflow.tools import Tool, tools_from_module

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Validate and durably execute AI-agent plans.")
console = Console()
errors = Console(stderr=True)

StoreOption = Annotated[str | None, typer.Option(
    "--store", help="Store URL or path (default: $AGENTFLOW_STORE or ./agentflow.db).")]
ToolsOption = Annotated[list[str] | None, typer.Option(
    "--tools", help="Module with tools (its TOOLS list), or module:attribute. Repeatable.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


def _tools(specs: list[str] | None) -> list[Tool]:
    return [found for spec in specs or [] for found in tools_from_module(spec)]


def _parse_inputs(pairs: list[str] | None, inputs_file: Path | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        loaded = json.loads(inputs_file.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise _fail(f"{inputs_file}: inputs must be a JSON object")
        inputs.update(loaded)
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise _fail(f"--input {pair!r}: expected NAME=VALUE")
        try:
            inputs[name] = json.loads(text)
        except json.JSONDecodeError:
            inputs[name] = text
    return inputs


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({
            "run_id": result.run_id, "status": result.status, "outputs": result.outputs,
            "error": None if result.error is None else str(result.error),
            "steps": {sid: {"status": s.status, "attempts": s.attempts, "error": s.error}
                      for sid, s in result.steps.items()}}, default=str))
        return
    table = Table(title=f"run {result.run_id}", title_justify="left")
    for column in ("step", "status", "attempts", "output / error"):
        table.add_column(column)
    colours = {"succeeded": "green", "failed": "red", "skipped": "yellow"}
    for sid, step in result.steps.items():
        shown = step.error if step.error else json.dumps(step.output, default=str)
        colour = colours.get(step.status, "white")
        table.add_row(sid, f"[{colour}]{step.status}[/{colour}]", str(step.attempts),
                      shown if len(shown) < 80 else shown[:77] + "...")
    console.print(table)
    colour = "green" if result.status == "completed" else "red"
    console.print(f"[{colour}]{result.status}[/{colour}]  outputs: "
                  f"{json.dumps(result.outputs, default=str)}", highlight=False)
    if result.error:
        console.print(f"[red]error:[/red] {result.error}", highlight=False)


@app.command()
def run(
    plan: Annotated[Path, typer.Argument(help="Plan file (.json).")],
    input_pairs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="Plan input NAME=VALUE (VALUE parsed as JSON if it can be).")]
    = None,
    inputs_file: Annotated[Path | None, typer.Option("--inputs", help="JSON file of inputs.")]
    = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id (same id resumes).")]
    = None,
    tools: ToolsOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a plan durably. Example: agentflow run plans/ci_pipeline.json --tools agentflow.demo"""
    try:
        result = Engine(store).execute(plan, tools=_tools(tools),
                                       inputs=_parse_inputs(input_pairs, inputs_file),
                                       run_id=run_id)
    except AgentflowError as error:
        raise _fail(str(error)) from None
    _print_result(result, as_json)
    if result.status == "failed":
        raise typer.Exit(1)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    tools: ToolsOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a run with its pinned plan.
    Example: agentflow resume ticket-7 --tools agentflow.demo"""
    try:
        result = Engine(store).resume(run_id, tools=_tools(tools))
    except AgentflowError as error:
        raise _fail(str(error)) from None
    _print_result(result, as_json)
    if result.status == "failed":
        raise typer.Exit(1)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's steps and outputs. Example: agentflow show ticket-7"""
    try:
        result = Engine(store).get_run(run_id)
    except AgentflowError as error:
        raise _fail(str(error)) from None
    _print_result(result, as_json)


@app.command()
def validate(
    plan: Annotated[Path, typer.Argument(help="Plan file (.json).")],
    tools: ToolsOption = None,
) -> None:
    """Validate a plan against the tools and list every issue. Example:
    agentflow validate plans/ci_pipeline.json --tools agentflow.demo"""
    try:
        registry = {found.name: found for found in _tools(tools)}
        compiled = compile_plan(load_plan(plan), registry)
    except AgentflowError as error:
        raise _fail(str(error)) from None
    console.print(f"[green]valid[/green]: {len(compiled.steps)} steps, plan hash "
                  f"{compiled.plan_hash[:12]}", highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the plan format. Example: agentflow schema > plan.schema.json"""
    sys.stdout.write(json.dumps(plan_schema(), indent=2) + "\n")


if __name__ == "__main__":
    app()
