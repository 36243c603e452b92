"""One small exception tree: every error a user can catch derives from `AgentflowError`.

Each error carries the ids a user needs to act on it (run, step, JSON path), so a message
alone is enough to find the problem and a program can branch on the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentflowError(Exception):
    """Base of every error agentflow raises on purpose."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a plan or its inputs.

    `path` is a JSON path into the plan as the user wrote it (`$.steps[3].args.ref`), so a
    person or an LLM repairing its plan knows exactly where to look.
    """

    path: str
    message: str
    step_id: str | None = None
    code: str = "invalid"

    def __str__(self) -> str:
        where = f"{self.path} (step {self.step_id!r})" if self.step_id else self.path
        return f"{where}: {self.message}"


class PlanValidationError(AgentflowError):
    """The plan (or its inputs) was rejected before anything ran; `issues` lists every problem."""

    def __init__(self, issues: list[ValidationIssue], what: str = "plan") -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{what} is invalid ({len(self.issues)} issue(s)):\n{lines}")


class ReferenceResolutionError(AgentflowError):
    """A `${...}` reference found nothing at run time (missing key, index out of range, ...).

    Validation checks references against the schemas it knows; this is what is left when the
    data itself differs from them (an open output schema, optional fields, short lists).
    """

    def __init__(self, reference: str, json_path: str, message: str) -> None:
        self.reference = reference
        self.json_path = json_path
        super().__init__(f"{json_path}: cannot resolve ${{{reference}}}: {message}")


class NonDeterminismError(AgentflowError):
    """A replayed call differs from the one the journal recorded at the same position."""

    def __init__(self, run_id: str, position: str, recorded: str, replayed: str) -> None:
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.replayed = replayed
        super().__init__(
            f"run {run_id!r}: call at {position} differs from the journal: "
            f"recorded {recorded}, replayed {replayed}"
        )


class SandboxViolation(AgentflowError):
    """Restricted-Python plan code tried something the sandbox forbids or exceeded a limit."""


class RunNotFound(AgentflowError):
    """No run with this id exists for this tenant."""

    def __init__(self, run_id: str, tenant_id: str = "default") -> None:
        self.run_id = run_id
        self.tenant_id = tenant_id
        super().__init__(f"no run {run_id!r} for tenant {tenant_id!r}")


class TenantMismatch(AgentflowError):
    """An operation named a run, plan or tool that belongs to another tenant."""


class PlanMismatch(AgentflowError):
    """A run was resumed with a plan (or inputs) other than the ones it was started with."""


class RunLeased(AgentflowError):
    """Another live worker is executing this run; it cannot be executed here at the same time."""

    def __init__(self, run_id: str, owner: str, until: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.until = until
        super().__init__(f"run {run_id!r} is being executed by {owner} (lease until {until:.0f})")


class LeaseLost(AgentflowError):
    """This worker's lease on a run expired and another worker took it; stop without writing."""

    def __init__(self, run_id: str, owner: str) -> None:
        self.run_id = run_id
        self.owner = owner
        super().__init__(f"lease on run {run_id!r} was lost by {owner}")


class ToolNotFound(AgentflowError):
    """A run needs a tool that was not passed in (or not registered for the tenant)."""


class ToolArgumentsError(AgentflowError):
    """Arguments resolved at run time do not match the tool's input schema."""


class StepTimeout(AgentflowError):
    """A tool call ran longer than its step's `timeout`."""


class StoreError(AgentflowError):
    """The store URL or the database behind it cannot be used."""
