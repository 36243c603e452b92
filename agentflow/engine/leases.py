"""Who executes a run: worker identities, lease take-over and lease renewal.

A worker id is `host:pid:nonce`. A lease held by a process on this host that no longer
exists is taken over at once (a crashed run resumes without waiting for the lease to
expire); a lease held elsewhere is respected until it expires.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from agentflow.errors import RunLeased
from agentflow.store.base import RunRecord, Store

HOST = socket.gethostname()


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
    """Renews a lease from its own thread, so a long blocking tool call cannot let it lapse."""

    def __init__(self, store: Store, tenant_id: str, run_id: str, owner: str,
                 lease_seconds: float) -> None:
        self._args = (tenant_id, run_id, owner, lease_seconds)
        self._store = store
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._renew, name=f"lease:{run_id}",
                                        daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        tenant_id, run_id, owner, lease_seconds = self._args
        while not self._stop.wait(lease_seconds / 3):
            if not self._store.renew_lease(tenant_id, run_id, owner, lease_seconds, time.time()):
                self.lost = True
                return
