"""The facade layer: validate, execute, resume and inspect runs."""

from agentflow.engine.api import aexecute_plan, aresume, execute_plan, get_run, resume
from agentflow.engine.engine import Engine
from agentflow.engine.results import Pending, RunError, RunResult, StepResult

__all__ = ["Engine", "Pending", "RunError", "RunResult", "StepResult", "aexecute_plan",
           "aresume", "execute_plan", "get_run", "resume"]
