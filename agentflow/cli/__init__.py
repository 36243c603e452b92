"""The `agentflow` command line: `agentflow.cli:app` is the entry point."""

from agentflow.cli import fleet as fleet  # registers worker, submit and wait on the app
from agentflow.cli import plans as plans  # registers plans and prune on the app
from agentflow.cli import tenants as tenants  # registers policy, dry-run, fork and migrate
from agentflow.cli import web as web  # registers serve and tokens on the app
from agentflow.cli.commands import app

__all__ = ["app"]
