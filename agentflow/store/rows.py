"""What every SQL backend shares about rows: JSON encoding, the column lists, and turning
rows into records and back.

Values are stored as compact JSON text (never pickle); a value that is not JSON raises
`StoreError` before anything is written. Both backends keep the same text, so a row means
the same thing on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, get_args

from agentflow.errors import (
    AlreadyDecided,
    CorruptRow,
    DecisionExpired,
    RunFinished,
    StaleDecision,
    StoreError,
)
from agentflow.store.base import (
    FINISHED_STATUSES,
    EventRecord,
    JournalEntry,
    RunRecord,
    WaitKind,
    WaitRecord,
    WaitStatus,
)

RUN_STATUSES = frozenset({"queued", "running", "waiting", "completed", "failed", "cancelled"})
RUN_COLUMNS = (
    "tenant_id, run_id, plan_hash, status, inputs, outputs, error, created_at, updated_at, "
    "wake_at, lease_owner, lease_expires_at, options, plan_name"
)
WAIT_COLUMNS = (
    "tenant_id, run_id, wait_id, key, kind, plan_hash, step_id, tool, args, args_hash, prompt,"
    " approvers, event_name, expires_at, on_expiry, status, decision, consumed, created_at,"
    " decided_at, args_schema"
)
EVENT_COLUMNS = "seq, name, payload, sent_at, consumed_by, consumed_at"
JOURNAL_COLUMNS = "key, kind, data, attempt, tool, args_hash, at, seq"

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any, what: str) -> str:
    """Compact JSON text of `value`; `StoreError` if it is not JSON (NaN, objects, ...)."""
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: not JSON ({exc})") from exc


def dumps_optional(value: Any, what: str) -> str | None:
    """`dumps(value)`, or None (SQL NULL) for None."""
    return None if value is None else dumps(value, what)


def loads(text: str, what: str) -> Any:
    """The value of stored JSON `text`; `CorruptRow` naming `what` if it is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as error:
        raise CorruptRow(f"{what} is not valid JSON ({error}): the row was changed outside "
                         "agentflow or damaged") from None


def loads_optional(text: str | None, what: str = "a stored value") -> Any:
    """The value of JSON `text`, or None for SQL NULL."""
    return None if text is None else loads(text, what)


def journal_rows(run_id: str, entries: list[JournalEntry]) -> list[tuple[Any, ...]]:
    """(key, kind, attempt, tool, args_hash, data JSON, at) per entry; `at` 0 means now.
    `StoreError` for data that is not JSON or a key with a NUL character (which no
    PostgreSQL text can hold)."""
    now = time.time()
    for entry in entries:
        if "\x00" in entry.key or (not entry.key.isprintable() and _not_utf8(entry.key)):
            raise StoreError(f"cannot store a journal entry of run {run_id!r}: its key "
                             f"{entry.key!r} contains a NUL character or a lone surrogate")
    try:
        return [
            (e.key, e.kind, e.attempt, e.tool, e.args_hash,
             _encode(e.data) if e.text is None else e.text, e.at or now)
            for e in entries
        ]
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot store a journal entry of run {run_id!r}: data not JSON ({exc})"
        ) from exc


def _not_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def journal_from_row(row: tuple[Any, ...], run_id: str = "?") -> JournalEntry:
    """Decode a row selected as `JOURNAL_COLUMNS`; `CorruptRow` naming the run and seq."""
    key, kind, data, attempt, tool, args_hash, at, seq = row
    return JournalEntry(key=key, kind=kind,
                        data=loads(data, f"journal row {seq} of run {run_id!r} ({key})"),
                        attempt=attempt, tool=tool, args_hash=args_hash, at=at, seq=seq,
                        text=data)


def run_values(run: RunRecord, owner: str | None, lease_seconds: float) -> tuple[Any, ...]:
    """The `RUN_COLUMNS` values of a new run, leased to `owner` (None: not leased);
    `created_at`/`updated_at` of 0 mean now."""
    if run.status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {run.status!r}")
    now = run.created_at or time.time()
    return (
        run.tenant_id, run.run_id, run.plan_hash, run.status,
        dumps(run.inputs, "run inputs"), dumps(run.outputs, "run outputs"),
        dumps_optional(run.error, "run error"),
        now, run.updated_at or now, run.wake_at, owner,
        None if owner is None else now + lease_seconds, dumps(run.options, "run options"),
        run.plan_name,
    )


def run_from_row(row: tuple[Any, ...]) -> RunRecord:
    """Decode a row selected as `RUN_COLUMNS`. A column whose JSON is broken reads as
    empty and sets `corrupt` (naming the run and the columns) instead of raising, so one
    bad row never stops a listing or a worker."""
    broken: list[str] = []

    def column(index: int, name: str, empty: Any) -> Any:
        try:
            return loads_optional(row[index], f"column {name}")
        except CorruptRow:
            broken.append(name)
            return empty

    record = RunRecord(
        tenant_id=row[0], run_id=row[1], plan_hash=row[2], status=row[3],
        inputs=column(4, "inputs", {}), outputs=column(5, "outputs", None),
        error=column(6, "error", None), created_at=row[7], updated_at=row[8],
        wake_at=row[9], lease_owner=row[10], lease_expires_at=row[11],
        options=column(12, "options", {}), plan_name=row[13],
    )
    if not broken:
        return record
    return replace(record, corrupt=f"the runs row of run {row[1]!r} (tenant {row[0]!r}) "
                                   f"has broken JSON in {', '.join(broken)}: it was changed "
                                   "outside agentflow or damaged")


def wait_row(tenant_id: str, run_id: str, wait: WaitRecord, now: float) -> tuple[Any, ...]:
    """The `WAIT_COLUMNS` values of `wait`; `ValueError` if it belongs to another run or has
    an unknown kind or status, `StoreError` if a value is not JSON. `created_at` 0 is now."""
    if (wait.tenant_id, wait.run_id) != (tenant_id, run_id):
        raise ValueError(
            f"wait {wait.wait_id!r} belongs to run {wait.run_id!r} of tenant "
            f"{wait.tenant_id!r}, not to run {run_id!r} of tenant {tenant_id!r}"
        )
    if wait.kind not in get_args(WaitKind):
        raise ValueError(f"wait {wait.wait_id!r}: unknown kind {wait.kind!r}")
    if wait.status not in get_args(WaitStatus):
        raise ValueError(f"wait {wait.wait_id!r}: unknown status {wait.status!r}")
    what = f"wait {wait.wait_id!r} of run {run_id!r}"
    return (
        tenant_id, run_id, wait.wait_id, wait.key, wait.kind, wait.plan_hash, wait.step_id,
        wait.tool, dumps_optional(wait.args, f"the arguments of {what}"), wait.args_hash,
        _display_text(wait.prompt), dumps_optional(wait.approvers, f"the approvers of {what}"),
        wait.event_name, wait.expires_at, wait.on_expiry, wait.status,
        dumps_optional(wait.decision, f"the decision on {what}"), int(wait.consumed),
        wait.created_at or now, wait.decided_at,
        dumps_optional(wait.args_schema, f"the argument schema of {what}"),
    )


def _display_text(text: str | None) -> str | None:
    """Text shown to people (a prompt, which may quote a plan's values) as every backend
    can hold it: a NUL (no PostgreSQL text takes one) or a lone surrogate is written as its
    escape, which also shows the approver that it is there."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def wait_from_row(row: tuple[Any, ...]) -> WaitRecord:
    """Decode a row selected as `WAIT_COLUMNS`."""
    return WaitRecord(
        tenant_id=row[0], run_id=row[1], wait_id=row[2], key=row[3], kind=row[4],
        plan_hash=row[5], step_id=row[6], tool=row[7], args=loads_optional(row[8]),
        args_hash=row[9], prompt=row[10], approvers=loads_optional(row[11]),
        event_name=row[12], expires_at=row[13], on_expiry=row[14], status=row[15],
        decision=loads_optional(row[16]), consumed=bool(row[17]), created_at=row[18],
        decided_at=row[19], args_schema=loads_optional(row[20]),
    )


def event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """Decode a row selected as `EVENT_COLUMNS`."""
    return EventRecord(seq=row[0], name=row[1], payload=loads(row[2], f"event {row[0]}"),
                       sent_at=row[3], consumed_by=row[4], consumed_at=row[5])


def refuse_decision(wait: WaitRecord, run_status: str, now: float) -> None:
    """Raise why `wait` (of a run in `run_status`) cannot be decided at `now`, if it cannot."""
    if wait.status == "stale":
        raise StaleDecision(wait.run_id, wait.wait_id)
    if wait.status == "expired" or (
        wait.status == "pending" and wait.expires_at is not None and wait.expires_at < now
    ):
        raise DecisionExpired(wait.run_id, wait.wait_id, wait.expires_at)
    if wait.status != "pending":
        by = (wait.decision or {}).get("by")
        raise AlreadyDecided(wait.run_id, wait.wait_id, wait.status,
                             by if isinstance(by, str) else None, wait.decided_at)
    if run_status in FINISHED_STATUSES:
        raise RunFinished(wait.run_id, run_status)
