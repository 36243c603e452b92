"""The facade: validate, start, resume, decide and inspect runs on one store.

`Engine` owns a store. Each execution takes the run's lease under a fresh worker id, so two
executions of one run never overlap (two threads, two processes or two machines), and a
run whose previous worker died is taken over.

`execute_stream` starts a plan while a model still writes it (see `engine.streaming`).
Crash semantics: a streamed run killed after its whole plan arrived is pinned to that plan
and resumes like any run. One killed while its plan was streaming is pinned to the
streaming marker only: `resume` refuses it, and `execute_stream` with the same `run_id`
streams a plan again, replaying the journal for the steps it already ran (journal keys are
step ids; an id whose call now differs raises `NonDeterminismError`).

`Engine` is put together from its parts: `base.EngineBase` (its state and reading runs),
`running.Running` (execute, stream, resume), `queueing.Queueing` (submit, wait and what
workers call) and `deciding.Deciding` (approvals, events, cancel).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from agentflow.engine.deciding import Deciding
from agentflow.engine.options import DEFAULT_TENANT, ToolsArg, run_sync
from agentflow.engine.queueing import SETTLED_STATUSES, Queueing
from agentflow.engine.running import Feed
from agentflow.store import FINISHED_STATUSES

PRUNE_BATCH = 500
"""Runs one `prune` transaction deletes at most."""
PRUNE_DRY_RUN_LIMIT = 1_000_000
"""Runs a dry run of `prune` lists at most."""


class Engine(Queueing, Deciding):
    """Runs plans durably on one store (`sqlite:///path.db`, a path, or a `Store`).

    `max_inline_wait` is the longest wait (a timer, a soon-to-expire approval) an execution
    sits out in-process; longer waits end the execution with the run "waiting", holding
    nothing but rows, and a worker (`run_due`) or `resume` continues it later.
    `failure_policy` caps runs whose executions keep failing (see `engine.failures`).
    Runs executing at once in one engine (`aexecute` under `asyncio.gather`, a worker's
    concurrency) share their journal commits: a write waits at most `group_commit_window`
    seconds for other runs' writes to join its transaction (see `GroupCommitter`).

    `isolation="process"` (the default) runs code-plan code in isolate processes from
    `isolates` (the process's shared pool by default); `"none"` runs it in this process,
    for trusted code and tests only.
    """

    def prune(self, *, older_than: timedelta | float,
              status: str | Iterable[str] = tuple(sorted(FINISHED_STATUSES)),
              tenant: str | None = None, dry_run: bool = False,
              batch: int = PRUNE_BATCH) -> list[tuple[str, str]]:
        """Delete the finished runs (`status`: some of completed, failed, cancelled) that
        last changed more than `older_than` ago (a timedelta or seconds), with their
        journal, waits and events, and the plans no run or registry entry refers to any
        more; of one tenant, or of all. Each batch of at most `batch` runs is one short
        write transaction, so other writers wait for one batch at most. Returns the
        (tenant, run id) of each run deleted, or with `dry_run` that would be."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"older_than must be a timedelta or seconds >= 0, not "
                             f"{older_than!r}")
        statuses = (status,) if isinstance(status, str) else tuple(status)
        before = time.time() - seconds
        if dry_run:
            return self.store.prune_runs(before, statuses, limit=PRUNE_DRY_RUN_LIMIT,
                                         tenant_id=tenant, dry_run=True)
        deleted: list[tuple[str, str]] = []
        while True:
            done = self.store.prune_runs(before, statuses, limit=batch, tenant_id=tenant)
            deleted += done
            if len(done) < batch:
                return deleted


__all__ = ["DEFAULT_TENANT", "SETTLED_STATUSES", "Engine", "Feed", "ToolsArg", "run_sync"]
