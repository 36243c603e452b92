"""The `Store` protocol: runs, pinned plans and the journal, scoped by tenant.

The store knows nothing of plans beyond JSON text. Every row carries a tenant id and every
method filters by it, so tenant isolation never needs a migration. Each method states its
atomicity; a backend meets it its own way (a SQLite transaction, a PostgreSQL row lock) and
one contract test suite checks every backend.

Leases: exactly one worker executes a run at a time. A worker takes the lease with
`acquire_lease` (compare-and-set), renews it while it works, and every journal write is
fenced by it: a worker whose lease was taken over cannot write another result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

RunStatus = Literal["running", "waiting", "completed", "failed", "cancelled"]
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class StoredPlan:
    """A plan pinned by the hash of its canonical JSON text."""

    tenant_id: str
    plan_hash: str
    kind: str  # "graph" | "code"
    body: str
    created_at: float


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


class Store(Protocol):
    """Persistence for runs, pinned plans and journals. All methods are thread-compatible:
    a store object may be shared by the threads of one process."""

    url: str

    def put_plan(self, plan: StoredPlan) -> None:
        """Insert the plan unless a plan with the same tenant and hash exists (idempotent)."""

    def get_plan(self, tenant_id: str, plan_hash: str) -> StoredPlan | None:
        """The pinned plan, or None."""

    def create_run(
        self, run: RunRecord, plan: StoredPlan, owner: str, lease_seconds: float
    ) -> tuple[RunRecord, bool]:
        """Atomically pin the plan and insert the run leased to `owner`, unless a run with
        this tenant and id exists. Returns (the stored run, True if this call created it);
        an existing run is returned unchanged and not leased."""

    def get_run(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """The run, or None."""

    def list_runs(
        self,
        tenant_id: str,
        status: str | None = None,
        plan_hash: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs of the tenant, newest first, optionally filtered."""

    def due_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Waiting runs whose `wake_at` is at or before `now`, earliest first, at most
        `limit`; of one tenant, or of every tenant (`None`, for a timer scheduler). An index
        look-up whose cost does not grow with the number of runs waiting for later."""

    def acquire_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float,
        now: float, take_over_from: str | None = None,
    ) -> bool:
        """Atomically lease an unfinished run to `owner` if it holds no lease, its lease
        expired before `now`, the lease is already `owner`'s, or it is held by exactly
        `take_over_from` (a holder the caller knows is dead). True if `owner` holds it now."""

    def renew_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Extend `owner`'s lease; False (and no change) if `owner` no longer holds it."""

    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` in order, atomically and durably (committed when this returns),
        only if `owner` holds the run's lease; otherwise raise `LeaseLost` and write nothing.
        Each entry gets the run's next `seq`; an entry whose `at` is 0 is stamped with the
        store's clock."""

    def read_journal(self, tenant_id: str, run_id: str) -> list[JournalEntry]:
        """All journal entries of the run in `seq` order."""

    def finish_run(
        self, tenant_id: str, run_id: str, owner: str, status: RunStatus,
        outputs: Any = None, error: dict[str, Any] | None = None,
        wake_at: float | None = None, entries: list[JournalEntry] | None = None,
    ) -> None:
        """Atomically append the last `entries`, set the run's status, outputs, error and
        wake-up time, and release `owner`'s lease; `LeaseLost` (nothing written) if `owner`
        no longer holds it."""

    def close(self) -> None:
        """Release connections."""
