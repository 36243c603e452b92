"""One small exception tree: every error a user can catch derives from `AgentflowError`.

Each error carries the ids a user needs to act on it (run, step, JSON path), so a message
alone is enough to find the problem and a program can branch on the attributes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


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
        self.what = what  # "plan", or "inputs" when the plan is fine and its inputs are not
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        verb = "are" if what.endswith("s") else "is"
        super().__init__(f"{what} {verb} invalid ({len(self.issues)} issue(s)):\n{lines}")


class ReferenceResolutionError(AgentflowError):
    """A `${...}` reference found nothing at run time (missing key, index out of range, ...).

    Validation checks references against the schemas it knows; this is what is left when the
    data itself differs from them (an open output schema, optional fields, short lists).
    """

    def __init__(self, reference: str, json_path: str, message: str) -> None:
        self.reference = reference
        self.json_path = json_path
        super().__init__(f"{json_path}: cannot resolve ${{{reference}}}: {message}")


class ExpressionError(ReferenceResolutionError):
    """A `${= ...}` expression could not be evaluated at run time: a function got a value it
    cannot take (`fromJSON` of text that is not JSON, `length` of a number) or would build a
    result past its size limit."""

    def __init__(self, expression: str, json_path: str, message: str) -> None:
        self.reference = expression
        self.json_path = json_path
        AgentflowError.__init__(self, f"{json_path}: cannot evaluate ${{= {expression}}}: "
                                f"{message}")


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
    """Restricted-Python plan code tried something the sandbox forbids or exceeded a limit.

    `limit` names the `SandboxLimits` field that was exceeded (None for a forbidden action)
    and `line` is the line of the plan source where it happened, when known.
    """

    def __init__(self, message: str, *, limit: str | None = None, line: int | None = None) -> None:
        self.limit = limit
        self.line = line
        super().__init__(message)


class IsolateError(SandboxViolation):
    """The isolate process running a code plan died or broke the protocol. The run fails
    with the subclass that says how; the engine is unaffected and the pool replaces it."""


class IsolateTimedOut(IsolateError):
    """Plan code ran past `SandboxLimits.max_seconds` (in one C-level operation, say): the
    engine killed its isolate."""


class IsolateCpuExceeded(IsolateError):
    """The isolate used more CPU time than its limit allows; the kernel stopped it."""


class IsolateOutOfMemory(IsolateError):
    """The isolate ran out of its address-space limit where it could not report it."""


class IsolateCrashed(IsolateError):
    """The isolate ended without reporting an outcome (a signal, an exit, the system's
    out-of-memory killer): not caused by a limit of the run."""


class IsolateProtocolError(IsolateError):
    """The isolate sent a message it may not send; it was killed."""


class Suspension(BaseException):
    """Raised inside plan code to unwind when the run must wait (approval, timer, event).

    Not an error: the executor raises it from a plan built-in or tool binding and catches it
    at the top of the run, which it then records as waiting. It derives from BaseException so
    that `except Exception` in plan code cannot catch it, and the sandbox refuses every
    further call once it was raised.
    """


class ToolCallError(AgentflowError):
    """A tool called from a code plan failed; plan code may catch it by name.

    Carries only plain data (never the original exception object), so catching it cannot
    hand plan code a host object. `error_type` is the original exception's type name.
    """

    def __init__(self, tool: str, message: str, step_id: str | None = None,
                 error_type: str | None = None) -> None:
        self.tool = tool
        self.message = message
        self.step_id = step_id
        self.error_type = error_type
        where = f" (call {step_id!r})" if step_id else ""
        super().__init__(f"tool {tool!r}{where} failed: {message}")


class RunNotFound(AgentflowError):
    """No run with this id exists for this tenant."""

    def __init__(self, run_id: str, tenant_id: str = "default") -> None:
        self.run_id = run_id
        self.tenant_id = tenant_id
        super().__init__(f"no run {run_id!r} for tenant {tenant_id!r}")


class TenantMismatch(AgentflowError):
    """An operation named a run, plan or tool that belongs to another tenant."""


class PlanNotFound(AgentflowError):
    """No plan registered under this name (or no such version of it) for this tenant."""

    def __init__(self, name: str, tenant_id: str = "default", version: str | None = None,
                 known: Sequence[str] = ()) -> None:
        self.name = name
        self.tenant_id = tenant_id
        self.version = version
        what = f"version {version[:12]} of plan {name!r}" if version else f"plan {name!r}"
        super().__init__(f"no {what} for tenant {tenant_id!r}{_known_plans(name, known)}")


def _known_plans(name: str, known: Sequence[str]) -> str:
    """What a user who mistyped a plan name needs next: the close match, or the names."""
    if not known:
        return ""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; its plans: {', '.join(sorted(known)[:10])}" + (", ..." if len(known) > 10 else "")


class PlanInUse(AgentflowError):
    """A plan version cannot be deleted while a run that has not finished is pinned to it."""

    def __init__(self, name: str, version: str, run_id: str) -> None:
        self.name = name
        self.version = version
        self.run_id = run_id
        super().__init__(f"version {version[:12]} of plan {name!r} is in use by run "
                         f"{run_id!r}, which has not finished; cancel it or wait")


class TooManyRuns(AgentflowError):
    """The tenant's policy caps its concurrent runs, and that many are executing now."""

    def __init__(self, tenant_id: str, cap: int, running: int) -> None:
        self.tenant_id = tenant_id
        self.cap = cap
        self.running = running
        super().__init__(f"tenant {tenant_id!r} executes {running} runs, its policy's "
                         f"max_concurrent_runs is {cap}; nothing was started")


class PlanMismatch(AgentflowError):
    """A run was resumed with a plan (or inputs) other than the ones it was started with."""


class RunLeased(AgentflowError):
    """Another live worker is executing this run; it cannot be executed here at the same time."""

    def __init__(self, run_id: str, owner: str, until: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.until = until
        super().__init__(f"run {run_id!r} is being executed by {owner} (lease until {until:.0f})")


class RunWaitTimeout(AgentflowError):
    """`wait` gave up: the run did not end or start waiting within the timeout."""

    def __init__(self, run_id: str, status: str, timeout: float) -> None:
        self.run_id = run_id
        self.status = status
        self.timeout = timeout
        super().__init__(f"run {run_id!r} is still {status} after waiting {timeout:g} s")


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


class NotJsonData(AgentflowError):
    """A value a run must store is not JSON data: an object, NaN or infinity, or a string
    that is not valid Unicode (a lone surrogate, as `os.fsdecode` gives for a file name that
    is not UTF-8). The message names where. A tool result like that is not retried: the tool
    ran, and running it again would repeat its effect for a result that still cannot be
    stored."""


class StepTimeout(AgentflowError):
    """A tool call ran longer than its step's `timeout`."""


def _amount(value: float) -> str:
    """12 for 12.0, 0.25 for 0.25: amounts as a person writes them."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")


class BudgetExceeded(AgentflowError):
    """A call would spend more than what is left of the run's budget; it was not made."""

    def __init__(self, run_id: str, key: str, resource: str, limit: float, spent: float,
                 needed: float | None) -> None:
        self.run_id = run_id
        self.key = key
        self.resource = resource
        self.limit = limit
        self.spent = spent
        self.needed = needed
        asks = f"up to {needed}" if needed is not None else "an unknown amount"
        super().__init__(f"run {run_id!r}: call {key!r} may spend {asks} {resource} but only "
                         f"{_amount(limit - spent)} of the budget of {_amount(limit)} are left")


class LimitExceeded(AgentflowError):
    """A value, a list or a journal passed one of the `Limits` (`limit` names the field);
    nothing was called or written past it. `where` says which run, step or call."""

    def __init__(self, limit: str, maximum: int, where: str, message: str) -> None:
        self.limit = limit
        self.maximum = maximum
        self.where = where
        super().__init__(f"{where}: {message} (limit {limit}={maximum})")


class StoreError(AgentflowError):
    """The store URL or the database behind it cannot be used."""


def _iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC, to the second (`2024-05-01T10:00:00Z`)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")[:-6] + "Z"


class CorruptRow(StoreError):
    """A stored row cannot be read (its JSON is broken: changed outside agentflow, or
    damaged). It fails its own run alone, naming the run and the row."""


class RunFinished(AgentflowError):
    """The run is completed, failed or cancelled: it takes no more events, decisions or
    cancellation."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} is already {status}; it cannot be changed any more")


class WaitConflict(AgentflowError):
    """A worker tried to overwrite the outcome of a wait that someone else decided after the
    worker read it (an approval decided while the worker marked it expired). Nothing was
    written; re-read the waits and replay."""

    def __init__(self, run_id: str, wait_id: str, stored: str, attempted: str) -> None:
        self.run_id = run_id
        self.wait_id = wait_id
        self.stored = stored
        self.attempted = attempted
        super().__init__(
            f"wait {wait_id!r} of run {run_id!r} is already {stored}; it cannot be marked "
            f"{attempted} (re-read the run's waits)"
        )


class DecisionRefused(AgentflowError):
    """A decision on a pending approval (or another wait) was refused; nothing changed."""

    def __init__(self, run_id: str, wait_id: str, message: str) -> None:
        self.run_id = run_id
        self.wait_id = wait_id
        super().__init__(message)


class NotAnApprover(DecisionRefused):
    """The approval names its approvers and the decider is not one of them."""


class PendingNotFound(DecisionRefused):
    """The run has no wait with this id of the kinds the decision is for."""

    def __init__(self, run_id: str, wait_id: str, kinds: Iterable[str] = ("approval",),
                 actual_kind: str | None = None, pending: Iterable[str] | None = None) -> None:
        wanted = " or ".join(kinds)
        other = f" ({wait_id!r} is a {actual_kind} wait)" if actual_kind else ""
        valid = "" if pending is None else (
            f"; pending: {', '.join(pending)}" if pending else "; it has nothing pending")
        self.pending = None if pending is None else list(pending)
        super().__init__(run_id, wait_id,
                         f"run {run_id!r} has no {wanted} {wait_id!r}{other}{valid}")


class AlreadyDecided(DecisionRefused):
    """The wait is no longer pending: `status` says what was decided, `by` and `decided_at`
    who decided and when (`by` is None when the run itself decided, e.g. on cancellation)."""

    def __init__(self, run_id: str, wait_id: str, status: str, by: str | None,
                 decided_at: float | None) -> None:
        self.status = status
        self.by = by
        self.decided_at = decided_at
        who = f" by {by}" if by else ""
        when = f" at {_iso(decided_at)}" if decided_at is not None else ""
        super().__init__(run_id, wait_id,
                         f"{wait_id!r} of run {run_id!r} was already {status}{who}{when}")


class StaleDecision(DecisionRefused):
    """The arguments the wait was bound to changed; the run asks for a new decision."""

    def __init__(self, run_id: str, wait_id: str) -> None:
        super().__init__(
            run_id, wait_id,
            f"{wait_id!r} of run {run_id!r} is stale: the arguments it was bound to changed; "
            "decide the run's new pending approval instead",
        )


class DecisionExpired(DecisionRefused):
    """The wait expired (at `expires_at`) before the decision arrived."""

    def __init__(self, run_id: str, wait_id: str, expires_at: float | None) -> None:
        self.expires_at = expires_at
        when = f" at {_iso(expires_at)}" if expires_at is not None else ""
        super().__init__(run_id, wait_id, f"{wait_id!r} of run {run_id!r} expired{when}")


class AccessDenied(AgentflowError):
    """An API token is missing, unknown or revoked (`status` 401), or its role may not do
    what was asked (`status` 403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class LinkRefused(AgentflowError):
    """A signed approval link cannot decide anything; `reason` says why in one word
    (tampered, expired, changed) and nothing was changed."""

    reason = "refused"


class LinkTampered(LinkRefused):
    """The link's signature does not match its fields: it was altered or never signed here."""

    reason = "tampered"


class LinkExpired(LinkRefused):
    """The link's own expiry has passed."""

    reason = "expired"


class LinkArgsChanged(LinkRefused):
    """The approval's plan or arguments are no longer the ones the link was signed for."""

    reason = "changed"
