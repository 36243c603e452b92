"""One execution of a code plan in an isolate, seen from the engine.

`run_isolated` is `run_code_plan` behind a process boundary: the same bindings, the same
results and errors, but plan code runs in an isolate from the pool and the bindings run
here, called by message. What the engine adds:

- Time: plan code may run `max_seconds` while no binding call is in progress; past that
  (plus a grace for the isolate's own, more precise check) the isolate is killed, which
  stops a single C-level operation too.
- Halts: when a binding halts the run (a wait, non-determinism, a signal such as
  KeyboardInterrupt), the calls in progress finish and are journaled by their bindings,
  then the isolate is killed: no plan code, cleanup included, runs after a pause.
- Deaths: an isolate that dies raises the `IsolateError` that says how.
- Replay: calls the journal already answered (`answers`) are answered inside the isolate;
  each is reported and checked by `verify` before anything new runs or the outcome counts.
"""

from __future__ import annotations

import base64
import marshal
import re
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import asdict
from time import monotonic
from types import CodeType
from typing import Any

from agentflow.errors import (
    IsolateCpuExceeded,
    IsolateCrashed,
    IsolateError,
    IsolateOutOfMemory,
    IsolateProtocolError,
    IsolateTimedOut,
    ToolCallError,
)
from agentflow.sandbox.bindings import halts
from agentflow.sandbox.channel import ChannelClosed
from agentflow.sandbox.isolate import OUT_OF_MEMORY_EXIT, describe_error
from agentflow.sandbox.limits import SandboxLimits
from agentflow.sandbox.pool import Isolate, IsolatePool
from agentflow.sandbox.shown import argument_error

#: Seconds past `max_seconds` before the engine kills an isolate (its own check comes first).
KILL_GRACE = 0.25
_POLL = 0.05
_POSITION = re.compile(r"(?:c[1-9][0-9]*\.[0-9]+\.)*c[1-9][0-9]*")

Verify = Callable[[str, str, dict[str, Any]], None]

#: The plan line of the binding call being served, as the isolate reported it: executors
#: cannot see the isolate's frames, and record the line next to the call they journal.
CALLING_LINE: ContextVar[int | None] = ContextVar("agentflow_calling_line", default=None)


class PlanError(Exception):
    """What plan code raised in an isolate (a violation of the sandbox included), as data:
    `info` has its type name, message and plan line; `step` the position of the failed call
    for a ToolCallError."""

    def __init__(self, info: dict[str, Any], step: str | None = None) -> None:
        self.info = info
        self.step = step
        super().__init__(f"{info.get('type')}: {info.get('message')}")


def run_isolated(pool: IsolatePool, code: CodeType, bindings: Mapping[str, Callable[..., Any]],
                 inputs: Mapping[str, Any], limits: SandboxLimits, *, max_concurrency: int,
                 answers: Mapping[str, list[Any]], verify: Verify,
                 tenant: str | None = None) -> Any:
    """Run `code` once in an isolate of `pool` (in `tenant`'s CPU group, where the pool
    has them); return what the plan returned.

    Raises `PlanError` for what plan code raised (a violation of the sandbox included), an
    `IsolateError` when the isolate died, or the halt a binding raised.
    """
    isolate = pool.acquire(tenant=tenant)
    session = _Session(isolate, bindings, verify, limits, max_concurrency)
    try:
        return session.run({
            "op": "run", "code": base64.b64encode(marshal.dumps(code)).decode(),
            "inputs": dict(inputs), "limits": asdict(limits), "bindings": sorted(bindings),
            "max_concurrency": max_concurrency, "answers": dict(answers)})
    finally:
        session.close()
        pool.release(isolate)


class _Session:
    def __init__(self, isolate: Isolate, bindings: Mapping[str, Callable[..., Any]],
                 verify: Verify, limits: SandboxLimits, max_concurrency: int) -> None:
        self.isolate = isolate
        self.bindings = bindings
        self.verify = verify
        self.limits = limits
        self.max_concurrency = max_concurrency
        self.lock = threading.Lock()
        self.outstanding = 0
        self.halt: BaseException | None = None
        self.workers: ThreadPoolExecutor | None = None
        self.positions: set[str] = set()  # each position is called once per execution

    def run(self, request: dict[str, Any]) -> Any:
        channel = self.isolate.channel
        try:
            channel.send(request)
        except OSError:
            raise self._died() from None
        plan_time = self.limits.max_seconds + KILL_GRACE
        while True:
            with self.lock:
                busy, halt = self.outstanding > 0, self.halt
            if halt is not None and not busy:
                self.isolate.kill()
                raise halt
            started = monotonic()
            try:
                message = channel.receive(_POLL if busy or halt else max(plan_time, 0.0))
            except ChannelClosed:
                raise self._died() from None
            if not busy:
                plan_time -= monotonic() - started
            if message is None:
                if not busy and halt is None and plan_time <= 0:
                    self.isolate.kill()
                    raise IsolateTimedOut(
                        f"time limit exceeded: plan code ran for more than "
                        f"{self.limits.max_seconds:g}s (SandboxLimits.max_seconds); its "
                        "isolate was killed", limit="max_seconds")
                continue
            self._check_replayed(message.get("replayed") or [])
            operation = message.get("op")
            if self.halt is not None:
                continue
            if operation == "call":
                self._call(message)
            elif operation == "done":
                return message.get("value")
            elif operation == "failed":
                raise _plan_error(message.get("error"))
            elif operation != "replayed":
                raise self._protocol(f"an unknown message {str(operation)[:40]!r}")

    def close(self) -> None:
        if self.workers is not None:
            self.workers.shutdown(wait=False)

    def _check_replayed(self, replayed: Any) -> None:
        if not isinstance(replayed, list):
            raise self._protocol("replayed calls that are not a list")
        for item in replayed:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], dict)):
                raise self._protocol("a replayed call that is not [position, name, kwargs]")
            key, name, kwargs = item
            self._check_call(key, name)
            try:
                self.verify(key, name, kwargs)
            except BaseException as error:
                self._halt(error)
                return

    def _check_call(self, key: Any, name: Any) -> tuple[str, str]:
        if not (isinstance(key, str) and _POSITION.fullmatch(key)):
            raise self._protocol(f"a call at the position {str(key)[:40]!r}")
        if not isinstance(name, str) or name not in self.bindings:
            raise self._protocol(f"a call of {str(name)[:40]!r}, which is not a binding")
        if key in self.positions:
            raise self._protocol(f"a second call at the position {key}")
        self.positions.add(key)
        return key, name

    def _call(self, message: dict[str, Any]) -> None:
        key, name = self._check_call(message.get("key"), message.get("name"))
        args, kwargs = message.get("args"), message.get("kwargs")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise self._protocol(f"a call of {name} without args and kwargs")
        line = message.get("line")
        line = line if isinstance(line, int) and not isinstance(line, bool) else None
        if "." not in key:  # the plan's main thread: nothing else runs in the isolate
            self._serve(key, name, args, kwargs, line, pooled=False)
            return
        with self.lock:
            if self.outstanding >= self.max_concurrency:
                raise self._protocol("more calls at once than its concurrency limit")
            self.outstanding += 1
        if self.workers is None:
            self.workers = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="af-call")
        self.workers.submit(self._serve, key, name, args, kwargs, line, pooled=True)

    def _serve(self, key: str, name: str, args: list[Any], kwargs: dict[str, Any],
               line: int | None, *, pooled: bool) -> None:
        token = CALLING_LINE.set(line)
        binding = self.bindings[name]
        try:
            try:
                reply: dict[str, Any] = {"key": key, "value": binding(key, *args, **kwargs)}
            except TypeError as error:
                raise argument_error(error, name, binding, (key, *args), kwargs,
                                     hidden=1) from None
        except BaseException as error:
            if halts(error):
                self._halt(error)
                return
            reply = {"key": key, "error": describe_error(error)}
        finally:
            CALLING_LINE.reset(token)
            if pooled:
                with self.lock:
                    self.outstanding -= 1
        with self.lock:
            if self.halt is not None:
                return
        try:
            self.isolate.channel.send(reply)
        except ValueError:  # a result JSON cannot carry
            self.isolate.channel.send({"key": key, "error": describe_error(
                ToolCallError(name, "the result is not JSON data", key, "TypeError"))})
        except OSError:
            pass  # the isolate died: the reading loop reports it

    def _halt(self, error: BaseException) -> None:
        with self.lock:
            if self.halt is None:
                self.halt = error

    def _protocol(self, what: str) -> IsolateProtocolError:
        self.isolate.kill()
        return IsolateProtocolError(f"the isolate sent {what}; it was killed")

    def _died(self) -> IsolateError:
        """The error for an isolate that closed its channel: how it ended, from its status."""
        status = self.isolate.exit_status(timeout=10)
        if status is None:
            return IsolateCrashed("the isolate closed its channel without an outcome")
        if hasattr(signal, "SIGXCPU") and _signal_of(status) == signal.SIGXCPU:
            return IsolateCpuExceeded(
                f"CPU time limit exceeded: the isolate used more than "
                f"{self.limits.max_seconds:g}s of CPU (SandboxLimits.max_seconds)",
                limit="max_seconds")
        if _signal_of(status) == signal.SIGKILL:
            return IsolateCrashed("the isolate was killed by SIGKILL (the system may be out "
                                  "of memory)")
        if _signal_of(status) is not None:
            return IsolateCrashed(f"the isolate crashed with "
                                  f"{signal.Signals(_signal_of(status) or 0).name}")
        code = status >> 8
        if code == OUT_OF_MEMORY_EXIT:
            return IsolateOutOfMemory("memory limit exceeded: the isolate ran out of memory "
                                      "(SandboxLimits.max_memory_growth)", limit="max_memory")
        return IsolateCrashed(f"the isolate exited with code {code} without an outcome")


def _signal_of(status: int) -> int | None:
    return status & 0x7F if status & 0x7F not in (0, 0x7F) else None


def _plan_error(info: Any) -> Exception:
    """What plan code raised, from the isolate's report: its type, message and plan line."""
    if not isinstance(info, dict):
        return IsolateProtocolError("the isolate reported a failure that is not an object")
    line, step = info.get("line"), info.get("step")
    return PlanError({"type": str(info.get("type")), "message": str(info.get("message", "")),
                      **({"line": line} if isinstance(line, int) else {})},
                     step if isinstance(step, str) else None)
