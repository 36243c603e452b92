"""The `Store` protocol: runs, pinned plans and the journal, scoped by tenant.

The store knows nothing of plans beyond JSON text. Every row carries a tenant id and every
method filters by it, so tenant isolation never needs a migration. Each method states its
atomicity; a backend meets it its own way (a SQLite transaction, a PostgreSQL row lock) and
one contract test suite checks every backend.

Leases: exactly one worker executes a run at a time. A worker takes the lease with
`acquire_lease` (compare-and-set), renews it while it works, and every journal write is
fenced by it: a worker whose lease was taken over cannot write another result.

Queue. `submit_run` stores a run as "queued" and returns at once; workers take runs with
`claim_run`, which also finds due waiting runs and runs whose worker died.

Waits. A run that must wait (an approval, an event, a timer) records a `WaitRecord` per
wait with `put_waits`, then `finish_run(status="waiting", wake_at=...)` releases it: from then
on it is only rows. The outside world answers with `decide_wait` and `send_event`, each of
which makes the waiting run due at once (`wake_at = now`), and a worker finds it with
`due_runs`, takes its lease and replays it. The worker journals each outcome and marks the
wait `consumed`; an outcome it has not consumed keeps the run due (see `finish_run`), so a
decision that lands while a worker is still executing is never slept through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from agentflow.store.records import (
    FINISHED_STATUSES,
    WAIT_OUTCOMES,
    Claim,
    EventRecord,
    GroupWrite,
    JournalAppend,
    JournalEntry,
    NewRun,
    PlanName,
    RunEnd,
    RunRecord,
    RunStatus,
    StoredPlan,
    TokenRecord,
    WaitKind,
    WaitRecord,
    WaitStatus,
)

__all__ = [
    "FINISHED_STATUSES",
    "JOURNAL_PAGE",
    "WAIT_OUTCOMES",
    "Claim",
    "EventRecord",
    "GroupWrite",
    "JournalAppend",
    "JournalEntry",
    "NewRun",
    "PlanName",
    "RunEnd",
    "RunRecord",
    "RunStatus",
    "Store",
    "StoredPlan",
    "TokenRecord",
    "WaitKind",
    "WaitRecord",
    "WaitStatus",
    "iter_journal",
]


class Store(Protocol):
    """Persistence for runs, pinned plans and journals. All methods are thread-compatible:
    a store object may be shared by the threads of one process."""

    url: str

    def put_plan(self, plan: StoredPlan) -> None:
        """Insert the plan unless a plan with the same tenant and hash exists (idempotent)."""

    def get_plan(self, tenant_id: str, plan_hash: str) -> StoredPlan | None:
        """The pinned plan, or None."""

    def create_run(
        self, run: RunRecord, plan: StoredPlan, owner: str, lease_seconds: float, *,
        cap: int | None = None,
    ) -> tuple[RunRecord, bool]:
        """Atomically pin the plan and insert the run leased to `owner`, unless a run with
        this tenant and id exists. Returns (the stored run, True if this call created it);
        an existing run is returned unchanged and not leased. With `cap`, a new run is
        refused (`TooManyRuns`, nothing written) while the tenant has `cap` runs holding a
        lease, counted atomically with the insert: concurrent creations and claims, in any
        process, never take the tenant past `cap`."""

    def repin_plan(self, tenant_id: str, run_id: str, owner: str, plan: StoredPlan) -> None:
        """Atomically, only if `owner` holds the run's lease (else `LeaseLost`, nothing
        written): insert `plan` unless the tenant has a plan with its hash, and pin the run
        and its waits to it. For a run started before its plan was whole (a streamed plan);
        the plan it was pinned to before stays stored. `ValueError` for another tenant's plan."""

    def get_run(self, tenant_id: str, run_id: str) -> RunRecord | None:
        """The run, or None."""

    def list_runs(
        self,
        tenant_id: str,
        status: str | None = None,
        plan_hash: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        plan_name: str | None = None,
    ) -> list[RunRecord]:
        """Runs of the tenant, newest first (ties by run id, descending), optionally
        filtered (`plan_name`: started by that registered name); `before` (created_at,
        run_id) starts after that run (a page cursor)."""

    def due_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Waiting runs whose `wake_at` is at or before `now`, earliest first, at most
        `limit`; of one tenant, or of every tenant (`None`, for a timer scheduler). An index
        look-up whose cost does not grow with the number of runs waiting for later."""

    def orphaned_runs(
        self, now: float, limit: int = 100, tenant_id: str | None = None
    ) -> list[RunRecord]:
        """Runs still "running" with no lease or a lease expired before `now`: their worker
        crashed or hung, and any worker may take them over; of one tenant, or of all
        (`tenant_id=None`). A run whose `wake_at` is after `now` (a failed execution's
        backoff) is left for later. Cost grows with the running runs only, never the
        waiting ones."""

    def acquire_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float,
        now: float, take_over_from: str | None = None,
    ) -> bool:
        """Atomically lease an unfinished run to `owner` if it holds no lease, its lease
        expired before `now`, the lease is already `owner`'s, or it is held by exactly
        `take_over_from` (a holder the caller knows is dead), and set its status "running"
        (a waiting run being resumed shows as running). True if `owner` holds it now."""

    def renew_lease(
        self, tenant_id: str, run_id: str, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Extend `owner`'s lease; False (and no change) if `owner` no longer holds it."""

    def renew_leases(
        self, leases: list[tuple[str, str, str]], lease_seconds: float, now: float
    ) -> set[tuple[str, str, str]]:
        """`renew_lease` for many `(tenant_id, run_id, owner)` leases at once, in one
        statement per few hundred leases (one engine renews every lease it holds this
        way); returns the leases still held (now renewed)."""

    def append_journal(
        self, tenant_id: str, run_id: str, owner: str, entries: list[JournalEntry]
    ) -> None:
        """Append `entries` in order, atomically and durably (committed when this returns),
        only if `owner` holds the run's lease; otherwise raise `LeaseLost` and write nothing.
        Each entry gets the run's next `seq`; an entry whose `at` is 0 is stamped with the
        store's clock."""

    def write_group(self, writes: list[GroupWrite]) -> list[Any]:
        """Several runs' writes in one transaction: one commit (one fsync) for all. Each
        write does what its method would (`NewRun`: `create_run`, `JournalAppend`:
        `append_journal`, `RunEnd`: `finish_run`), fenced by its own lease. One answer per
        write, in order: `(the stored run, created)` for a `NewRun`, None for the others,
        or the exception a write raised (`LeaseLost`, `StoreError` for data that is not
        JSON): such a write wrote nothing, and the others are committed."""

    def read_journal(self, tenant_id: str, run_id: str) -> list[JournalEntry]:
        """All journal entries of the run in `seq` order."""

    def read_journal_page(self, tenant_id: str, run_id: str, after_seq: int,
                          limit: int) -> list[JournalEntry]:
        """At most `limit` journal entries of the run with `seq > after_seq`, in `seq`
        order: a resume folds the journal page by page, never holding all of it."""

    def journal_bytes(self, tenant_id: str, run_id: str | None = None) -> int:
        """The size of the journal data stored for the run (or, with `run_id=None`, for
        all of the tenant's runs), in characters of JSON text: what the journal quotas
        (`Limits.max_run_journal_bytes`, `max_tenant_journal_bytes`) count."""

    def finish_run(
        self, tenant_id: str, run_id: str, owner: str, status: RunStatus,
        outputs: Any = None, error: dict[str, Any] | None = None,
        wake_at: float | None = None, entries: list[JournalEntry] | None = None,
    ) -> None:
        """Atomically append the last `entries`, set the run's status, outputs, error and
        wake-up time, and release `owner`'s lease; `LeaseLost` (nothing written) if `owner`
        no longer holds it.

        A run finished as "waiting" that already has something to react to (a wait whose
        outcome in `WAIT_OUTCOMES` is not consumed, or an unconsumed event a pending event
        wait is named for, both arrived while it was executing) gets `wake_at = min(wake_at,
        now)` in the same transaction, so it is due at once instead of sleeping through it."""

    def put_waits(
        self, tenant_id: str, run_id: str, owner: str, waits: list[WaitRecord]
    ) -> None:
        """Atomically, only if `owner` holds the run's lease (else `LeaseLost`, nothing
        written): insert each new wait (`created_at` 0 means now), and for a `wait_id` the
        run already has, update status, decision, consumed, decided_at and expires_at.

        A wait that is no longer pending keeps its outcome: an update to another status
        (except "stale") raises `WaitConflict` and writes nothing, so a decision made after
        the worker read the wait is never overwritten. Every record must belong to this
        tenant and run (`ValueError`)."""

    def list_waits(
        self, tenant_id: str, run_id: str | None = None, status: str | None = None,
        limit: int = 1000,
    ) -> list[WaitRecord]:
        """The tenant's waits, oldest first, optionally of one run and one status; at most
        `limit`. Listing a tenant's pending waits is an index range scan."""

    def decide_wait(
        self, tenant_id: str, run_id: str, wait_id: str, status: WaitStatus,
        decision: dict[str, Any] | None, now: float,
        *, kinds: tuple[WaitKind, ...] = ("approval",),
    ) -> WaitRecord:
        """Decide a pending wait: set its `status` (one of `WAIT_OUTCOMES`), `decision` and
        `decided_at = now` and, if the run is "waiting", its `wake_at = min(wake_at, now)`,
        all in one write transaction. Returns the updated wait.

        Refused with nothing changed: `RunNotFound` (no such run for this tenant),
        `PendingNotFound` (no wait `wait_id` of one of `kinds`), `StaleDecision` (status
        "stale"), `DecisionExpired` (status "expired", or `expires_at < now`),
        `AlreadyDecided` (any other status but "pending"; says what, by whom and when),
        `RunFinished` (the wait is pending but the run is finished). The checks and the write
        are one transaction, so of two racing decisions exactly one wins."""

    def send_event(
        self, tenant_id: str, run_id: str, name: str, payload: Any, now: float
    ) -> int:
        """Record an event for the run and return its `seq`; in the same transaction, a
        "waiting" run with a pending event wait for `name` gets `wake_at = min(wake_at, now)`.
        Events are kept until consumed, so one sent before the run waits is never lost.
        `RunNotFound` or `RunFinished` (completed, failed, cancelled): nothing written."""

    def take_event(
        self, tenant_id: str, run_id: str, owner: str, name: str, key: str, now: float
    ) -> EventRecord | None:
        """Atomically, only if `owner` holds the run's lease (else `LeaseLost`): the event
        already consumed by call position `key` if there is one (idempotent on replay, whatever
        its name, so a caller can detect a changed wait); else the oldest unconsumed event
        named `name`, marked consumed by `key` at `now`; else None. Each event is taken once."""

    def list_events(self, tenant_id: str, run_id: str) -> list[EventRecord]:
        """All events of the tenant's run in `seq` order (empty for an unknown run)."""

    def cancel_run(self, tenant_id: str, run_id: str, reason: str, now: float) -> RunRecord:
        """Atomically set the run "cancelled" (error `{"type": "Cancelled", "message":
        reason}`, no wake-up) and mark its pending waits "cancelled"; returns the run.
        Allowed while a worker holds the lease: the lease is cleared, so that worker's next
        fenced write raises `LeaseLost` and it stops. `RunNotFound`; `RunFinished` if the run
        is already completed, failed or cancelled (nothing changed)."""

    def put_token(self, token: TokenRecord) -> None:
        """Insert a new API token record (`StoreError` if its hash or id exists)."""

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token whose SHA-256 is `token_hash` (revoked or not), or None: the one look-up
        that is not by tenant, since the token is what names the tenant."""

    def list_tokens(self, tenant_id: str | None = None) -> list[TokenRecord]:
        """The tokens of one tenant, or of every tenant, oldest first."""

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Atomically mark the token revoked at `now`; False if no unrevoked token has this id."""

    def secret(self, tenant_id: str, name: str, make: Callable[[], str]) -> str:
        """The tenant's secret `name`; the first call stores `make()` (atomically: of two
        racing first calls, both return the value stored first)."""
    def submit_run(self, run: RunRecord, plan: StoredPlan) -> tuple[RunRecord, bool]:
        """Atomically pin the plan and insert the run as "queued" (no lease, `wake_at` its
        submission time) unless a run with this tenant and id exists, and wake idle
        workers. Returns (the stored run, True if this call created it)."""

    def claim_run(
        self, owner: str, lease_seconds: float, now: float, *, tenant_id: str | None = None,
        after_tenant: str = "", tenant_cap: int | None = None,
    ) -> RunRecord | None:
        """Atomically lease one runnable run to `owner` and return it (None if there is
        none). Runnable: a waiting run that is due or a run whose lease expired (earliest
        first), else the oldest "queued" run (it becomes "running") of the first tenant
        after `after_tenant` that has one, wrapping around, so tenants take turns. Only
        `tenant_id`'s runs if given. A tenant with as many runs holding a lease (an expired
        one counts until its run is taken over, which needs no room) as its cap is passed
        over: its cap is its stored policy's `max_concurrent_runs` or `tenant_cap`,
        whichever is lower; it holds across every claimer of the store. Concurrent claims
        never return the same run."""

    def claim(
        self, owner: str, lease_seconds: float, now: float, *, tenant_id: str | None = None,
        after_tenant: str = "", tenant_cap: int | None = None,
    ) -> Claim | None:
        """`claim_run` (the same choice, lease and caps), returning the claimed run with its
        plan and its tenant's policy, read atomically with the claim."""

    def next_wake_at(self) -> float | None:
        """The earliest `wake_at` of any waiting run, or None (an index look-up)."""

    def wait_for_run(self, tenant_id: str, run_id: str, statuses: frozenset[str],
                     timeout: float) -> RunRecord | None:
        """Block until the run is settled (its status is in `statuses` and no worker holds
        its lease) and return it; None after `timeout` seconds; `RunNotFound` for an
        unknown run."""

    def wait_for_work(self, timeout: float) -> bool:
        """Block until new work may be runnable (a submission, decision, event or released
        run) or `timeout` passes; True if a notification said so, False on timeout."""

    def put_plan_version(self, tenant_id: str, name: str, plan: StoredPlan) -> bool:
        """Atomically keep `plan` and make it the current version of the tenant's plan
        `name` (a version is a plan hash; putting an older one again makes it current).
        False, and nothing changed, if it already is current."""

    def current_plan_version(self, tenant_id: str, name: str) -> str | None:
        """The hash of the current version of the tenant's plan `name`, or None."""

    def has_plan_version(self, tenant_id: str, name: str, plan_hash: str) -> bool:
        """Whether `plan_hash` is a version of the tenant's plan `name`."""

    def plan_versions(self, tenant_id: str, name: str) -> list[tuple[str, float]]:
        """(hash, created_at) of each version of the tenant's plan `name`, newest first."""

    def plan_names(self, tenant_id: str) -> list[PlanName]:
        """The tenant's registered plan names in name order, with their current version."""

    def delete_plan_version(self, tenant_id: str, name: str, plan_hash: str) -> None:
        """Atomically remove a version of `name` (and the plan, if nothing else refers to
        it). `PlanNotFound`; `PlanInUse`, nothing changed, while an unfinished run is pinned
        to it."""

    def put_policy(self, tenant_id: str, policy: dict[str, Any]) -> None:
        """Set the tenant's policy (a JSON object; the last write wins)."""

    def get_policy(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's policy, or None."""

    def get_run_and_policy(
        self, tenant_id: str, run_id: str,
    ) -> tuple[RunRecord | None, dict[str, Any] | None]:
        """(the run or None, the tenant's policy or None) in one statement: starting or
        resuming a run needs both, and both as they are now (neither is cached)."""

    def put_charge(self, tenant_id: str, run_id: str, key: str, attempt: int, tokens: int,
                   cost_usd: float) -> None:
        """Record the running total that one call attempt reported spending (idempotent:
        a later write for the same attempt replaces it)."""

    def charged(self, tenant_id: str, run_id: str) -> tuple[int, float]:
        """(tokens, cost in USD) the run's call attempts reported spending."""

    def count_leased(self, tenant_id: str) -> int:
        """How many of the tenant's runs hold a lease (executing; an expired lease counts
        until its run is taken over, as in `claim_run`'s cap)."""

    def prune_runs(self, finished_before: float, statuses: Iterable[str], *, limit: int = 500,
                   tenant_id: str | None = None, dry_run: bool = False,
                   ) -> list[tuple[str, str]]:
        """Atomically delete at most `limit` runs, oldest first, with a finished status in
        `statuses` and no change since `finished_before`, with their journal, waits and
        events, and the plans nothing refers to any more; of one tenant or all. The
        (tenant, run id) of each; with `dry_run`, nothing is deleted."""

    def get_trace(self, tenant_id: str, run_id: str) -> str | None:
        """The W3C traceparent kept by `put_trace` for the tenant's run, or None."""

    def put_trace(self, tenant_id: str, run_id: str, traceparent: str) -> None:
        """Keep the traceparent of the run's latest traced execution (replacing the last),
        so the next execution, in any process, can link to it."""

    def close(self) -> None:
        """Release connections."""


JOURNAL_PAGE = 1000
"""Entries per page when a journal is read page by page."""


def iter_journal(store: Store, tenant_id: str, run_id: str,
                 page: int = JOURNAL_PAGE) -> Iterator[JournalEntry]:
    """The run's journal entries in `seq` order, read `page` entries at a time."""
    after = 0
    while True:
        entries = store.read_journal_page(tenant_id, run_id, after, page)
        yield from entries
        if len(entries) < page:
            return
        after = entries[-1].seq
