"""The `agentflow` command as CLI tests call it: typer's runner on the real entry point."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from agentflow.cli import app


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))
