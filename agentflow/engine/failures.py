"""What an execution that ends with an error leaves behind: the lease given back, and a cap
on runs that fail the same way every time they are resumed (poison runs).

Without the cap, a run whose resume always raises (a result the store cannot hold, a
corrupt row, a bug one run trips over) stays resumable, and every worker round runs it
again. With it, each failed execution is counted in the run's row (its `error` while it is
unfinished), the run's next automatic try is pushed back (`wake_at`, doubling up to a
ceiling), and the `max_failures`-th failure in a row ends the run `failed` with a
`RunFailedRepeatedly` error that names the last error. An execution that ends normally
(completed, failed, waiting) clears the count. Ctrl-C and `SystemExit` are not failures of
the run: they release it and count nothing. A row that cannot be read (`CorruptRow`) fails
its run at once: it will not mend itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from agentflow.errors import CorruptRow, LeaseLost, StoreError
from agentflow.executors.calls import error_info
from agentflow.store import RunRecord, Store

log = logging.getLogger("agentflow")

FAILED_EXECUTION = "ExecutionFailed"
GAVE_UP = "RunFailedRepeatedly"
# Pauses between tries to give a lease back through transient store errors (locked, full).
RELEASE_PAUSES = (0.05, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class FailurePolicy:
    """How often a run may fail in a row before it ends `failed`, and how long a worker
    waits before it tries a failed run again (`backoff` seconds, doubling, at most
    `max_backoff`). `resume()` called by hand does not wait for the backoff."""

    max_failures: int = 5
    backoff: float = 1.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_failures, int) or self.max_failures < 1:
            raise ValueError(f"max_failures must be a whole number >= 1, "
                             f"not {self.max_failures!r}")
        if not self.backoff >= 0 or not self.max_backoff >= self.backoff:
            raise ValueError(f"backoff must be >= 0 and max_backoff >= backoff, not "
                             f"{self.backoff!r} and {self.max_backoff!r}")


def failures_so_far(run: RunRecord) -> int:
    """Executions of this unfinished run that failed in a row, as its row records them."""
    error = run.error or {}
    count = error.get("failures") if error.get("type") == FAILED_EXECUTION else 0
    return count if isinstance(count, int) else 0


def release_after_error(store: Store, run: RunRecord, owner: str, error: BaseException,
                        policy: FailurePolicy) -> None:
    """Give back `owner`'s lease on `run` after `error` ended its execution, counting the
    failure (see the module docstring). Transient store errors are retried for a moment, so
    a disk that was full or a lock held a little long does not leave the lease held until it
    expires; a lease already lost is left alone."""
    status: Any = "running"
    wake_at: float | None = None
    recorded = run.error if failures_so_far(run) else None  # an interrupt keeps the count
    if isinstance(error, CorruptRow):  # it will not mend itself: fail the run at once
        status = "failed"
        recorded = error_info(error)
    elif isinstance(error, Exception):
        failures = failures_so_far(run) + 1
        last = error_info(error)
        if failures >= policy.max_failures:
            status = "failed"
            recorded = {"type": GAVE_UP, "failures": failures, "last_error": last,
                        "message": f"run {run.run_id!r} failed {failures} times in a row; "
                                   f"last error: {last['type']}: {last['message']}"}
        else:
            pause = min(policy.backoff * 2 ** (failures - 1), policy.max_backoff)
            wake_at = time.time() + pause
            recorded = {"type": FAILED_EXECUTION, "failures": failures, "last_error": last,
                        "message": f"execution failed ({failures} of at most "
                                   f"{policy.max_failures}); a worker tries again after "
                                   f"{pause:g}s: {last['type']}: {last['message']}"}
    for pause in (*RELEASE_PAUSES, None):
        try:
            store.finish_run(run.tenant_id, run.run_id, owner, status, error=recorded,
                             wake_at=wake_at)
            return
        except LeaseLost:
            return
        except StoreError as store_error:
            if pause is None:
                log.error("run %r: cannot give its lease back (%s); another worker takes "
                          "it over when the lease expires", run.run_id, store_error)
                return
            time.sleep(pause)
