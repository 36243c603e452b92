"""The live step table of `run` and `resume`, fed by the engine's progress events.

The engine calls the observer on its own thread while rich redraws on another, so every
read and write of the board's state holds one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentflow.cli.render import short, status_text
from agentflow.engine import StepResult
from agentflow.executors.progress import Observer, ProgressEvent


@dataclass
class _Row:
    status: str = "pending"
    previous_attempts: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # call key -> attempt
    retries: int = 0
    started: float | None = None
    finished: float | None = None
    note: str = ""


class StepBoard:
    """Each step's status, attempts, retries and elapsed time, as a rich table."""

    def __init__(self, steps: Iterable[StepResult]) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        for step in steps:
            self._rows[step.id] = _Row(step.status, step.attempts, started=step.started_at,
                                       finished=step.finished_at, note=step.error or "")

    def observe(self, event: ProgressEvent) -> None:
        """The engine's observer: update the step the event is about."""
        if event.step_id is None:
            return
        with self._lock:
            row = self._rows.setdefault(event.step_id, _Row())
            key = event.key or event.step_id
            if event.kind == "call_started":
                row.status = "running"
                row.calls[key] = event.attempt
                row.started = event.at if row.started is None else min(row.started, event.at)
                row.finished = None
            elif event.kind in ("call_failed", "call_retrying"):
                if event.kind == "call_retrying":
                    row.retries += 1
                if isinstance(event.detail, dict):
                    row.note = short(f"{event.detail.get('type', 'Error')}: "
                                     f"{event.detail.get('message', '')}", 70)
            elif event.kind == "waiting":
                row.status = "waiting"
                detail = event.detail if isinstance(event.detail, dict) else {}
                row.note = short(str(detail.get("prompt") or detail.get("name")
                                     or f"{detail.get('kind', 'wait')}"), 70)
            elif event.kind == "step_settled":
                row.status = event.status or row.status
                row.finished = row.finished or event.at  # a replayed step keeps its time
                row.note = short(str(event.detail), 70) if event.detail else (
                    "" if row.status == "succeeded" else row.note)

    def __rich__(self) -> Table:
        now = time.time()
        table = Table(box=None, pad_edge=False)
        for column, justify in (("step", "left"), ("status", "left"), ("attempts", "right"),
                                ("retries", "right"), ("elapsed", "right"), ("", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        with self._lock:
            for sid, row in self._rows.items():
                attempts = max(row.previous_attempts, sum(row.calls.values()))
                items = f" ({len(row.calls)} calls)" if len(row.calls) > 1 else ""
                end = row.finished or (now if row.status in ("running", "waiting") else None)
                elapsed = "" if row.started is None or end is None else (
                    f"{end - row.started:.1f}s")
                table.add_row(sid, status_text(row.status),
                              f"{attempts}{items}" if attempts else "",
                              str(row.retries) if row.retries else "", elapsed,
                              Text(row.note, style="dim"))
        return table


@contextmanager
def live_board(console: Console, steps: Iterable[StepResult]) -> Iterator[Observer]:
    """Show the board while the block runs; yields the observer to pass to the engine."""
    board = StepBoard(steps)
    with Live(board, console=console, refresh_per_second=8):
        yield board.observe
    if not console.is_terminal:
        console.line()  # rich ends a live display with a newline on terminals only
