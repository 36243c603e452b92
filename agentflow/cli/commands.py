"""The `agentflow` app and what its commands share: the options, the engine and store they
open, the plan and inputs they read, and how a run's result becomes the exit status. No logic
of its own. The commands register on `app` from `plan_files`, `running` and `inspecting`
(and `fleet`, `plans`, `web`); `agentflow.cli` imports them all.

Exit status: 0 done (a run completed), 1 a run failed or was cancelled, or a user error (one
line `error: ...` on stderr, never a traceback), 2 a usage error, 3 a run is waiting (for
an approval, an event or a timer).
"""

from __future__ import annotations

import difflib
import getpass
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from agentflow import __version__
from agentflow.cli import render
from agentflow.cli.live import live_board
from agentflow.engine import Engine, RunResult, StepResult
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.errors import AgentflowError, PlanValidationError, ValidationIssue
from agentflow.executors.progress import Observer
from agentflow.plan import CompiledPlan, compile_plan, parse_plan
from agentflow.plan.code import CodePlan
from agentflow.sandbox import CompiledCodePlan, compile_code_plan
from agentflow.store import local_store_path
from agentflow.tools import Tool, tools_from_module

EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 1, "waiting": 3, "running": 3}
"""The exit status of a command that ran a run, by the run's status."""


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
                if any(issue.code == "unknown_tool" for issue in error.issues) else
                " (give them with --input NAME=VALUE or --inputs FILE)"
                if any(issue.code == "missing_input" for issue in error.issues) else "")
        what = "the inputs are" if error.what == "inputs" else "plan is"
        return f"{what} invalid: " + "; ".join(str(issue) for issue in error.issues) + hint
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


def check_input_names(schema: dict[str, Any], inputs: dict[str, Any] | None,
                      plan: str) -> None:
    """An input the plan's schema does not declare (and does not allow with
    `additionalProperties`) would be ignored, and the run go on with the default: refuse it
    as the typo it almost always is."""
    declared = schema.get("properties")
    if not inputs or not isinstance(declared, dict) or "additionalProperties" in schema:
        return
    for name in inputs:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CliError(f"input {name!r}: plan {plan} has no such input; {hint}its inputs: "
                           f"{', '.join(declared) or 'none'}")


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
                       lambda observer: engine.tenant(DEFAULT_TENANT).resume(
                           run_id, tools=registry, observer=observer))  # children too
    _finish(result, started, as_json, render.ContinueHints(store, tools or []))
