"""The bindings of a code plan's execution: how plan code calls tools and the engine's
built-ins (`approve`, `sleep`, ...), counted, timed apart and copied in and out, with each
call's position for replay; and `parallel`, which runs thunks on the execution's threads.
A part of the execution (`agentflow.sandbox.runtime`), which provides the counting and
halting it relies on.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable
from time import monotonic
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from agentflow.errors import AgentflowError, SandboxViolation, ToolArgumentsError, ToolCallError
from agentflow.sandbox.attributes import PlanFunction
from agentflow.sandbox.builtin_guards import BuiltinGuards
from agentflow.sandbox.guards import MAX_NESTING
from agentflow.sandbox.parallel import ThunkThreads
from agentflow.sandbox.policy import PLAN_BUILTINS
from agentflow.sandbox.shown import argument_error

if TYPE_CHECKING:
    from agentflow.sandbox.runtime import _ResidentMemory, _ThreadState


class _RefusedInCleanup(SandboxViolation):
    """A binding called from a closing generator; refused without stopping the run."""


_SCALARS = (str, bytes, int, float, complex, bool, type(None), datetime.date, datetime.time,
            datetime.timedelta, datetime.tzinfo)
_CO_GENERATOR = 0x20  # inspect.CO_GENERATOR, without importing inspect
_PLAIN_ERRORS: dict[type[Exception], type[Exception]] = {
    error: error for error in (TypeError, ValueError, KeyError, IndexError, LookupError,
                               ArithmeticError, ZeroDivisionError, OverflowError,
                               RuntimeError, NotImplementedError, AttributeError)}


def _fresh_error(error: BaseException, binding: str, position: str) -> Exception:
    """What plan code sees of an error a binding raised: a new object of plain data.

    A `ToolCallError` is copied; an error of a plain built-in type keeps its type and
    message; anything else (a pydantic ValidationError, an error class of a tool's library)
    becomes a `ToolCallError` naming the original type, so no host class or object reaches
    plan code.
    """
    if isinstance(error, ToolCallError):
        return ToolCallError(error.tool, error.message, error.step_id, error.error_type)
    if isinstance(error, ToolArgumentsError):
        return ToolArgumentsError(str(error))
    plain = _PLAIN_ERRORS.get(type(error))  # type: ignore[arg-type]
    if plain is not None:
        return plain(*[str(arg) for arg in error.args[:1]])
    return ToolCallError(binding, str(error), position, type(error).__name__)


def halts(error: BaseException) -> bool:
    """Whether an exception raised by a binding stops the run rather than informs the plan."""
    if not isinstance(error, Exception):
        return True
    return isinstance(error, AgentflowError) and not isinstance(
        error, (ToolCallError, ToolArgumentsError))

class Bindings(BuiltinGuards):
    """The bindings and `parallel` of one execution; the execution supplies its state, its
    counting and how to halt."""

    threads: ThunkThreads
    filename: str
    halt: BaseException | None
    deadline: float
    _thread: _ThreadState
    _lock: threading.Lock
    _memory: _ResidentMemory | None
    _memory_baseline: int

    @abstractmethod
    def tick(self) -> bool:
        """One operation."""

    @abstractmethod
    def _halt_with(self, error: BaseException) -> None:
        """Remember the first error that halts the execution."""

    # Bindings.

    def bind(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """The plan's view of one binding: counted, timed apart, copied in and out."""
        is_tool = name not in PLAN_BUILTINS

        def call(*args: Any, **kwargs: Any) -> Any:
            if is_tool and args:
                raise TypeError(f"tool {name!r} takes keyword arguments only: "
                                f"{name}(name=value, ...)")
            return self._call_binding(name, function, args, kwargs)

        kind = "tool" if is_tool else "built-in function"
        return PlanFunction(call, f"<{kind} {name}>", name)

    def next_position(self) -> str:
        """The position of this thread's next call: `c1`, `c2`, ... under its thunk prefix."""
        state = self._thread
        state.count += 1
        return f"{state.prefix}c{state.count}"

    def _refuse_in_cleanup(self, name: str) -> None:
        """Refuse a binding called from a generator's cleanup rather than from its body.

        A plan generator's frame may be on the stack only because the sandbox is drawing its
        next item (`_lazy`); any other way in (closed by the plan, by the end of the run, by
        the garbage collector) is cleanup, whatever exception the cleanup has caught since.
        """
        drawing = {id(generator.gi_frame) for generator in self._thread.drawing}
        frame: FrameType | None = sys._getframe(1)
        cleanup = isinstance(sys.exc_info()[1], GeneratorExit)
        while frame is not None and not cleanup:
            code = frame.f_code
            cleanup = bool(code.co_flags & _CO_GENERATOR) and code.co_filename == self.filename \
                and id(frame) not in drawing
            frame = frame.f_back
        if cleanup:
            raise _RefusedInCleanup(
                f"{name}() cannot be called while a generator is being closed: its cleanup "
                "may run at any time, so it could not be replayed")

    def _call_binding(self, name: str, function: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
        self.tick()
        self._refuse_in_cleanup(name)
        what = f"an argument of {name}()"
        args = tuple(self.export(value, what) for value in args)
        kwargs = {key: self.export(value, what) for key, value in kwargs.items()}
        position = self.next_position()
        memory_before = self._memory.read() if self._memory else 0
        started = monotonic()
        try:
            try:
                result = function(position, *args, **kwargs)
            except TypeError as error:
                raise argument_error(error, name, function, (position, *args), kwargs,
                                     hidden=1) from None
        except BaseException as error:
            if halts(error):
                self._halt_with(error)
                raise
            raise _fresh_error(error, name, position) from None
        finally:
            with self._lock:
                self.deadline += monotonic() - started
                if self._memory is not None:
                    self._memory_baseline += self._memory.read() - memory_before
        if self.halt is not None:
            raise self.halt
        return self.copy_data(result, f"the result of {name}()")

    def export(self, value: Any, what: str, error: type[Exception] = TypeError) -> Any:
        """A copy of plan data for the host, refused (as `error`) when it is not JSON data
        (a tuple passes: JSON makes it a list) or when its text form would be too large."""
        self.check_text(value, what)
        copied = self.copy_data(value, what)
        try:
            json.dumps(copied, allow_nan=False, default=_not_json)
        except (TypeError, ValueError) as problem:
            reason = "an integer too long to write" if "integer string" in str(problem) \
                else str(problem)
            raise error(f"{what} is not JSON data ({reason}); use lists, dicts, strings, "
                        "finite numbers, booleans and None") from None
        return copied

    # parallel().

    def parallel_(self, thunks: Iterable[Callable[[], Any]], /) -> list[Any]:
        """Run zero-argument callables concurrently; results in order.

        Thunk i of the call at position `c3` numbers its calls `c3.i.c1`, ..., so replay is
        deterministic whatever the timing, and it starts at the depth of the caller: nesting
        through `parallel` counts against `max_depth` like any other call.
        """
        self.tick()
        position = self.next_position()
        tasks = list(self.iterate(thunks))
        for task in tasks:
            if not callable(task):
                raise TypeError(f"parallel() takes zero-argument functions, not "
                                f"{type(task).__name__}")
        depth = self._thread.depth + 1
        results: list[Any] = [None] * len(tasks)
        errors: list[BaseException | None] = [None] * len(tasks)
        finished = threading.Semaphore(0)

        def run(index: int) -> None:
            state = self._thread
            saved = (state.depth, state.prefix, state.count)
            state.depth, state.prefix, state.count = depth, f"{position}.{index}.", 0
            try:
                results[index] = tasks[index]()
            except BaseException as error:
                errors[index] = error
            finally:
                state.depth, state.prefix, state.count = saved

        remaining = iter(range(len(tasks)))
        taking = threading.Lock()

        def drain() -> None:
            while True:
                with taking:
                    index = next(remaining, None)
                if index is None:
                    return
                run(index)

        def drain_and_signal() -> None:
            try:
                drain()
            finally:
                finished.release()

        helpers = 0
        while helpers < len(tasks) - 1 and self.threads.try_submit(drain_and_signal):
            helpers += 1
        drain()
        for _ in range(helpers):
            finished.acquire()
        if self.halt is not None:
            raise self.halt
        for error in errors:
            if error is not None:
                raise error
        return results

    def copy_data(self, value: Any, what: str, depth: int = 0) -> Any:
        """A deep copy with plain built-in containers; scalars are immutable and kept."""
        if isinstance(value, _SCALARS):
            return value
        if depth > MAX_NESTING:
            self.violate(f"{what} is nested more than {MAX_NESTING} levels deep")
        if isinstance(value, (dict, MappingProxyType)):
            return {self.copy_data(key, what, depth + 1): self.copy_data(item, what, depth + 1)
                    for key, item in value.items()}
        if isinstance(value, list):
            return [self.copy_data(item, what, depth + 1) for item in value]
        if isinstance(value, tuple):
            return tuple(self.copy_data(item, what, depth + 1) for item in value)
        if isinstance(value, (set, frozenset)):
            return type(value)(self.copy_data(item, what, depth + 1) for item in value)
        return value


def _not_json(value: object) -> NoReturn:
    """What `json.dumps` says of a value it cannot write, named as plan code knows it."""
    kind = "function" if isinstance(value, PlanFunction) else type(value).__name__
    raise TypeError(f"a {kind} is not JSON serializable")
