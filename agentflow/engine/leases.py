"""Who executes a run: worker identities, lease take-over and lease renewal.

A worker id is `host:pid:nonce`. A lease held by a process on this host that no longer
exists is taken over at once (a crashed run resumes without waiting for the lease to
expire); a lease held elsewhere is respected until it expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from agentflow.errors import LeaseLost, RunLeased, StoreError
from agentflow.store.base import RunRecord, Store

HOST = socket.gethostname()
log = logging.getLogger("agentflow")


def new_worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(owner: str) -> bool:
    """True only when `owner` names a process of this host that has exited."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def claim(store: Store, run: RunRecord, owner: str, lease_seconds: float) -> None:
    """Lease `run` to `owner`, taking over from a dead local holder; `RunLeased` otherwise."""
    now = time.time()
    holder = run.lease_owner
    take_over = holder if holder and holder != owner and holder_is_dead(holder) else None
    if store.acquire_lease(run.tenant_id, run.run_id, owner, lease_seconds, now, take_over):
        return
    current = store.get_run(run.tenant_id, run.run_id) or run
    raise RunLeased(run.run_id, current.lease_owner or "another worker",
                    current.lease_expires_at or now)


class HeldLease:
    """One lease an engine's `LeaseKeeper` renews; tells the executor, before each call it
    starts, whether the lease is surely still held."""

    __slots__ = ("held_until", "lost", "owner", "run_id", "seconds", "tenant_id")

    def __init__(self, tenant_id: str, run_id: str, owner: str, seconds: float,
                 held_until: float) -> None:
        self.tenant_id = tenant_id
        self.run_id = run_id
        self.owner = owner
        self.seconds = seconds  # the lease's length
        self.held_until = held_until  # by time.monotonic()
        self.lost = False

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease is surely still this worker's."""
        if self.lost or time.monotonic() >= self.held_until:
            raise LeaseLost(self.run_id, self.owner)


class LeaseKeeper:
    """Renews every lease one engine holds, from one thread and in one statement per round
    (`Store.renew_leases`), so a long blocking tool call cannot let a lease lapse, and a
    thousand runs executing at once cost one thread and one UPDATE every third of a lease,
    not a thousand of each.

    A round that fails with a `StoreError` (`database is locked`, a full disk for a moment)
    is retried every tenth of the lease: the store is usually fine again soon. Each lease
    also knows, by the monotonic clock, until when it is surely held: the start of the last
    renewal that succeeded plus most of the lease. A process frozen past that moment
    (SIGSTOP, a C call holding the GIL, a store that kept failing) must assume another
    worker took the run over, so `HeldLease.check()` raises `LeaseLost` before it starts a
    call it may no longer own; the store refuses its late writes anyway (they are fenced).
    The thread runs while the engine holds a lease: an idle engine has none.
    """

    SAFE_SHARE = 0.9  # of the lease: margin for the store's clock and the renewal's own time

    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: dict[int, HeldLease] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rounds = 0  # renewal rounds run (statements: one per few hundred leases)

    @contextmanager
    def hold(self, tenant_id: str, run_id: str, owner: str, lease_seconds: float, *,
             leased_at: float | None = None) -> Iterator[HeldLease]:
        """Keep renewing `owner`'s lease of `lease_seconds` on the run while in the block.
        `leased_at` is the `time.monotonic()` taken just before the lease was acquired."""
        start = time.monotonic() if leased_at is None else leased_at
        lease = HeldLease(tenant_id, run_id, owner, lease_seconds,
                          start + lease_seconds * self.SAFE_SHARE)
        with self._changed:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._held[id(lease)] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_forever, daemon=True,
                                                name="agentflow-leases")
                self._thread.start()
            self._changed.notify()
        try:
            yield lease
        finally:
            with self._changed:
                del self._held[id(lease)]
                if not self._held:
                    self._changed.notify()  # the thread can end now

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        thread = self._thread
        if thread is not None:
            thread.join()

    def _renew_forever(self) -> None:
        pause: float | None = None
        while True:
            with self._changed:
                if not self._held or self._closed:
                    self._thread = None  # the next lease held starts another
                    return
                if pause is None:
                    pause = min(lease.seconds for lease in self._held.values()) / 3
                deadline = time.monotonic() + pause
                while not self._closed and self._held \
                        and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)  # a lease held meanwhile does not hasten it
                if self._closed or not self._held:
                    continue
                leases = list(self._held.values())
            pause = self._renew(leases)

    def _renew(self, leases: list[HeldLease]) -> float | None:
        """Renew `leases` in one round (a statement per lease length and few hundred
        leases); the pause until the next round (None: a third of the shortest lease)."""
        if not leases:
            return None
        shortest = min(lease.seconds for lease in leases)
        started = time.monotonic()
        by_length: dict[float, list[HeldLease]] = {}
        for lease in leases:
            by_length.setdefault(lease.seconds, []).append(lease)
        try:
            for seconds, group in by_length.items():
                held = self._store.renew_leases(
                    [(lease.tenant_id, lease.run_id, lease.owner) for lease in group],
                    seconds, time.time())
                for lease in group:
                    if (lease.tenant_id, lease.run_id, lease.owner) in held:
                        lease.held_until = started + seconds * self.SAFE_SHARE
                    else:
                        lease.lost = True
        except StoreError as error:
            log.warning("renewing %d leases failed, retrying: %s", len(leases), error)
            return shortest / 10
        self.rounds += 1
        return None
