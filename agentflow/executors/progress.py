"""Progress events: what an executor reports while it works (for CLIs and notebooks).

Observers are called on the executor's thread and must return quickly; an observer that
raises is ignored rather than allowed to break a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["call_started", "call_succeeded", "call_failed", "call_retrying",
                    "step_settled", "waiting", "run_finished"]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    run_id: str
    step_id: str | None = None
    key: str | None = None
    status: str | None = None
    attempt: int = 0
    detail: Any = None
    at: float = field(default_factory=time.time)


Observer = Callable[[ProgressEvent], None]


def notify(observer: Observer | None, event: ProgressEvent) -> None:
    """Tell the observer, never letting its failure reach the run."""
    if observer is None:
        return
    try:
        observer(event)
    except Exception:
        return
