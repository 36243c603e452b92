"""The `agentflow` command line: `agentflow.cli:app` is the entry point."""

from agentflow.cli.commands import app

__all__ = ["app"]
