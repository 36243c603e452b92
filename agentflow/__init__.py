"""agentflow: validate AI-agent plans, then execute them durably."""

from importlib.metadata import PackageNotFoundError, version

from agentflow.engine import (
    Engine,
    Pending,
    RunError,
    RunResult,
    StepResult,
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
from agentflow.engine.failures import FailurePolicy
from agentflow.errors import (
    AgentflowError,
    AlreadyDecided,
    BudgetExceeded,
    DecisionExpired,
    DecisionRefused,
    LeaseLost,
    LimitExceeded,
    NonDeterminismError,
    NotAnApprover,
    NotJsonData,
    PendingNotFound,
    PlanMismatch,
    PlanValidationError,
    RunFinished,
    RunLeased,
    RunNotFound,
    RunWaitTimeout,
    SandboxViolation,
    StaleDecision,
    StepTimeout,
    StoreError,
    Suspension,
    TenantMismatch,
    ToolArgumentsError,
    ToolCallError,
    ValidationIssue,
)
from agentflow.executors.identities import idempotency_key
from agentflow.executors.limits import Limits
from agentflow.plan import Plan, plan_schema
from agentflow.plan.code import CodePlan, code_plan
from agentflow.sandbox import SandboxLimits
from agentflow.tools import Tool, ToolContext, tool

try:
    __version__ = version("agentflow")
except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AgentflowError",
    "AlreadyDecided",
    "BudgetExceeded",
    "CodePlan",
    "DecisionExpired",
    "DecisionRefused",
    "Engine",
    "FailurePolicy",
    "LeaseLost",
    "LimitExceeded",
    "Limits",
    "NonDeterminismError",
    "NotAnApprover",
    "NotJsonData",
    "Pending",
    "PendingNotFound",
    "Plan",
    "PlanMismatch",
    "PlanValidationError",
    "RunError",
    "RunFinished",
    "RunLeased",
    "RunNotFound",
    "RunResult",
    "RunWaitTimeout",
    "SandboxLimits",
    "SandboxViolation",
    "StaleDecision",
    "StepResult",
    "StepTimeout",
    "StoreError",
    "Suspension",
    "TenantMismatch",
    "Tool",
    "ToolArgumentsError",
    "ToolCallError",
    "ToolContext",
    "ValidationIssue",
    "__version__",
    "aexecute_plan",
    "approve",
    "aresume",
    "cancel",
    "code_plan",
    "execute_plan",
    "get_run",
    "idempotency_key",
    "plan_schema",
    "reject",
    "resume",
    "send_event",
    "tool",
]
