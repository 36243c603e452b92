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


class LeaseKeeper:
    """Renews a lease from its own thread, so a long blocking tool call cannot let it lapse,
    and tells the executor, before each call it starts, whether the lease is surely held.

    A renewal that fails with a `StoreError` (`database is locked`, a full disk for a
    moment) is retried every tenth of the lease: the store is usually fine again soon. The
    keeper also knows, by its own monotonic clock, until when the lease is surely held: the
    start of the last renewal that succeeded plus most of the lease. A process frozen past
    that moment (SIGSTOP, a C call holding the GIL, a store that kept failing) must assume
    another worker took the run over, so `check()` raises `LeaseLost` before it starts a
    call it may no longer own; the store refuses its late writes anyway (they are fenced).
    """

    SAFE_SHARE = 0.9  # of the lease: margin for the store's clock and the renewal's own time

    def __init__(self, store: Store, tenant_id: str, run_id: str, owner: str,
                 lease_seconds: float, *, leased_at: float | None = None) -> None:
        """`leased_at` is the `time.monotonic()` taken just before the lease was acquired."""
        self._args = (tenant_id, run_id, owner, lease_seconds)
        self._store = store
        self._stop = threading.Event()
        self.lost = False
        start = time.monotonic() if leased_at is None else leased_at
        self.held_until = start + lease_seconds * self.SAFE_SHARE
        self._thread = threading.Thread(target=self._renew, name=f"lease:{run_id}",
                                        daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease is surely still this worker's."""
        if self.lost or time.monotonic() >= self.held_until:
            _, run_id, owner, _ = self._args
            raise LeaseLost(run_id, owner)

    def _renew(self) -> None:
        tenant_id, run_id, owner, lease_seconds = self._args
        pause = lease_seconds / 3
        while not self._stop.wait(pause):
            started = time.monotonic()
            try:
                held = self._store.renew_lease(tenant_id, run_id, owner, lease_seconds,
                                               time.time())
            except StoreError as error:
                log.warning("renewing the lease on run %r failed, retrying: %s", run_id, error)
                pause = lease_seconds / 10
                continue
            if not held:
                self.lost = True
                return
            self.held_until = started + lease_seconds * self.SAFE_SHARE
            pause = lease_seconds / 3
