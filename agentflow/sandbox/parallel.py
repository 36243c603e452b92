"""The threads behind `parallel()`: one cap per execution, however deeply calls nest.

A pool per `parallel()` call multiplies threads when thunks call `parallel()` again (three
levels of 16 are 4,096 threads). Here one execution owns at most `limit - 1` helper threads,
and the thread that calls `parallel()` counts as the last one: it runs the thunks no helper
is free for itself, one after the other. Nothing ever waits for a free thread, so nesting
cannot deadlock.

Helpers start lazily, or all at once (`start_all`) before an isolate forbids new threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Task = Callable[[], None]


class ThunkThreads:
    """At most `limit - 1` helper threads for the thunks of one execution."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._free = threading.Semaphore(limit - 1)
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._closed = False

    def start_all(self) -> None:
        """Start every helper now (an isolate does this before it forbids new threads)."""
        with self._lock:
            while len(self._threads) < self.limit - 1:
                self._start()

    def try_submit(self, task: Task) -> bool:
        """Run `task` on a free helper; False when none is free (run it yourself then)."""
        if self._closed or not self._free.acquire(blocking=False):
            return False
        with self._lock:
            self._busy += 1
            try:
                if len(self._threads) < self._busy:
                    self._start()
            except RuntimeError:  # no more threads allowed: the caller runs the task
                self._busy -= 1
                self._free.release()
                return False
        self._tasks.put(task)
        return True

    def close(self) -> None:
        """Let the helpers end once their current task is done (they are not waited for)."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._tasks.put(None)

    def _start(self) -> None:
        thread = threading.Thread(target=self._serve, daemon=True,
                                  name=f"af-thunk-{len(self._threads) + 1}")
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            finally:
                with self._lock:
                    self._busy -= 1
                self._free.release()
