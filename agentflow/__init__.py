"""agentflow: validate AI-agent plans, then execute them durably."""

from agentflow.engine import (
    Engine,
    Pending,
    RunError,
    RunResult,
    StepResult,
    aexecute_plan,
    aresume,
    execute_plan,
    get_run,
    resume,
)
from agentflow.errors import (
    AgentflowError,
    LeaseLost,
    NonDeterminismError,
    PlanMismatch,
    PlanValidationError,
    RunLeased,
    RunNotFound,
    SandboxViolation,
    StepTimeout,
    TenantMismatch,
    ToolArgumentsError,
    ValidationIssue,
)
from agentflow.plan import Plan, plan_schema
from agentflow.tools import Tool, ToolContext, tool

__all__ = [
    "AgentflowError", "Engine", "LeaseLost", "NonDeterminismError", "Pending", "Plan",
    "PlanMismatch", "PlanValidationError", "RunError", "RunLeased", "RunNotFound", "RunResult",
    "SandboxViolation", "StepResult", "StepTimeout", "TenantMismatch", "Tool", "ToolArgumentsError",
    "ToolContext", "ValidationIssue", "aexecute_plan", "aresume", "execute_plan", "get_run",
    "plan_schema", "resume", "tool",
]
