"""The `agentflow` command line: `agentflow.cli:app` is the entry point."""

# The order the modules register their commands in is the order `--help` lists them.
# isort: off
from agentflow.cli import plan_files as plan_files  # registers validate, graph and schema
from agentflow.cli import running as running  # registers run, resume, approve, ... cancel
from agentflow.cli import inspecting as inspecting  # registers runs, show and logs
from agentflow.cli import fleet as fleet  # registers worker, submit and wait on the app
from agentflow.cli import plans as plans  # registers plans and prune on the app
from agentflow.cli import tenants as tenants  # registers policy, dry-run, fork and migrate
from agentflow.cli import web as web  # registers serve and tokens on the app
from agentflow.cli.commands import app

# isort: on

__all__ = ["app"]
