"""A run's journal as the executors see it: recorded call outcomes plus a write buffer.

Executors never write to the store directly. They add entries to the buffer and `flush()`
commits everything buffered in one fenced store transaction. The executor flushes before
it starts any call, so a call's intent, and every result a call depends on, is durable
before the call runs (contracts 2 and 3), at one commit per scheduling round.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agentflow.errors import LimitExceeded
from agentflow.executors import progress
from agentflow.executors.commits import GroupCommitter
from agentflow.executors.limits import Limits, value_size
from agentflow.store.base import JournalAppend, JournalEntry, Store

APPROVAL_OUTPUT_FIELDS = ("approved", "by", "comment", "reason")


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encoder(sort: bool, ensure_ascii: bool, allow_nan: bool) -> Callable[[Any], str]:
    """`json.JSONEncoder(...).encode` for compact JSON, with the C encoder made once rather
    than per call (most of the cost of encoding a small value). It does not look for
    circular references: a value that has one (a Python object, never JSON data) fails
    with RecursionError and is encoded again by the checking encoder, which names it."""
    checking = json.JSONEncoder(sort_keys=sort, separators=(",", ":"),
                                ensure_ascii=ensure_ascii, allow_nan=allow_nan).encode
    make = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator (untyped)
    if make is None:  # pragma: no cover - CPython always has the C encoder
        return checking
    quote = (json.encoder.encode_basestring_ascii if ensure_ascii
             else json.encoder.encode_basestring)
    fast = make(None, _refuse, quote, None, ":", ",", sort, False, allow_nan)
    join = "".join

    def encode(value: Any) -> str:
        try:
            text: str = join(fast(value, 0))
            return text
        except RecursionError:
            return checking(value)

    return encode


_canonical = _encoder(sort=True, ensure_ascii=False, allow_nan=True)
_encode = _encoder(sort=False, ensure_ascii=True, allow_nan=False)
"""The JSON text the store keeps of an entry's data (`RunJournal.add` writes an int, the
commonest result, and None without it): what the journal quotas count."""


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the form hashed to pin plans and arguments."""
    return _canonical(value)


def args_hash(args: Any) -> str:
    """The SHA-256 of call arguments (full width), recorded with each intent and binding
    each approval to the exact arguments it was asked for."""
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


@dataclass(slots=True)
class CallRecord:
    """What the journal says about one call position (a step, a foreach item, a code call)."""

    key: str
    tool: str | None = None
    attempts: int = 0
    args: Any = None
    args_hash: str | None = None
    status: str = "pending"  # pending started waiting succeeded failed skipped rejected
    output: Any = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    decision: dict[str, Any] | None = None
    line: int | None = None  # the code-plan line that made the call

    def apply(self, entry: JournalEntry) -> None:
        """Fold one journal entry into this record (entries arrive in `seq` order)."""
        kind = entry.kind
        if kind == "intent":
            self.status = "started"
            if entry.attempt > self.attempts:
                self.attempts = entry.attempt
            self.tool = entry.tool
            self.args_hash = entry.args_hash
            data = entry.data
            if isinstance(data, dict):
                self.args, self.line = data.get("args"), data.get("line")
            else:
                self.args = self.line = None
            if self.started_at is None:
                self.started_at = entry.at
            return
        if entry.tool is not None:
            self.tool = entry.tool
            self.args_hash = entry.args_hash or self.args_hash
        if kind == "result":
            self.status = "succeeded"
            self.output = entry.data
            self.error = None
            self.finished_at = entry.at
        elif kind == "call":
            self.line = entry.data.get("line") if isinstance(entry.data, dict) else None
        elif kind == "error":
            data = entry.data if isinstance(entry.data, dict) else {"message": str(entry.data)}
            self.errors.append({**data, "attempt": entry.attempt})
            self.error = data
            if data.get("final", True):
                self.status = "failed"
                self.finished_at = entry.at
        elif kind == "wait":
            self.status = "waiting"
            self.output = entry.data
            if self.started_at is None:
                self.started_at = entry.at
        elif kind == "decision":
            data = entry.data if isinstance(entry.data, dict) else {}
            self.status = "succeeded" if data.get("approved") else "rejected"
            self.decision = data
            self.output = {name: data.get(name) for name in APPROVAL_OUTPUT_FIELDS}
            self.finished_at = entry.at
        elif kind == "rejected":
            self.status = "rejected"
            self.error = entry.data if isinstance(entry.data, dict) else None
            self.finished_at = entry.at
        elif kind == "settled":
            self.status = entry.data["status"]
            self.finished_at = entry.at
        elif kind == "skipped":
            self.status = "skipped"
            self.error = entry.data if isinstance(entry.data, dict) else None
            self.finished_at = entry.at


def fold(entries: Iterable[JournalEntry]) -> dict[str, CallRecord]:
    """Each call position's record, from the journal entries in `seq` order."""
    records: dict[str, CallRecord] = {}
    for entry in entries:
        _fold_into(records, entry)
    return records


def _fold_into(records: dict[str, CallRecord], entry: JournalEntry) -> None:
    record = records.get(entry.key)
    if record is None:
        record = records[entry.key] = CallRecord(entry.key)
    record.apply(entry)


_new = object.__new__
_set = object.__setattr__


def _new_entry(key: str, kind: str, data: Any, attempt: int, tool: str | None,
               args_hash: str | None, at: float, text: str | None) -> JournalEntry:
    """`JournalEntry(...)` for the two entries of every step: the frozen dataclass's own
    `__init__` sets its nine fields one `object.__setattr__` at a time (a third of the
    cost of journaling an entry); this sets its `__dict__` at once, to the same fields."""
    entry = _new(JournalEntry)
    _set(entry, "__dict__", {"key": key, "kind": kind, "data": data, "attempt": attempt,
                             "tool": tool, "args_hash": args_hash, "at": at, "seq": 0,
                             "text": text})
    return entry


class RunJournal:
    """Recorded outcomes of one run, and the entries waiting for the next commit.

    The journal is folded from `entries` as they come (an iterator over pages is enough:
    no entry is kept once folded). `admit` checks a value against the `Limits` and the
    journal quotas before the executor calls a tool with it or records it."""

    def __init__(
        self, store: Store, tenant_id: str, run_id: str, owner: str,
        entries: Iterable[JournalEntry], check_lease: Callable[[], None] | None = None,
        committer: GroupCommitter | None = None, limits: Limits | None = None,
    ) -> None:
        self.store = store
        self._check_lease = check_lease
        self._committer = committer
        self.tenant_id = tenant_id
        self.run_id = run_id
        self.owner = owner
        self.records: dict[str, CallRecord] = {}
        stored: int | None = 0  # the stored text's length, while every entry read has it
        for entry in entries:
            _fold_into(self.records, entry)
            if stored is not None:
                stored = None if entry.text is None else stored + len(entry.text)
        self.limits = limits or Limits()
        self._buffer: list[JournalEntry] = []
        self._run_bytes = stored  # else read from the store when a quota needs it
        self._tenant_bytes: int | None = None
        self.bytes_added = 0  # by this execution

    def admit(self, value: Any, where: str, what: str, *, size: int | None = None) -> int:
        """The size of `value` (see `value_size`) once it is within `max_value_bytes`,
        `max_value_depth` and what the run's and tenant's journal quotas leave; else
        `LimitExceeded`, and nothing should be called or written with it. `size`: what
        `value_size` already gave for this value (it is not measured again)."""
        limits = self.limits
        if size is None:
            size = value_size(value, limits, where, what)
        if limits.max_run_journal_bytes is not None:
            if self._run_bytes is None:
                self._run_bytes = self.store.journal_bytes(self.tenant_id, self.run_id)
            used = self._run_bytes + self.bytes_added
            if used + size > limits.max_run_journal_bytes:
                raise LimitExceeded("max_run_journal_bytes", limits.max_run_journal_bytes,
                                    where, f"{what} ({size} bytes) would take the journal of "
                                    f"run {self.run_id!r} past its quota ({used} used)")
        if limits.max_tenant_journal_bytes is not None:
            if self._tenant_bytes is None:
                self._tenant_bytes = self.store.journal_bytes(self.tenant_id)
            used = self._tenant_bytes + self.bytes_added
            if used + size > limits.max_tenant_journal_bytes:
                raise LimitExceeded("max_tenant_journal_bytes",
                                    limits.max_tenant_journal_bytes, where,
                                    f"{what} ({size} bytes) would take the journals of "
                                    f"tenant {self.tenant_id!r} past their quota "
                                    f"({used} used)")
        return size

    def check_lease(self) -> None:
        """Raise `LeaseLost` unless this worker surely still holds the run's lease. The
        executors call it right before each tool call starts: a worker frozen past its
        lease must not start a call that another worker may have completed meanwhile."""
        if self._check_lease is not None:
            self._check_lease()

    def record(self, key: str) -> CallRecord | None:
        return self.records.get(key)

    def add(self, key: str, kind: str, data: Any = None, *, attempt: int = 0,
            tool: str | None = None, hashed_args: str | None = None) -> None:
        """Buffer an entry; it is durable only after the next `flush()`."""
        text: str | None  # once: the store writes this text
        if type(data) is int:
            text = int.__repr__(data)
        elif data is None:
            text = "null"
        else:
            try:
                text = _encode(data)
            except ValueError:  # NaN: the store refuses the entry, naming it, at the flush
                text = None
        entry = _new_entry(key, kind, data, attempt, tool, hashed_args, time.time(), text)
        if text is not None:
            self.bytes_added += len(text)
        self._buffer.append(entry)
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = CallRecord(key)
        record.apply(entry)

    def flush(self) -> None:
        """Commit the buffered entries in one fenced store transaction."""
        if self._buffer:
            buffered, self._buffer = self._buffer, []
            self.store.append_journal(self.tenant_id, self.run_id, self.owner, buffered)
            self._traced(buffered)

    async def commit(self) -> None:
        """`flush()`, sharing the transaction with other runs' writes when the engine runs
        several at once (see `GroupCommitter`); returns once the entries are committed."""
        if self._committer is None or not self._committer.shared:
            self.flush()
        elif self._buffer:
            buffered, self._buffer = self._buffer, []
            await self._committer.write(JournalAppend(self.tenant_id, self.run_id, self.owner,
                                                     buffered))
            self._traced(buffered)

    def commit_blocking(self) -> None:
        """`commit()` for a thread that is no event loop's (a code plan's calls): blocks
        until the entries are committed, with other runs' writes when several execute."""
        if self._committer is None or not self._committer.shared:
            self.flush()
        elif self._buffer:
            buffered, self._buffer = self._buffer, []
            self._committer.write_blocking(JournalAppend(self.tenant_id, self.run_id,
                                                         self.owner, buffered))
            self._traced(buffered)

    @property
    def last_waits_for_end(self) -> bool:
        """Whether the entries left at an execution's end may be committed with the run's
        end (not while traced: each commit is a span inside the execution's)."""
        return progress.tracer is None

    def buffered(self) -> list[JournalEntry]:
        """The entries not committed yet, for the caller to commit with the run's end
        (`RunEnd.entries`: one transaction for both); then `committed(entries)`."""
        return list(self._buffer)

    def committed(self, entries: list[JournalEntry]) -> None:
        """Entries from `buffered()` were committed: they leave the buffer."""
        if entries:
            del self._buffer[:len(entries)]
            self._traced(entries)

    def _traced(self, committed: list[JournalEntry]) -> None:
        """Tell the tracer (if any) of one scheduling round's commit."""
        if progress.tracer is not None:
            progress.tracer.commit(self.tenant_id, self.run_id,
                                   [entry.kind for entry in committed])
