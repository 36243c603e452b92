"""The records the store keeps and returns: runs, plans, journal entries, waits, events,
tokens, and the writes `Store.write_group` takes. Plain frozen dataclasses, shared by every
backend and by the engine; `agentflow.store.base` re-exports them next to the protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "cancelled"]
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
WaitKind = Literal["approval", "event", "timer"]
WaitStatus = Literal[
    "pending", "approved", "rejected", "expired", "received", "fired", "stale", "cancelled"
]
# What a wait can turn into that the run must react to: the statuses `decide_wait` sets, and
# the ones a waiting run is woken for until the worker has consumed them.
WAIT_OUTCOMES: frozenset[str] = frozenset({"approved", "rejected", "expired", "received", "fired"})


@dataclass(frozen=True)
class StoredPlan:
    """A plan pinned by the hash of its canonical JSON text."""

    tenant_id: str
    plan_hash: str
    kind: str  # "graph" | "code"
    body: str
    created_at: float


@dataclass(frozen=True)
class PlanName:
    """A tenant's registered plan name: its current version (a plan hash), when that
    version was put, and how many versions the name has."""

    name: str
    version: str
    created_at: float
    versions: int


@dataclass(frozen=True)
class RunRecord:
    """One run as the store keeps it. JSON fields are already decoded."""

    tenant_id: str
    run_id: str
    plan_hash: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: Any = None
    error: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    wake_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    plan_name: str | None = None  # the registered name it was started by, if any
    # Why the row could not be read in full (its broken columns read as empty), else None.
    # Listing runs never fails on one bad row; executing such a run fails it.
    corrupt: str | None = None


@dataclass(frozen=True)
class Claim:
    """A run `Store.claim` leased, with what executing it reads first (fetched with the
    claim: one round trip on PostgreSQL). `plan`: its pinned plan (None if missing);
    `policy`: its tenant's stored policy, as `get_policy` answers; `started`: it was
    "queued" and this claim started it, so it has no journal entries and no waits yet."""

    run: RunRecord
    plan: StoredPlan | None
    policy: dict[str, Any] | None
    started: bool


@dataclass(frozen=True)
class JournalEntry:
    """One append-only journal event of a run.

    `key` names the call position (`build`, `test[3]`, `call#12` in a code plan); the
    events of one key, in `seq` order, tell its story: `intent` (about to call, with the
    arguments), then `result` or `error` (per attempt), or `skipped`, and so on. `seq` is
    assigned by the store when the entry is appended; entries passed in carry 0.
    """

    key: str
    kind: str
    data: Any = None
    attempt: int = 0
    tool: str | None = None
    args_hash: str | None = None
    at: float = 0.0
    seq: int = 0
    # `data` as the compact JSON text the store keeps, when the writer already has it (the
    # executors encode each entry once, for the journal quotas, and the store reuses it).
    text: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class NewRun:
    """A run to create, as one write of `Store.write_group` (see `Store.create_run`)."""

    run: RunRecord
    plan: StoredPlan
    owner: str
    lease_seconds: float


@dataclass(frozen=True)
class JournalAppend:
    """Journal entries to append, as one write of `Store.write_group` (see
    `Store.append_journal`)."""

    tenant_id: str
    run_id: str
    owner: str
    entries: list[JournalEntry]


@dataclass(frozen=True)
class RunEnd:
    """The end of an execution, as one write of `Store.write_group` (see
    `Store.finish_run`)."""

    tenant_id: str
    run_id: str
    owner: str
    status: RunStatus
    outputs: Any = None
    error: dict[str, Any] | None = None
    wake_at: float | None = None
    entries: list[JournalEntry] = field(default_factory=list)


GroupWrite = NewRun | JournalAppend | RunEnd


@dataclass(frozen=True)
class WaitRecord:
    """One thing a run waits for: a human approval, a named event or a timer.

    `wait_id` is chosen by the executor and unique within the run (`"deploy:3fa2c1"`); `key`
    is the journal call position that waits. An approval is bound to the pinned `plan_hash`,
    the step, the tool and `args_hash` (the exact arguments): when the arguments change, the
    executor marks it `stale` and asks anew. `expires_at` is an approval's expiry, a timer's
    due time or an event wait's timeout; `on_expiry` is what expiry counts as. `decision`
    holds what the outcome carries (`by`, `comment`, `reason`, edited `args`, `payload`, ...).
    `consumed` is True once the executor has journaled the outcome. `args_schema` is the
    tool's input schema, so edited arguments can be checked by an approver that has no tools.
    """

    tenant_id: str
    run_id: str
    wait_id: str
    key: str
    kind: WaitKind
    plan_hash: str
    step_id: str | None = None
    tool: str | None = None
    args: dict[str, Any] | None = None
    args_hash: str | None = None
    prompt: str | None = None
    approvers: list[str] | None = None
    event_name: str | None = None
    expires_at: float | None = None
    on_expiry: str | None = None
    status: WaitStatus = "pending"
    decision: dict[str, Any] | None = None
    consumed: bool = False
    created_at: float = 0.0
    decided_at: float | None = None
    args_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventRecord:
    """An event sent to a run: `seq` orders the run's events; `consumed_by` is the call
    position (journal key) that received it, None while nobody has."""

    seq: int
    name: str
    payload: Any
    sent_at: float
    consumed_by: str | None = None
    consumed_at: float | None = None


@dataclass(frozen=True)
class TokenRecord:
    """An API token as the store keeps it: the SHA-256 of the token (never the token),
    its public id, the tenant and role it is bound to, a name to recognise it by."""

    token_hash: str
    token_id: str
    tenant_id: str
    role: str
    name: str
    created_at: float
    revoked_at: float | None = None
