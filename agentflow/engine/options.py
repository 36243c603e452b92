"""What the entry points of `Engine` share: the tools and tenant arguments, the run id,
the per-run options and inputs, checked before anything is written; and `run_sync`, by
which the sync methods run the async ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from agentflow.engine.loading import Compiled
from agentflow.engine.policy import Policy
from agentflow.errors import NotJsonData, PlanMismatch, PlanValidationError, ValidationIssue
from agentflow.executors.progress import Observer
from agentflow.plan import CompiledPlan, validate_inputs
from agentflow.sandbox import SandboxLimits
from agentflow.store import RunRecord, StoredPlan
from agentflow.tools import Tool, to_json_value

T = TypeVar("T")
ToolsArg = Iterable[Tool | Callable[..., Any]] | None
DEFAULT_TENANT = "default"


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also inside a running event loop
    (Jupyter), where it runs on a helper thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_woken_by_signals(make()))
    with ThreadPoolExecutor(1, thread_name_prefix="agentflow") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _woken_by_signals(main: Coroutine[Any, Any, T]) -> T:
    """Await `main` with a signal wake-up fd on the loop: Ctrl-C that the kernel hands to a
    tool's thread then wakes the loop, and asyncio's handler (run by Python in the main
    thread only) cancels the round at once. Without it the loop slept in its selector until
    a call returned, and calls waiting for the Ctrl-C to be taken failed instead."""
    if threading.current_thread() is not threading.main_thread():
        return await main
    loop = asyncio.get_running_loop()
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    loop.add_reader(reader.fileno(), _drain, reader)
    try:
        return await main
    finally:
        loop.remove_reader(reader.fileno())
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while reader.recv(4096):
            pass


def run_on(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`run_sync` on an event loop the calling thread keeps for many runs (a worker's
    slot): `asyncio.run` makes and closes a loop each time, which costs more CPU than a
    short run's steps. Tasks the coroutine left behind are cancelled, as `asyncio.run`
    does, so none runs into the next run."""
    try:
        return loop.run_until_complete(make())
    finally:
        if left := asyncio.all_tasks(loop):
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))


class Claimed(Protocol):
    """What a worker's claim read with the run it leased (`Store.claim`'s answer): its
    pinned plan (None: missing), its tenant's policy, and whether the claim started it
    (a queued run: no journal entries and no waits yet)."""

    @property
    def run(self) -> RunRecord: ...

    @property
    def plan(self) -> StoredPlan | None: ...

    @property
    def policy(self) -> dict[str, Any] | None: ...

    @property
    def started(self) -> bool: ...


@dataclass(frozen=True)
class _Execution:
    """What one execute/resume call needs beyond the run itself."""

    tools: dict[str, Tool]
    max_concurrency: int
    observer: Observer | None
    policy: Policy


MAX_ID_LENGTH = 200
"""Longest run or tenant id: each is written into every row the run owns (and indexed)."""


def check_id(value: Any, name: str) -> str:
    """A run or tenant id as a caller gives it: a non-empty string of at most
    `MAX_ID_LENGTH` printable characters (no NUL or other control character, which
    PostgreSQL or a log line cannot hold, no lone surrogate), with no whitespace at either
    end; `ValueError` otherwise, the same on every store."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, not {value!r:.100}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} has {len(value):,} characters, more than {MAX_ID_LENGTH}")
    if not value.isprintable():  # (a lone surrogate is not printable either)
        raise ValueError(f"{name} {value!r} has a control character or a lone surrogate")
    if value != value.strip():  # "acme " and "acme" would be two tenants, or two runs
        raise ValueError(f"{name} {value!r} starts or ends with whitespace; give it as "
                         f"{value.strip()!r} (an id is taken exactly as given)")
    return value


def _run_id(run_id: str | None) -> str:
    """The caller's run id, checked, or a fresh one."""
    return uuid.uuid4().hex if run_id is None else check_id(run_id, "run_id")


def _options(limits: SandboxLimits | None, budget: Mapping[str, float] | None) -> dict[str, Any]:
    """The per-run options kept with the run."""
    options: dict[str, Any] = {}
    if limits is not None:
        options["limits"] = asdict(limits)
    if budget is not None:
        options["budget"] = budget
    return options


def _check_same_inputs(run: RunRecord, compiled: Compiled, inputs: Any) -> None:
    """Continuing a run with inputs is allowed only with the inputs it was started with
    (a run whose row is corrupt is failed instead, further on)."""
    if run.corrupt is not None:
        return
    if inputs is not None and _check_inputs(compiled, inputs) != run.inputs:
        raise PlanMismatch(f"run {run.run_id!r} was started with other inputs: "
                           f"{json.dumps(run.inputs)[:200]}")


def _check_inputs(compiled: Compiled, inputs: Any) -> dict[str, Any]:
    """Graph plans declare an input schema; code plans take any JSON object."""
    try:
        to_json_value(inputs, "the inputs")
    except NotJsonData as error:
        raise PlanValidationError([ValidationIssue("$.inputs", str(error))],
                                  what="inputs") from None
    if isinstance(compiled, CompiledPlan):
        return validate_inputs(compiled, inputs)
    if not isinstance(inputs, dict):
        raise PlanValidationError([ValidationIssue("$.inputs", "inputs must be a JSON "
                                                   f"object, not {type(inputs).__name__}")],
                                  what="inputs")
    try:
        checked: dict[str, Any] = json.loads(json.dumps(inputs, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise PlanValidationError([ValidationIssue("$.inputs", f"inputs must be JSON data: "
                                                   f"{error}")], what="inputs") from None
    return checked
