"""Group commit: the journal writes of many runs share one transaction and one fsync.

With the default `full` durability each commit costs an fsync, so one run per commit would
cap an engine at one step per fsync however many runs it executes. A `GroupCommitter`
collects the writes of the runs executing in one engine (their creation, journal batches and
ends) and commits them together (`Store.write_group`) from its own thread. A run awaits the
commit that holds its write before it goes on (before its next call: results are still
durable before the next step starts, contract 3), and nothing else changes for it.

A batch waits at most `window` seconds for company, and less when every active run has
already handed in a batch (no run is left to wait for) or `max_batches` are waiting. A lone
run does not use the committer at all: its journal commits at once, in its own thread, as
without group commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

from agentflow.store import GroupWrite, Store

Done: TypeAlias = "asyncio.Future[Any] | concurrent.futures.Future[Any]"
"""Where a write's answer goes: the future its run awaits (or its thread blocks on)."""


class GroupCommitter:
    """Commits the journal batches of concurrent runs together, from one thread."""

    def __init__(self, store: Store, *, window: float = 0.002, max_batches: int = 512) -> None:
        self.store = store
        self.window = window
        self.max_batches = max_batches
        self.commits = 0  # transactions committed, for benchmarks and tests
        self._active = 0
        self._queue: list[tuple[GroupWrite, Done]] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the runs' side ----------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count a run as executing (so a group waits for its batch) while in the block."""
        with self._changed:
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                if self._queue and self._group_ready():  # it waited for this run's batch
                    self._changed.notify()

    @property
    def shared(self) -> bool:
        """True while more than one run executes: only then is there anyone to share with."""
        return self._active > 1

    async def commit(self, write: GroupWrite) -> Any:
        """Commit `write`: with other runs' writes while several runs execute, else at once
        in this thread. Returns its answer (see `Store.write_group`); the exception it
        raised (`LeaseLost`: nothing of it was written) is raised here."""
        if self.shared:
            return await self.write(write)
        return _answer(self.store.write_group([write])[0])

    async def write(self, write: GroupWrite) -> Any:
        """Commit `write` with whatever other runs hand in (see `commit`)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(write, done)
        return await done

    def write_blocking(self, write: GroupWrite) -> Any:
        """`write` for a thread that is no event loop's (a code plan's): blocks it until
        the group holding `write` is committed."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._enqueue(write, done)
        return done.result()

    def _enqueue(self, write: GroupWrite, done: Done) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("the group committer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._commit_forever, daemon=True,
                                                name="agentflow-group-commit")
                self._thread.start()
            self._queue.append((write, done))
            # Wake the committer only when it has something new to do: a first batch (it
            # then waits for company) or a full group; not once per batch of the group.
            if len(self._queue) == 1 or self._group_ready():
                self._changed.notify()

    def _group_ready(self) -> bool:
        """Whether every active run has handed in a batch, or the group is full (holding
        `_changed`)."""
        return len(self._queue) >= min(self._active, self.max_batches)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the committer's thread --------------------------------------------------------

    def _take(self) -> list[tuple[GroupWrite, Done]]:
        """The next group: once a batch waits, until every active run handed one in, the
        window closed or the group is full."""
        with self._changed:
            while not self._queue and not self._closed:
                self._changed.wait()
            deadline = time.monotonic() + self.window
            while not self._group_ready() and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            group, self._queue = self._queue[:self.max_batches], self._queue[self.max_batches:]
            return group

    def _commit_forever(self) -> None:
        while True:
            group = self._take()
            if not group:
                return  # closed, nothing left
            try:
                answers = self.store.write_group([write for write, _ in group])
                self.commits += 1
            except BaseException as error:  # the store failed: every batch of it did
                answers = [error] * len(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
            for (_, done), answer in zip(group, answers, strict=True):
                if isinstance(done, concurrent.futures.Future):  # a blocked thread waits
                    _settle([(done, answer)])
                else:
                    by_loop.setdefault(done.get_loop(), []).append((done, answer))
            for loop, outcomes in by_loop.items():  # one wake-up per loop, not per run
                with contextlib.suppress(RuntimeError):  # that loop is closed: none waits
                    loop.call_soon_threadsafe(_settle, outcomes)


def _answer(answer: Any) -> Any:
    if isinstance(answer, BaseException):
        raise answer
    return answer


Outcome = tuple[Done, Any]


def _settle(outcomes: list[Outcome]) -> None:
    """In the runs' loop (or the committer's thread, for blocked threads): wake each run
    with its write's outcome."""
    for done, answer in outcomes:
        if done.cancelled():
            continue
        if isinstance(answer, BaseException):
            done.set_exception(answer)
        else:
            done.set_result(answer)
