"""`python -m agentflow.cli ...` runs the `agentflow` command."""

from agentflow.cli.commands import app

app(prog_name="agentflow")
