"""What a caller gets back: `RunResult`, one `StepResult` per step, `Pending` waits.

Results are rebuilt from the store alone (the run row and its journal), so `get_run` in
another process, days later, shows exactly what `execute_plan` returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agentflow.executors.journal import CallRecord, fold
from agentflow.store.base import JournalEntry, RunRecord, RunStatus, WaitRecord

StepStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "rejected",
                     "waiting"]


@dataclass(frozen=True)
class RunError:
    """Why a run failed: the step (None for a plan-level problem), the error type and text,
    the code-plan line that failed, and a tool's bounded traceback (no local variables)."""

    step_id: str | None
    type: str
    message: str
    line: int | None = None
    traceback: str | None = None

    def __str__(self) -> str:
        where = f"step {self.step_id!r}: " if self.step_id else ""
        at = f" (line {self.line})" if self.line is not None else ""
        if self.message.endswith(at):  # a sandbox violation names its line already
            at = ""
        return f"{where}{self.type}: {self.message}{at}"


@dataclass(frozen=True)
class StepResult:
    """One step as the journal records it. `attempts` counts calls started (all items).

    `tool` is the tool or built-in the step called; `line` the code-plan line that called
    it (None for graph plans). A failed tool's `error` is its message, `error_type` its type
    and `traceback` its innermost frames (file, line, code; never local variables)."""

    id: str
    status: StepStatus
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    items: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    tool: str | None = None
    line: int | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class Pending:
    """Something a waiting run waits for: an approval, an event or a timer."""

    id: str
    kind: Literal["approval", "event", "timer"]
    step_id: str | None
    tool: str | None = None
    args: dict[str, Any] | None = None
    prompt: str | None = None
    expires_at: float | None = None
    status: str = "pending"
    decision: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunResult:
    """The state of a run: final for completed/failed/cancelled, a snapshot otherwise
    ("queued": submitted, no worker has started it yet)."""

    run_id: str
    status: RunStatus
    outputs: Any
    error: RunError | None
    steps: dict[str, StepResult]
    pending: list[Pending] = field(default_factory=list)
    tenant_id: str = "default"
    plan_hash: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def __repr__(self) -> str:
        """Short on purpose: a 1,000-step run's full repr is unreadable (and asyncio builds
        it once per `asyncio.run`, on a path no user sees)."""
        error = f", error={str(self.error)!r}" if self.error else ""
        return (f"RunResult(run_id={self.run_id!r}, status={self.status!r}, "
                f"steps={len(self.steps)}, pending={len(self.pending)}{error})")

    def _repr_html_(self) -> str:
        """Jupyter shows a run as its status, step table and pending approvals."""
        from agentflow.engine.html import render_run_html  # html renders this module's types

        return render_run_html(self)


def remember_origin(result: RunResult, engine: Any, tools: Any) -> RunResult:
    """Note on `result` the engine (and the tools) it came from, so that a front such as
    the notebook's approval panel can act on the run without being told the store again.
    Not a field: `asdict`, equality and the JSON of a result do not see it."""
    object.__setattr__(result, "_origin", (engine, None if tools is None else list(tools)))
    return result


def origin_of(result: RunResult) -> tuple[Any, list[Any] | None] | None:
    """(engine, tools) that `result` came from, when an engine returned it."""
    found: tuple[Any, list[Any] | None] | None = getattr(result, "_origin", None)
    return found


def pending_from_wait(wait: WaitRecord) -> Pending:
    """The caller's view of a stored wait."""
    kind = "timer" if wait.kind == "timer" else wait.kind
    prompt = wait.prompt if wait.kind == "approval" else wait.event_name
    return Pending(id=wait.wait_id, kind=kind, step_id=wait.step_id, tool=wait.tool,
                   args=wait.args, prompt=prompt, expires_at=wait.expires_at,
                   status=wait.status, decision=wait.decision)


def run_error(error: dict[str, Any] | None) -> RunError | None:
    if not error:
        return None
    line = error.get("line")
    trace = error.get("traceback")
    return RunError(step_id=error.get("step"), type=str(error.get("type", "Error")),
                    message=str(error.get("message", "")),
                    line=line if isinstance(line, int) else None,
                    traceback=trace if isinstance(trace, str) else None)


def build_result(run: RunRecord, step_ids: list[tuple[str, bool]] | None,
                 entries: list[JournalEntry] | dict[str, CallRecord],
                 pending: list[Pending] | None = None) -> RunResult:
    """Assemble a `RunResult` from the run row, the plan's (step id, is foreach) list (None
    for a code plan: its calls, in journal order, are its steps) and the journal (its
    entries, or the records an executor folded them into)."""
    records = entries if isinstance(entries, dict) else fold(entries)
    if step_ids is None:
        step_ids = [(key, False) for key in records if "@" not in key]
        step_ids += [(wait.step_id, False) for wait in pending or []
                     if wait.step_id and wait.step_id not in records]
    items: dict[str, list[tuple[int, CallRecord]]] = {}
    for key, record in records.items():
        base, bracket, rest = key.partition("[")
        if bracket and rest[:-1].isdigit():
            items.setdefault(base, []).append((int(rest[:-1]), record))
    steps = {
        sid: _step_result(sid, records.get(sid), sorted(items.get(sid, [])), foreach)
        for sid, foreach in step_ids
    }
    for wait in pending or []:
        step = steps.get(wait.step_id or "")
        if step is not None and step.status in ("pending", "running"):
            steps[step.id] = replace(step, status="waiting")
    return RunResult(run_id=run.run_id, status=run.status, outputs=run.outputs,
                     error=run_error(run.error), steps=steps, pending=pending or [],
                     tenant_id=run.tenant_id, plan_hash=run.plan_hash,
                     created_at=run.created_at, updated_at=run.updated_at)


def _step_result(sid: str, own: CallRecord | None, items: list[tuple[int, CallRecord]],
                 foreach: bool) -> StepResult:
    if not foreach:
        if own is None:
            return StepResult(sid, "pending")
        status: StepStatus = "running" if own.status == "started" else own.status  # type: ignore[assignment]
        has_failed = own.status == "failed"
        return StepResult(sid, status, own.output, _message(own.error),
                          (own.error or {}).get("type") if has_failed else None,
                          own.attempts, None, own.started_at, own.finished_at, own.tool,
                          own.line, _traceback(own.error) if has_failed else None)
    records = [record for _, record in items]
    settled = own is not None and own.status in ("succeeded", "failed", "skipped")
    failed = next((r for r in records if r.status == "failed"), None)
    if own is not None and own.status in ("skipped", "failed") and not records:
        status = own.status  # type: ignore[assignment]
        error = own.error
    elif settled:
        status = own.status  # type: ignore[union-attr,assignment]
        error = failed.error if failed else None
    else:
        status = "running" if records or own is not None else "pending"
        error = failed.error if failed else None
    starts = [r.started_at for r in records if r.started_at is not None]
    ends = [r.finished_at for r in records if r.finished_at is not None]
    return StepResult(
        sid, status, [r.output for r in records] if status in ("succeeded", "failed") else None,
        _message(error), (error or {}).get("type") if status == "failed" else None,
        sum(r.attempts for r in records), len(records),
        min(starts) if starts else None,
        (own.finished_at if own else None) or (max(ends) if ends else None),
        (own.tool if own else None) or (records[0].tool if records else None), None,
        _traceback(error) if status == "failed" else None)


def _traceback(error: dict[str, Any] | None) -> str | None:
    trace = (error or {}).get("traceback")
    return trace if isinstance(trace, str) else None


def _message(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    return str(error.get("message") or error.get("reason") or "") or None
