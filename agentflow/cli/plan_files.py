"""`agentflow validate`, `graph` and `schema`: the commands that read a plan file and run
nothing. They register on the `app` of `commands.py`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentflow.cli.commands import (
    CliError,
    JsonOption,
    PlanArgument,
    StoreOption,
    TenantOption,
    ToolsOption,
    _check_store,
    _compile,
    _engine,
    _plan_name,
    _step_count,
    _structure_issues,
    _tools,
    app,
    console,
)
from agentflow.engine import subplans
from agentflow.engine.engine import DEFAULT_TENANT
from agentflow.engine.loading import load_plan
from agentflow.engine.tenant import Tenant
from agentflow.errors import PlanValidationError, ValidationIssue
from agentflow.plan import CompiledPlan, compile_plan, plan_schema
from agentflow.plan.code import CodePlan
from agentflow.plan.diagram import to_dot, to_mermaid
from agentflow.sandbox.outline import code_plan_graph
from agentflow.store import local_store_path
from agentflow.tools import Tool, tool_registry


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
    store: StoreOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Draw a plan's steps and dependencies: Mermaid text by default. A code plan (.py) is
    drawn as the tool and built-in calls it makes, in source order, with their lines. With
    --tools and a store, sub-plans are checked against the tenant's registered plans.

    Example: agentflow graph plans/ci_pipeline.json --format svg --output ci.svg
    """
    data = load_plan(plan)
    registry = tool_registry(_tools(tools)) if tools else None
    if registry is not None:
        with _tenant_if_stored(store, tenant, registry) as found:
            if found is not None:
                registry.update(subplans.plan_tools(found.engine, found.id, data))
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
