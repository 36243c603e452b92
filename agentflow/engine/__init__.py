"""The facade layer: validate, execute, resume and inspect runs."""

from agentflow.engine.api import (
    aexecute_plan,
    approve,
    aresume,
    cancel,
    execute_plan,
    get_run,
    reject,
    resume,
    send_event,
)
from agentflow.engine.engine import Engine
from agentflow.engine.results import Pending, RunError, RunResult, StepResult
from agentflow.engine.tenant import Tenant

__all__ = ["Engine", "Pending", "RunError", "RunResult", "StepResult", "Tenant", "aexecute_plan",
           "approve", "aresume", "cancel", "execute_plan", "get_run", "reject", "resume",
           "send_event"]
