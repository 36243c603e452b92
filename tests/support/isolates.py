"""Looking at isolates from outside, through /proc: which one runs, what it holds."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentflow.sandbox import IsolatePool


def isolate_pids(pool: IsolatePool) -> list[int]:
    """The live isolates of `pool`: the children of its fork server."""
    server = pool._server  # the test looks at the real processes
    assert server is not None
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def limit_of(pid: int, name: str) -> str:
    """The soft value of one line of /proc/<pid>/limits ("Max address space", ...)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            return line[len(name):].split()[0]
    raise KeyError(name)


def running_isolate(pool: IsolatePool) -> int:
    """The isolate that runs a plan now: the only live one whose CPU time is limited (an
    isolate that ended keeps its limits until the fork server reaps it)."""
    running = []
    for pid in isolate_pids(pool):
        with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
            if not _ended(pid) and limit_of(pid, "Max cpu time") != "unlimited":
                running.append(pid)
    assert len(running) == 1, running
    return running[0]


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Heartbeat:
    """A thread of the engine's process that beats every 5 ms; `beats` counts its beats.

    A beat needs nothing of the engine but the GIL, so an engine that freezes its process
    (a long call holding the GIL) stops the beats. Tests count the beats between two events
    of a run, never their spacing in time, which the machine's load decides. Where the
    kernel allows it (root), the thread runs at real-time priority.
    """

    def __init__(self) -> None:
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        while not self._stop.wait(0.005):
            self.beats += 1

    @contextmanager
    def running(self) -> Iterator[Heartbeat]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
