"""`Worker`: claims runnable runs from the engine's store and executes several at once.

There is no coordinator: any number of workers, on any number of machines, share one
store, and the store's claims decide who runs what (`Store.claim_run`: leases taken with
`FOR UPDATE SKIP LOCKED` on PostgreSQL, tenants in turn, a per-tenant cap). A claimed run
is executed under its lease, which the engine renews by heartbeat and which fences every
journal write; a worker that dies loses its leases when they expire, and any worker then
takes its runs over from the journal.

An idle worker sleeps until the store tells it of new work (PostgreSQL `LISTEN`), the next
timer is due, or `poll` seconds pass (the fallback, and all there is on SQLite). `stop`
(SIGTERM in the CLI) ends claiming; runs in progress get `drain` seconds to finish, and
the leases of those that do not are released so another worker continues them at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from agentflow.engine import Engine
from agentflow.engine.engine import ToolsArg
from agentflow.engine.leases import new_worker_id
from agentflow.engine.results import RunResult
from agentflow.errors import AgentflowError, LeaseLost
from agentflow.store import RunRecord

log = logging.getLogger("agentflow.worker")


class Worker:
    """Runs up to `concurrency` claimed runs at once, of `tenant` only if given, with at
    most `tenant_cap` runs of one tenant under a live lease across all workers."""

    def __init__(self, engine: Engine, *, tools: ToolsArg = None, tenant: str | None = None,
                 concurrency: int = 4, tenant_cap: int | None = None, poll: float = 1.0,
                 drain: float = 30.0,
                 on_result: Callable[[RunResult], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        if tenant_cap is not None and tenant_cap < 1:
            raise ValueError(f"tenant_cap must be >= 1, not {tenant_cap}")
        self.engine = engine
        self.tools = list(tools or [])
        self.tenant = tenant
        self.concurrency = concurrency
        self.tenant_cap = tenant_cap
        self.poll = poll
        self.drain = drain
        self.on_result = on_result
        self._slot_freed = threading.Event()
        self._running: dict[Future[None], tuple[RunRecord, str]] = {}
        self._leased_at = 0.0

    def run(self, stop: threading.Event, *, max_runs: int | None = None,
            once: bool = False) -> int:
        """Claim and execute runs until `stop` is set (or `max_runs` were claimed and
        finished, or, with `once`, nothing more is runnable); returns the runs claimed."""
        claimed = 0
        after_tenant = ""
        threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="af-worker")
        try:
            while not stop.is_set():
                while (len(self._running) < self.concurrency and not stop.is_set()
                       and (max_runs is None or claimed < max_runs)):
                    run = self._claim(after_tenant)
                    if run is None:
                        break
                    claimed += 1
                    after_tenant = run.tenant_id
                    self._start(threads, run)
                finished = max_runs is not None and claimed >= max_runs
                if (once or finished) and not self._running:
                    break
                self._idle(stop, full=len(self._running) >= self.concurrency or finished)
        finally:
            self._drain()
            threads.shutdown(wait=False, cancel_futures=True)
        return claimed

    def _claim(self, after_tenant: str) -> RunRecord | None:
        store = self.engine.store
        self._leased_at = time.monotonic()
        return store.claim_run(new_worker_id(), self.engine.lease_seconds, time.time(),
                               tenant_id=self.tenant, after_tenant=after_tenant,
                               tenant_cap=self.tenant_cap)

    def _start(self, threads: ThreadPoolExecutor, run: RunRecord) -> None:
        owner = run.lease_owner or ""
        future = threads.submit(self._execute, run, owner, self._leased_at)
        self._running[future] = (run, owner)
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[None]) -> None:
        self._running.pop(future, None)
        self._slot_freed.set()

    def _execute(self, run: RunRecord, owner: str, leased_at: float) -> None:
        try:
            result = self.engine.run_claimed(run, owner, leased_at=leased_at, tools=self.tools)
        except LeaseLost:
            log.info("run %r of tenant %r: lease lost (cancelled, or released at stop)",
                     run.run_id, run.tenant_id)
            return
        except AgentflowError as error:  # one broken run must not stop the worker
            log.warning("run %r of tenant %r cannot run here: %s (left to its lease's "
                        "expiry)", run.run_id, run.tenant_id, error)
            return
        except Exception:
            log.exception("run %r of tenant %r failed in the worker", run.run_id,
                          run.tenant_id)
            return
        if self.on_result is not None:
            self.on_result(result)

    def _idle(self, stop: threading.Event, *, full: bool) -> None:
        """Wait for a free slot (when full) or for work: a notification, the next timer,
        or `poll` seconds, whichever comes first."""
        if full:
            self._slot_freed.wait(self.poll)
            self._slot_freed.clear()
            return
        timeout = self.poll
        wake_at = self.engine.store.next_wake_at()
        if wake_at is not None:
            timeout = max(0.0, min(timeout, wake_at - time.time()))
        if timeout > 0 and not stop.is_set() and not self._slot_freed.is_set():
            self.engine.store.wait_for_work(timeout)
        self._slot_freed.clear()

    def _drain(self) -> None:
        """Give runs in progress `drain` seconds, then release the leases of the rest."""
        deadline = time.monotonic() + self.drain
        while self._running and time.monotonic() < deadline:
            self._slot_freed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._slot_freed.clear()
        for run, owner in list(self._running.values()):
            with contextlib.suppress(AgentflowError):
                self.engine.store.finish_run(run.tenant_id, run.run_id, owner, "running")
                log.info("released run %r of tenant %r", run.run_id, run.tenant_id)
