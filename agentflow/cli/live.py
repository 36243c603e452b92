"""The live step table of `run` and `resume`, fed by the engine's progress events.

The engine calls the observer on its own thread while rich redraws on another, so every
read and write of the board's state holds one lock.

Steps that had finished before this execution (a re-run or a resume) show as done, marked
"replayed". A board of nothing but pending steps stays blank until the engine reports its
first event, so an error found before anything runs (bad inputs) prints no table.
Attempts are written one way everywhere: the number of calls started (all items of a
foreach step together), with the items in a column of their own.
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
    items: int | None = None
    replayed: bool = False


class StepBoard:
    """Each step's status, attempts, retries and elapsed time, as a rich table."""

    def __init__(self, steps: Iterable[StepResult]) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        for step in steps:
            done = step.status in _DONE
            self._rows[step.id] = _Row(step.status, step.attempts, started=step.started_at,
                                       finished=step.finished_at, items=step.items,
                                       note="replayed" if done else (step.error or ""),
                                       replayed=done)
        self._visible = any(row.replayed for row in self._rows.values())

    def observe(self, event: ProgressEvent) -> None:
        """The engine's observer: update the step the event is about."""
        if event.step_id is None:
            return
        with self._lock:
            self._visible = True
            row = self._rows.setdefault(event.step_id, _Row())
            key = event.key or event.step_id
            if key != event.step_id:
                row.items = max(row.items or 0, len(row.calls) + (key not in row.calls))
            if event.kind == "call_started":
                row.replayed = False
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
                    "replayed" if row.replayed else
                    "" if row.status == "succeeded" else row.note)

    def __rich__(self) -> Table | Text:
        now = time.time()
        table = Table(box=None, pad_edge=False)
        for column, justify in (("step", "left"), ("status", "left"), ("attempts", "right"),
                                ("items", "right"), ("retries", "right"), ("elapsed", "right"),
                                ("", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        with self._lock:
            if not self._visible:
                return Text("")
            for sid, row in self._rows.items():
                attempts = max(row.previous_attempts, sum(row.calls.values()))
                end = row.finished or (now if row.status in ("running", "waiting") else None)
                elapsed = "" if row.started is None or end is None else (
                    f"{end - row.started:.1f}s")
                table.add_row(sid, status_text(row.status), str(attempts) if attempts else "",
                              "" if row.items is None else str(row.items),
                              str(row.retries) if row.retries else "", elapsed,
                              Text(row.note, style="dim"))
        return table


_DONE = frozenset({"succeeded", "failed", "skipped", "rejected"})
"""Step statuses that mean the step finished in an earlier execution."""


@contextmanager
def live_board(console: Console, steps: Iterable[StepResult]) -> Iterator[Observer]:
    """Show the board while the block runs; yields the observer to pass to the engine."""
    board = StepBoard(steps)
    with Live(board, console=console, refresh_per_second=8):
        yield board.observe
    if not console.is_terminal:
        console.line()  # rich ends a live display with a newline on terminals only
