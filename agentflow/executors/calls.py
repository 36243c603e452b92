"""Calling one tool: sync or async, with a timeout, and deciding whether to retry."""

from __future__ import annotations

import asyncio
import random
import threading
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import Any

from agentflow.errors import AgentflowError, StepTimeout
from agentflow.executors import progress
from agentflow.plan.models import RetryPolicy
from agentflow.tools import Tool, ToolContext, to_json_value


class ToolControlFlowError(RuntimeError):
    """A tool let a control-flow exception escape (`StopIteration`, `SystemExit`, ...).

    Raised into an asyncio future, StopIteration leaves the future pending forever (the run
    hangs), and SystemExit would stop the engine: the call fails with this error instead,
    a RuntimeError that retry policies treat like any error of the tool."""

    def __init__(self, tool: str, error: BaseException) -> None:
        self.tool = tool
        self.error_type = type(error).__name__
        super().__init__(f"tool {tool!r} raised {error!r} (a control-flow exception, "
                         "outside of any loop or generator)")


_CONTROL_FLOW = (StopIteration, StopAsyncIteration, SystemExit, GeneratorExit)

MAX_STRAY_CALLS = 32
"""Most timed-out sync tool calls that may still run in this process. Python cannot stop
a thread: a timed-out call keeps its thread (and all it holds) until the tool returns, and
its run's pool is abandoned when the run ends, so a tool that hangs past its timeout would
leave a thread behind on every run, for ever. Past this bound a sync call with a timeout
is not started (`StepTimeout`, retried as a timeout) until one of them returns."""
_strays = [0]  # timed-out sync calls still running, across every engine of the process
_strays_lock = threading.Lock()


def stray_calls() -> int:
    """How many timed-out sync tool calls still run in this process."""
    return _strays[0]


def _stray(attempt: Future[Any]) -> None:
    """Count a timed-out attempt until its thread returns."""
    with _strays_lock:
        _strays[0] += 1

    def returned(_: Future[Any]) -> None:
        with _strays_lock:
            _strays[0] -= 1

    attempt.add_done_callback(returned)


def _guarded(tool: Tool, kwargs: dict[str, Any]) -> Any:
    """Call a sync tool; a control-flow exception it raises becomes a plain error."""
    try:
        return tool.fn(**kwargs)
    except _CONTROL_FLOW as error:
        raise ToolControlFlowError(tool.name, error) from None


async def _guarded_async(tool: Tool, awaitable: Any) -> Any:
    """Await an async tool; Python turns a StopIteration in a coroutine into RuntimeError,
    reported like the sync case."""
    try:
        return await awaitable
    except _CONTROL_FLOW as error:
        raise ToolControlFlowError(tool.name, error) from None
    except RuntimeError as error:
        if isinstance(error.__cause__, StopIteration | StopAsyncIteration):
            raise ToolControlFlowError(tool.name, error.__cause__) from None
        raise


async def invoke_tool(
    tool: Tool, args: dict[str, Any], ctx: ToolContext, timeout: float | None,
    threads: Executor | None, on_timeout: Callable[[Future[Any]], None] | None = None,
    bound: Callable[[Any], object] | None = None,
) -> Any:
    """Run the tool once and return its result as JSON data, in a span when traced.
    `bound` sees the result before it is converted (and may refuse it: converting costs
    as much as the result is large)."""
    if progress.tracer is None:
        return await _invoke_tool(tool, args, ctx, timeout, threads, on_timeout, bound)
    with progress.tracer.call(ctx, tool.name) as traced:
        result = await _invoke_tool(tool, args, traced.ctx, timeout, threads, on_timeout,
                                    bound)
        traced.succeeded(result)
        return result


def run_inline(tool: Tool, args: dict[str, Any], context: Callable[[], ToolContext],
               bound: Callable[[Any], object] | None = None) -> Any:
    """`invoke_tool` of a sync tool without a timeout, on this thread (the caller knows
    nothing else could run meanwhile), with the same guards but no coroutine, and the
    context made only when the tool takes it or the call is traced."""
    if progress.tracer is None:
        if tool.context_param:
            args = {**args, tool.context_param: context()}
        return _stored(tool, _guarded(tool, args), bound)
    with progress.tracer.call(context(), tool.name) as traced:
        kwargs = dict(args)
        if tool.context_param:
            kwargs[tool.context_param] = traced.ctx
        result = _stored(tool, _guarded(tool, kwargs), bound)
        traced.succeeded(result)
        return result


def call_tool(tool: Tool, args: dict[str, Any], ctx: ToolContext) -> Any:
    """Run a sync tool on this thread and return its result as JSON data, in a span when
    traced (a code plan's calls)."""
    if progress.tracer is None:
        return _call_tool(tool, args, ctx)
    with progress.tracer.call(ctx, tool.name) as traced:
        result = _call_tool(tool, args, traced.ctx)
        traced.succeeded(result)
        return result


def _call_tool(tool: Tool, args: dict[str, Any], ctx: ToolContext) -> Any:
    kwargs = dict(args)
    if tool.context_param:
        kwargs[tool.context_param] = ctx
    return to_json_value(tool.fn(**kwargs))


async def _invoke_tool(
    tool: Tool, args: dict[str, Any], ctx: ToolContext, timeout: float | None,
    threads: Executor | None, on_timeout: Callable[[Future[Any]], None] | None,
    bound: Callable[[Any], object] | None = None,
) -> Any:
    """Run the tool once and return its result as JSON data.

    Sync tools run in `threads` (or inline when `threads` is None: the caller knows nothing
    else could run meanwhile). A timed-out sync call cannot be killed; its thread finishes
    in the background and its result is ignored; `on_timeout` gets that attempt (a future
    of `threads`), so a retry can wait for its end, and it counts against
    `MAX_STRAY_CALLS` until it returns. Whatever the tool raises surfaces as
    an `Exception` (see `ToolControlFlowError`), never as a hang.
    """
    kwargs = dict(args)
    if tool.context_param:
        kwargs[tool.context_param] = ctx
    awaitable: Awaitable[Any]
    if tool.is_async:
        awaitable = _guarded_async(tool, tool.fn(**kwargs))
    elif threads is None and timeout is None:
        return _stored(tool, _guarded(tool, kwargs), bound)
    elif threads is None:
        awaitable = asyncio.get_running_loop().run_in_executor(None, _guarded, tool, kwargs)
    else:
        if timeout is not None and _strays[0] >= MAX_STRAY_CALLS:
            raise StepTimeout(f"step {ctx.step_id!r}: tool {tool.name!r} was not started: "
                              f"{_strays[0]} timed-out calls of sync tools still run in this "
                              f"process (at most {MAX_STRAY_CALLS}; a thread cannot be "
                              "stopped, so none starts until one returns)")
        attempt = threads.submit(_guarded, tool, kwargs)
        awaitable = asyncio.wrap_future(attempt)
    if timeout is None:
        return _stored(tool, await awaitable, bound)
    try:
        return _stored(tool, await asyncio.wait_for(awaitable, timeout), bound)
    except TimeoutError:
        if threads is not None and not tool.is_async:
            _stray(attempt)
            if on_timeout is not None:
                on_timeout(attempt)  # still running: a retry must not overlap with it
        raise StepTimeout(f"step {ctx.step_id!r}: tool {tool.name!r} took longer than "
                          f"{timeout:g}s (attempt {ctx.attempt})") from None


def _stored(tool: Tool, result: Any, bound: Callable[[Any], object] | None = None) -> Any:
    """The tool's result as the JSON the journal keeps; `NotJsonData` (never retried unless
    a retry policy names it) when it cannot be kept."""
    kind = type(result)
    if kind is int or kind is bool or result is None:  # JSON as it is: nothing to check
        return result
    if bound is not None:
        bound(result)
    return to_json_value(result, f"the result of tool {tool.name!r}")


TRACEBACK_FRAMES = 20
"""Innermost frames of a tool's traceback kept in the journal."""
TRACEBACK_CHARS = 4000
"""Longest traceback text kept (its end, where the error was raised)."""


def error_info(error: BaseException) -> dict[str, Any]:
    """How an error is journaled: its type name, its message and a bounded traceback (file,
    line and code of the innermost frames; never their local variables, which may hold
    secrets), JSON only. Errors agentflow raises itself carry no traceback."""
    info = {"type": type(error).__name__, "message": str(error) or repr(error)}
    if error.__traceback__ is not None and not isinstance(error, AgentflowError):
        info["traceback"] = bounded_traceback(error)
    return info


def bounded_traceback(error: BaseException) -> str:
    """The innermost `TRACEBACK_FRAMES` frames of `error`'s traceback, at most
    `TRACEBACK_CHARS` characters (cut at the start), without local variables."""
    text = "".join(traceback.format_exception(error, limit=-TRACEBACK_FRAMES, chain=False))
    return text if len(text) <= TRACEBACK_CHARS else "...\n" + text[-TRACEBACK_CHARS:]


def is_retryable(policy: RetryPolicy | None, error: BaseException) -> bool:
    """Whether `policy` retries `error`. Errors of agentflow itself (bad arguments, a
    model's malformed answer, ...) are retried only when `retry_on` names their type;
    timeouts and the tools' own errors by default."""
    if policy is None:
        return False
    if isinstance(error, AgentflowError) and not isinstance(error, StepTimeout):
        return policy.retry_on is not None and type(error).__name__ in policy.retry_on
    if policy.retry_on is None:
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return any(name in names for name in policy.retry_on)


def retry_delay(policy: RetryPolicy, failed_attempts: int) -> float:
    """Seconds to wait after the `failed_attempts`-th failure: exponential, capped, jittered."""
    delay = min(policy.initial_delay * policy.backoff ** (failed_attempts - 1), policy.max_delay)
    return delay + delay * policy.jitter * random.random()
