"""The HTTP status of each error the engine raises: the one table the API and the pages
of approval links both answer with."""

from __future__ import annotations

from agentflow.errors import (
    AccessDenied,
    AlreadyDecided,
    DecisionExpired,
    LinkArgsChanged,
    LinkExpired,
    LinkTampered,
    NotAnApprover,
    PendingNotFound,
    PlanMismatch,
    PlanValidationError,
    RunFinished,
    RunLeased,
    RunNotFound,
    StaleDecision,
    TenantMismatch,
    ToolArgumentsError,
    ToolNotFound,
)

STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (RunNotFound, 404), (PendingNotFound, 404), (TenantMismatch, 404),
    (NotAnApprover, 403), (LinkTampered, 403),
    (DecisionExpired, 410), (LinkExpired, 410),
    (AlreadyDecided, 409), (StaleDecision, 409), (LinkArgsChanged, 409), (RunFinished, 409),
    (PlanMismatch, 409), (RunLeased, 409),
    (PlanValidationError, 422), (ToolArgumentsError, 422), (ToolNotFound, 422),
    (ValueError, 422),
)
"""HTTP status per error type, first match wins; any other `AgentflowError` is a 400."""


def status_of(error: Exception) -> int:
    if isinstance(error, AccessDenied):
        return error.status
    return next((status for kind, status in STATUS_OF if isinstance(error, kind)), 400)
