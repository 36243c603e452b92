"""`Worker`: claims runnable runs from the engine's store and executes several at once.

There is no coordinator: any number of workers, on any number of machines, share one
store, and the store's claims decide who runs what (`Store.claim`: leases taken with
`FOR UPDATE SKIP LOCKED` on PostgreSQL, tenants in turn, a per-tenant cap). A claimed run
is executed under its lease, which the engine renews by heartbeat and which fences every
journal write; a worker that dies loses its leases when they expire, and any worker then
takes its runs over from the journal.

An idle worker sleeps until the store tells it of new work (PostgreSQL `LISTEN`), the next
timer is due, or `poll` seconds pass (the fallback, and all there is on SQLite). A wake-up
sends one idle slot to claim, and a slot that claimed a run sends the next one (there may
be more), so a notification costs a claim per worker, not one per idle slot. `stop`
(SIGTERM in the CLI) ends claiming; runs in progress get `drain` seconds to finish, and
the leases of those that do not are released so another worker continues them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from agentflow.engine import Engine
from agentflow.engine.engine import ToolsArg
from agentflow.engine.leases import new_worker_id
from agentflow.engine.results import RunResult
from agentflow.errors import AgentflowError, LeaseLost
from agentflow.store import Claim, RunRecord

log = logging.getLogger("agentflow.worker")


class Worker:
    """Runs up to `concurrency` claimed runs at once, of `tenant` only if given. A tenant
    has at most its policy's `max_concurrent_runs` runs under a lease across all workers
    and engines of the store, and at most `tenant_cap` (a fleet-wide default and ceiling).

    Each of the `concurrency` slots is a thread that claims a run, executes it and claims
    the next, so claims overlap; an idle slot waits until it is sent to look (`_wake_one`)."""

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
        self._woken = threading.Condition()
        self._go = False  # one idle slot may look for work
        self._lock = threading.Lock()
        self._claimed = 0
        self._running: dict[int, tuple[RunRecord, str]] = {}
        self._released = False  # the drain released the runs held: a late claim lets go

    def run(self, stop: threading.Event, *, max_runs: int | None = None,
            once: bool = False) -> int:
        """Claim and execute runs until `stop` is set (or `max_runs` were claimed and
        finished, or, with `once`, nothing more is runnable); returns the runs claimed."""
        self._claimed = 0
        self._released = False
        slots = [threading.Thread(target=self._slot, args=(stop, max_runs, once),
                                  name=f"af-worker-{i}", daemon=True)
                 for i in range(self.concurrency)]
        for slot in slots:
            slot.start()
        try:
            while not stop.is_set() and any(slot.is_alive() for slot in slots):
                self._listen(stop, time.monotonic() + self._sleep())
                self._wake_one()  # a notification, the next timer or the poll: look again
        finally:
            self._drain(slots)
        return self._claimed

    def _listen(self, stop: threading.Event, until: float) -> None:
        """Listen for work until `until` (monotonic) or a notification, looking at `stop`
        every second."""
        while not stop.is_set() and (left := until - time.monotonic()) > 0:
            try:
                if self.engine.store.wait_for_work(min(left, 1.0)):
                    return
            except AgentflowError as error:  # the server restarts: poll until it is back
                log.warning("cannot listen for work: %s", error)
                stop.wait(min(left, 1.0))

    def _sleep(self) -> float:
        """Seconds until the next look: `poll`, or less if a timer is due sooner."""
        wake_at = self.engine.store.next_wake_at()
        if wake_at is None:
            return self.poll
        return max(0.0, min(self.poll, wake_at - time.time()))

    def _wake_one(self) -> None:
        """Send one idle slot to claim (if none waits, the next one to go idle looks once
        more before it sleeps)."""
        with self._woken:
            self._go = True
            self._woken.notify()

    def _idle(self, stop: threading.Event) -> None:
        """Wait until this slot is sent to look for work, or `stop`."""
        with self._woken:
            while not self._go and not stop.is_set():
                self._woken.wait()
            self._go = False

    def _slot(self, stop: threading.Event, max_runs: int | None, once: bool) -> None:
        loop = asyncio.new_event_loop()  # one for all the slot's runs (see `run_on`)
        asyncio.set_event_loop(loop)  # as `asyncio.run` does
        try:
            self._claim_and_execute(stop, max_runs, once, loop)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    def _claim_and_execute(self, stop: threading.Event, max_runs: int | None, once: bool,
                           loop: asyncio.AbstractEventLoop) -> None:
        after_tenant = ""
        while not stop.is_set():
            with self._lock:
                if max_runs is not None and self._claimed >= max_runs:
                    return
                self._claimed += 1  # reserved, so slots never claim past max_runs
            leased_at = time.monotonic()
            try:
                claimed = self.engine.store.claim(
                    new_worker_id(), self.engine.lease_seconds, time.time(),
                    tenant_id=self.tenant, after_tenant=after_tenant,
                    tenant_cap=self.tenant_cap)
            except AgentflowError as error:  # the store is unreachable for now
                log.warning("cannot claim a run: %s", error)
                claimed = None
            if claimed is None:
                with self._lock:
                    self._claimed -= 1
                if once:
                    return
                self._idle(stop)
                continue
            self._wake_one()  # there may be more: another idle slot looks too
            after_tenant = claimed.run.tenant_id
            self._execute(claimed, leased_at, loop)

    def _execute(self, claimed: Claim, leased_at: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        """Execute a claimed run with what its claim read (not read again)."""
        run, owner = claimed.run, claimed.run.lease_owner or ""
        me = threading.get_ident()
        with self._lock:  # held from here, unless the drain already let the others go
            late = self._released
            if not late:
                self._running[me] = (run, owner)
        if late:  # claimed while the worker stopped: let it go as the drain does
            self._release(run, owner)
            return
        try:
            result = self.engine.run_claimed(run, owner, leased_at=leased_at, tools=self.tools,
                                             claim=claimed, loop=loop)
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
        finally:
            self._running.pop(me, None)
        if self.on_result is not None:
            self.on_result(result)

    def _drain(self, slots: list[threading.Thread]) -> None:
        """Give runs in progress `drain` seconds, then release the leases of the rest."""
        with self._woken:
            self._woken.notify_all()  # idle slots see `stop`
        deadline = time.monotonic() + self.drain
        for slot in slots:
            slot.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._released = True
            held = list(self._running.values())
        for run, owner in held:
            self._release(run, owner)

    def _release(self, run: RunRecord, owner: str) -> None:
        """Give the run's lease up, so another worker continues it at once."""
        with contextlib.suppress(AgentflowError):
            self.engine.store.finish_run(run.tenant_id, run.run_id, owner, "running")
            log.info("released run %r of tenant %r", run.run_id, run.tenant_id)
