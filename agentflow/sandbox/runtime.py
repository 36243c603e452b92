"""Running a compiled code plan: a fresh namespace, guarded operations, limits, suspension.

`run_code_plan` executes one `CompiledCodePlan` against the executor's bindings (one function
per tool, plus `approve`, `sleep`, `wait_for_event`, `now`) and returns the value of the
plan's top-level `return`. Each binding is called with the call's position first (`c1`,
`c2`, ...; inside `parallel`, thunk i of the call at `c3` numbers its calls `c3.i.c1`, ...),
so replay can match calls to the journal whatever the timing of threads. `parallel` itself
runs here, on at most `max_concurrency` threads per execution. What holds, per execution:

- Plan code reaches only what the namespace gives it: safe built-ins (guarded where they can
  blow up), the bindings and `inputs`, a read-only view of a private deep copy. Attributes
  are allow-listed per built-in type; nothing can be assigned to an attribute, and only lists
  and dicts can be changed item by item. Values going to a binding and results coming back
  are copies, so plan code never shares a mutable object with the host. Arguments and the
  return value must be JSON data (no bytes, sets or NaN), so they can be journaled; an error
  a binding raises reaches plan code as a fresh error of plain data, never the host's object.
- Limits (`SandboxLimits`): an operation budget (loop iterations, calls, items of lazy
  iterators), a time limit on plan code (time inside bindings excluded), a call/iterator
  depth limit kept well below the interpreter's recursion limit, size checks made *before* a
  large string, list, int or format result is built, and a process-memory backstop. Each
  raises `SandboxViolation` naming the limit and the plan line.
- A binding that raises `Suspension` (or any other `BaseException`, or an agentflow error
  other than `ToolCallError`/`ToolArgumentsError`) halts the execution: the exception
  propagates, and should plan code survive it (a `finally:` block, a generator being closed,
  a thunk still running in another thread), every later binding call, loop iteration or call
  raises it again, and `run_code_plan` raises it even if plan code returned. Violations halt
  the same way. After `run_code_plan` returns, any binding call raises.
- A generator's cleanup (`finally:` blocks run because it was closed or collected before it
  finished) cannot call a binding: when the garbage collector runs it is not deterministic,
  so a call from there could not be replayed. A binding may be called from a generator's
  frame only while the sandbox itself is drawing the generator's next item; any other call
  is refused, and the run goes on.
- Every `except` and `finally` block first checks what it handles: after a halt it re-raises
  the halt, and a MemoryError becomes a `SandboxViolation`, so plan code cannot go on after
  running out of memory.

State lives in one `_Execution` object per call, so one compiled plan can run in many threads
at once, and the thunks of `parallel` may run in other threads of the same execution.
"""

from __future__ import annotations

import datetime
import json
import math
import operator
import os
import string
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from time import monotonic
from types import CodeType, FrameType, GeneratorType, MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
    safer_getattr_raise,
)

from agentflow.errors import (
    AgentflowError,
    SandboxViolation,
    ToolArgumentsError,
    ToolCallError,
)
from agentflow.sandbox.parallel import ThunkThreads
from agentflow.sandbox.policy import (
    ADD,
    AUGMENT_ITEM,
    CATCHABLE_EXCEPTIONS,
    CAUGHT,
    CONCAT,
    FORBIDDEN_ATTRIBUTES,
    FORMAT_VALUE,
    FUNCTION,
    GENERATOR_FUNCTION,
    ITERATE,
    KEY,
    KEYS,
    LAZY,
    MAIN,
    MODULO,
    MULTIPLY,
    PLAN_BUILTINS,
    POWER,
    SAFE_BUILTINS,
    SET_OPERATION,
    SHIFT,
    TICK,
)
from agentflow.sandbox.sizes import percent_format_size, spec_width, text_size

if TYPE_CHECKING:  # isolates import this module, but not the compiler and its imports
    from agentflow.sandbox.compiler import CompiledCodePlan

# RestrictedPython's helpers are untyped; these aliases give them a signature.
_unpack_sequence: Callable[[object, dict[str, Any], Callable[[Any], Any]], list[Any]] = (
    guarded_unpack_sequence)
_iter_unpack_sequence: Callable[[object, dict[str, Any], Callable[[Any], Any]], Iterator[Any]] = (
    guarded_iter_unpack_sequence)
_generic_getattr: Callable[[object, str], Any] = safer_getattr_raise


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one execution of a code plan; exceeding one raises `SandboxViolation`.

    - `max_operations`: loop iterations + calls of plan functions and bindings + items drawn
      from lazy iterators (generators, map, zip, range consumed by list(), ...).
    - `max_seconds`: time spent running plan code; time inside bindings is not counted.
    - `max_depth`: nested calls of plan functions plus nested lazy iterators, per thread.
    - `max_sequence_length`: items of one list/tuple/range, characters of one string, bytes.
    - `max_int_bits`: size of one integer built by `*`, `**`, `<<` or `pow`.
    - `max_memory_growth`: growth of the process's resident memory while plan code runs, in
      bytes (a backstop for many allocations that are each within limits; Linux only, None
      disables it). Memory a binding allocates is not counted.
    """

    max_operations: int = 1_000_000
    max_seconds: float = 30.0
    max_depth: int = 100
    max_sequence_length: int = 10_000_000
    max_int_bits: int = 100_000
    max_memory_growth: int | None = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_operations", "max_seconds", "max_depth", "max_sequence_length",
                     "max_int_bits"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")


def run_code_plan(compiled: CompiledCodePlan | CodeType, bindings: Mapping[str, Callable[..., Any]],
                  inputs: Mapping[str, Any], limits: SandboxLimits | None = None, *,
                  max_concurrency: int = 16, threads: ThunkThreads | None = None) -> Any:
    """Run `compiled` once and return its top-level `return` value (None without one).

    `compiled` is a compiled plan or its code object. `bindings` maps each tool name and
    plan built-in to the executor's function, called as `function(position, *args,
    **kwargs)`; tools are called with keyword arguments only. `parallel` runs on `threads`
    (or on up to `max_concurrency` threads started as needed). Raises `SandboxViolation`
    for a violation or an exceeded limit, lets `Suspension` (and any other halting signal)
    propagate, and lets the plan's own exceptions propagate as they are.
    """
    limits = limits or SandboxLimits()
    _check_stack_room(limits)
    own_threads = threads is None
    code = compiled if isinstance(compiled, CodeType) else compiled.code
    execution = _Execution(code, limits, threads or ThunkThreads(max_concurrency))
    try:
        namespace = execution.namespace(bindings, inputs)
        exec(code, namespace)
        main = namespace.pop(MAIN)
        try:
            result = main()
        except BaseException as error:
            execution.check_escaping(error)
            raise
        execution.check_escaping(None)
        return execution.export(result, "the plan's return value", TypeError)
    finally:
        execution.close()
        if own_threads:
            execution.threads.close()


class _ThreadState(threading.local):
    """Per thread of plan code: call depth, the position counter, generators being drawn."""

    def __init__(self) -> None:
        self.depth = 0
        self.prefix = ""
        self.count = 0
        self.drawing: list[GeneratorType[Any, Any, Any]] = []


class _Callable:
    """A function handed to plan code: it calls through, and its repr names nothing inside."""

    __slots__ = ("_call", "_text")

    def __init__(self, call: Callable[..., Any], text: str) -> None:
        self._call = call
        self._text = text

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __repr__(self) -> str:
        return self._text


def _builtin(name: str, function: Callable[..., Any]) -> _Callable:
    return _Callable(function, f"<built-in function {name}>")


class _RefusedInCleanup(SandboxViolation):
    """A binding called from a closing generator; refused without stopping the run."""


_MATERIALIZED: frozenset[type] = frozenset({
    list, tuple, str, bytes, dict, set, frozenset, MappingProxyType,
    type({}.keys()), type({}.values()), type({}.items()),
})
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_LARGE = 1 << 16  # results at least this long trigger a memory check
_MAX_NESTING = 200  # nesting of data copied in or out (kept far below the recursion limit)
_SCALARS = (str, bytes, int, float, complex, bool, type(None), datetime.date, datetime.time,
            datetime.timedelta, datetime.tzinfo)
# Objects (other than built-in values) whose public attributes plan code may read.
_OPEN_TYPES = (BaseException, datetime.date, datetime.time, datetime.timedelta,
               datetime.tzinfo)
_IADD: Callable[[Any, Any], Any] = operator.iadd
_IMUL: Callable[[Any, Any], Any] = operator.imul
_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "/=": operator.itruediv, "//=": operator.ifloordiv, ">>=": operator.irshift,
    "@=": operator.imatmul,
}
_SET_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "|": operator.or_, "&": operator.and_, "^": operator.xor, "-": operator.sub,
    "|=": operator.ior, "&=": operator.iand, "^=": operator.ixor, "-=": operator.isub,
}
_HASHED: tuple[type, ...] = (set, frozenset, dict, MappingProxyType, type({}.keys()))
_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.items()))


def _kinds(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


# Attributes plan code may use, per built-in type, with the guard each goes through (see
# `_Execution.method`): "plain" methods only have their result checked for size.
_TEXT_METHODS = ("count endswith find index isalnum isalpha isascii isdigit islower isspace "
                 "istitle isupper lower lstrip partition removeprefix removesuffix rfind rindex "
                 "rpartition rsplit rstrip split splitlines startswith strip swapcase title upper")
_TEXT_GUARDS = {**_kinds("pad", "center ljust rjust zfill"), "expandtabs": "expandtabs",
                "replace": "replace", "join": "join"}
_SET_OPERATIONS = ("difference intersection isdisjoint issubset issuperset symmetric_difference "
                   "union")
_ATTRIBUTES: dict[type, dict[str, str]] = {
    str: {**_kinds("plain", _TEXT_METHODS + " capitalize casefold encode isdecimal "
                   "isidentifier isnumeric isprintable"),
          **_TEXT_GUARDS, "format": "format", "format_map": "format_map"},
    bytes: {**_kinds("plain", _TEXT_METHODS + " decode hex"), **_TEXT_GUARDS},
    list: {**_kinds("plain", "append clear copy count index insert pop remove reverse sort"),
           "extend": "extend"},
    tuple: _kinds("plain", "count index"),
    dict: {**_kinds("plain", "clear copy items keys popitem values"),
           **_kinds("key", "get pop setdefault"), "update": "consume",
           "fromkeys": "consume_first"},
    set: {**_kinds("plain", "clear copy pop"), **_kinds("key", "add discard remove"),
          **_kinds("consume", _SET_OPERATIONS + " update difference_update "
                   "intersection_update symmetric_difference_update")},
    frozenset: {"copy": "plain", **_kinds("consume", _SET_OPERATIONS)},
    int: _kinds("plain", "as_integer_ratio bit_count bit_length conjugate denominator imag "
                "numerator real"),
    float: _kinds("plain", "as_integer_ratio conjugate hex imag is_integer real"),
    complex: _kinds("plain", "conjugate imag real"),
    range: _kinds("plain", "count index start step stop"),
    MappingProxyType: {**_kinds("plain", "copy items keys values"), "get": "key"},
    GeneratorType: _kinds("plain", "close"),
}


def _attributes_of(cls: type) -> dict[str, str] | None:
    """The allow-list of the nearest built-in base class of `cls`, if it has one."""
    for base in cls.__mro__:
        if base in _ATTRIBUTES:
            return _ATTRIBUTES[base]
    return None


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


class _PlanFormatter(string.Formatter):
    """str.format for plans: fields name arguments only, sizes checked before formatting."""

    def __init__(self, execution: _Execution) -> None:
        self._execution = execution
        self._length = 0

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name or "[" in field_name:
            self._execution.violate(f"format field {{{field_name}}} reads an attribute or "
                                    "item, which is not allowed in plans")
        return super().get_field(field_name, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            self._execution.check_text(value, "a formatted field")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        text = self._execution.format_value(value, -1, format_spec)
        self._length += len(text)
        self._execution.check_length(self._length, "the formatted string")
        return text


class _Execution:
    """The state of one execution: counters, halt signal, and the guards plan code calls."""

    def __init__(self, code: CodeType, limits: SandboxLimits, threads: ThunkThreads) -> None:
        self.limits = limits
        self.threads = threads
        self.filename = code.co_filename
        self.operations = 0
        self.halt: BaseException | None = None
        self.deadline = monotonic() + limits.max_seconds
        self._checkpoint = min(limits.max_operations, 64)
        self._thread = _ThreadState()
        self._lock = threading.Lock()
        self._memory = _ResidentMemory() if limits.max_memory_growth is not None else None
        self._memory_baseline = self._memory.read() if self._memory else 0
        self._constructors: dict[Any, type] = {}
        self._generators: weakref.WeakSet[GeneratorType[Any, Any, Any]] = weakref.WeakSet()

    # The namespace.

    def namespace(self, bindings: Mapping[str, Callable[..., Any]],
                  inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Fresh globals: nothing in them is shared with another execution or the host."""
        constructors: dict[str, tuple[_Callable, type]] = {
            name: (_builtin(name, function), cls) for name, function, cls in (
                ("list", self.list_, list), ("tuple", self.tuple_, tuple),
                ("set", self.set_, set), ("frozenset", self.frozenset_, frozenset),
                ("dict", self.dict_, dict), ("str", self.str_, str), ("int", self.int_, int),
                ("range", self.range_, range))}
        self._constructors = {function: cls for function, cls in constructors.values()}
        guarded: dict[str, Callable[..., Any]] = {
            "all": self.all_, "any": self.any_, "enumerate": self.enumerate_,
            "filter": self.filter_, "isinstance": self.isinstance_, "iter": self.iter_,
            "map": self.map_, "max": self.max_, "min": self.min_, "pow": self.pow_,
            "repr": self.repr_, "reversed": self.reversed_, "round": self.round_,
            "sorted": self.sorted_, "sum": self.sum_, "zip": self.zip_,
        }
        functions: dict[str, Any] = {
            **{name: safe_builtins[name] for name in
               ("abs", "bool", "callable", "chr", "divmod", "float", "hex", "len", "oct", "ord")},
            **{name: function for name, (function, _) in constructors.items()},
            **{name: _builtin(name, function) for name, function in guarded.items()},
            "bin": bin, "next": next,
        }
        exceptions = {"ToolCallError": ToolCallError, **{
            name: safe_builtins[name] for name in CATCHABLE_EXCEPTIONS - {"ToolCallError"}}}
        plan_builtins = {**{name: functions[name] for name in SAFE_BUILTINS}, **exceptions}
        namespace: dict[str, Any] = {
            "__builtins__": plan_builtins,
            "_getattr_": self.getattr_, "_getitem_": self.getitem, "_write_": self.write,
            "_getiter_": iter, "_iter_unpack_sequence_": self.iter_unpack_sequence,
            "_unpack_sequence_": self.unpack_sequence, "_apply_": _apply,
            "_inplacevar_": self.inplace,
            TICK: self.tick, FUNCTION: self.function, GENERATOR_FUNCTION: self.generator_function,
            LAZY: self.lazy, ITERATE: self.iterate, MULTIPLY: self.multiply, ADD: self.add,
            POWER: self.power, SHIFT: self.shift, MODULO: self.modulo, KEY: self.key,
            KEYS: self.keys, SET_OPERATION: self.set_operation,
            AUGMENT_ITEM: self.augment_item, FORMAT_VALUE: self.format_value,
            CONCAT: self.concat, CAUGHT: self.caught,
            "parallel": _builtin("parallel", self.parallel_),
            "inputs": MappingProxyType(self.copy_data(dict(inputs), "the inputs")),
        }
        for name, function in bindings.items():
            if not name.isidentifier() or name.startswith("_") or name == "parallel":
                raise ValueError(f"binding name {name!r} cannot be called from plan code")
            namespace[name] = self.bind(name, function)
        return namespace

    # Halting, violations and limits.

    def violate(self, message: str, limit: str | None = None) -> NoReturn:
        """Raise (and remember) a SandboxViolation at the current plan line."""
        line = self._plan_line()
        where = f" (line {line})" if line is not None else ""
        self._halt_with(SandboxViolation(f"{message}{where}", limit=limit, line=line))
        assert self.halt is not None
        raise self.halt

    def _halt_with(self, error: BaseException) -> None:
        with self._lock:
            if self.halt is None:
                self.halt = error

    def _plan_line(self) -> int | None:
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                return frame.f_lineno
            frame = frame.f_back
        return None

    def caught(self) -> None:
        """First statement of every `except` and `finally` block: what may not be handled.

        After a halt, the halt again (no handler runs); a MemoryError becomes the memory
        limit's violation, which no handler of plan code can catch.
        """
        if self.halt is not None:
            raise self.halt
        if isinstance(sys.exc_info()[1], MemoryError):
            self.violate("memory limit exceeded: plan code ran out of memory", "max_memory")

    def check_escaping(self, error: BaseException | None) -> None:
        """At the end: a halt wins over whatever plan code did after it; huge errors are cut."""
        if self.halt is not None and self.halt is not error:
            raise self.halt
        if isinstance(error, MemoryError):
            raise SandboxViolation("memory limit exceeded: plan code ran out of memory",
                                   limit="max_memory") from None
        if isinstance(error, Exception) and not isinstance(error, AgentflowError):
            size = text_size(error, self.limits.max_sequence_length)
            if size > self.limits.max_sequence_length:
                raise SandboxViolation(
                    f"the plan raised {type(error).__name__} with a message of more than "
                    f"{self.limits.max_sequence_length:,} characters",
                    limit="max_sequence_length") from None

    def close(self) -> None:
        """End the execution: no binding call from now on, and no plan code left to run later.

        The plan's unfinished generators are closed here, so their `finally:` blocks run now
        (and find every binding refused) rather than whenever the garbage collector gets to
        them.
        """
        self._halt_with(SandboxViolation("plan code ran after its execution had ended"))
        with self._lock:
            generators = list(self._generators)
        for generator in generators:
            try:
                generator.close()
            except BaseException as error:
                if not isinstance(error, Exception) and error is not self.halt:
                    raise
        if self._memory is not None:
            self._memory.close()

    def tick(self) -> bool:
        """One operation; returns True so that it can sit in a comprehension's `if`."""
        self.operations += 1
        if self.halt is not None or self.operations > self._checkpoint or (
                monotonic() > self.deadline):
            self._checkpoint_reached()
        return True

    def _checkpoint_reached(self) -> None:
        limits = self.limits
        if self.halt is not None:
            raise self.halt
        if self.operations > limits.max_operations:
            self.violate(f"operation budget exceeded: more than {limits.max_operations:,} "
                         "operations (SandboxLimits.max_operations)", "max_operations")
        if monotonic() > self.deadline:
            self.violate(f"time limit exceeded: plan code ran for more than "
                         f"{limits.max_seconds:g}s (SandboxLimits.max_seconds)", "max_seconds")
        self.check_memory()
        self._checkpoint = min(limits.max_operations, self.operations + 64)

    def check_memory(self) -> None:
        """The backstop: the process may not grow by more than `max_memory_growth`."""
        if self._memory is None or self.limits.max_memory_growth is None:
            return
        growth = self._memory.read() - self._memory_baseline
        if growth > self.limits.max_memory_growth:
            self.violate(f"memory limit exceeded: the process grew by {growth >> 20:,} MB "
                         "while plan code ran (SandboxLimits.max_memory_growth="
                         f"{self.limits.max_memory_growth >> 20:,} MB)", "max_memory_growth")

    def check_length(self, length: int, what: str) -> None:
        """Refuse a result of `length` items or characters before it is built."""
        if length > self.limits.max_sequence_length:
            self.violate(f"{what} would have {length:,} items, more than "
                         f"SandboxLimits.max_sequence_length={self.limits.max_sequence_length:,}",
                         "max_sequence_length")
        if length >= _LARGE:
            self.check_memory()

    def check_bits(self, bits: float, what: str) -> None:
        if bits > self.limits.max_int_bits:
            self.violate(f"{what} would have about {bits:,.0f} bits, more than "
                         f"SandboxLimits.max_int_bits={self.limits.max_int_bits:,}",
                         "max_int_bits")

    def check_text(self, value: object, what: str) -> None:
        """Refuse to turn `value` into text when the text could exceed the length limit."""
        limit = self.limits.max_sequence_length
        size = text_size(value, limit)
        if size > limit:
            self.violate(f"{what} could have more than {limit:,} characters "
                         "(SandboxLimits.max_sequence_length)", "max_sequence_length")

    def _note(self, result: Any) -> Any:
        """A result built in one C call: refused when it came out larger than the length
        limit (`.hex()`, `.encode()`, ... whose size is not known before)."""
        if isinstance(result, _SIZED) and len(result) >= _LARGE:
            self.check_length(len(result), "the result")
            self.check_memory()
        return result

    # Calls, depth and lazy iteration.

    def enter(self) -> None:
        self.tick()
        state = self._thread
        if state.depth >= self.limits.max_depth:
            self.violate(f"recursion limit exceeded: more than {self.limits.max_depth} nested "
                         "calls or iterators (SandboxLimits.max_depth)", "max_depth")
        state.depth += 1

    def leave(self) -> None:
        self._thread.depth -= 1

    def function(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a plan `def` or `lambda`: each call counts and nests."""
        enter, leave = self.enter, self.leave

        def call(*args: Any, **kwargs: Any) -> Any:
            enter()
            try:
                return function(*args, **kwargs)
            finally:
                leave()

        return _Callable(call, f"<function {function.__name__}>")

    def generator_function(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a plan generator function: its body runs (and nests) item by item."""

        def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
            self.tick()
            generator = function(*args, **kwargs)
            with self._lock:
                self._generators.add(generator)
            return self._lazy(generator)

        return _Callable(call, f"<function {function.__name__}>")

    def lazy(self, iterable: Iterable[Any]) -> Iterator[Any]:
        return self._lazy(iter(iterable))

    def _lazy(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """Count each item and track nesting while the underlying iterator produces it."""
        enter, leave, thread = self.enter, self.leave, self._thread
        is_generator = isinstance(iterator, GeneratorType)
        try:
            while True:
                enter()
                drawing = thread.drawing if is_generator else None
                if drawing is not None:
                    drawing.append(iterator)  # type: ignore[arg-type]
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    leave()
                    if drawing is not None:
                        drawing.pop()
                yield item
        finally:
            if isinstance(iterator, GeneratorType):
                try:
                    iterator.close()
                except BaseException as error:
                    # A refused call or the halt (raised already elsewhere): closing stays quiet.
                    if error is not self.halt and not isinstance(error, _RefusedInCleanup):
                        raise

    def iterate(self, iterable: Any) -> Any:
        """What C code may consume: materialized values as they are, anything lazy counted."""
        if type(iterable) in _MATERIALIZED or _is_counted(iterable):
            return iterable
        return self._lazy(iter(iterable))

    def unpack_sequence(self, value: Any, spec: dict[str, Any], _: Any) -> list[Any]:
        return _unpack_sequence(value, spec, self.iterate)

    def iter_unpack_sequence(self, value: Any, spec: dict[str, Any], _: Any) -> Iterator[Any]:
        return _iter_unpack_sequence(value, spec, self.iterate)

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
        return _Callable(call, f"<{kind} {name}>")

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
            result = function(position, *args, **kwargs)
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
            json.dumps(copied, allow_nan=False)
        except (TypeError, ValueError) as problem:
            raise error(f"{what} is not JSON data ({problem}); use lists, dicts, strings, "
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
        if depth > _MAX_NESTING:
            self.violate(f"{what} is nested more than {_MAX_NESTING} levels deep")
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

    # Attribute and item access.

    def getattr_(self, obj: Any, name: str) -> Any:
        """`obj.name` in plan code: allow-listed per built-in type, never private or internal."""
        if type(name) is not str:
            raise TypeError("attribute names must be strings")
        if name.startswith("_") or name in FORBIDDEN_ATTRIBUTES:
            self.violate(f"attribute {name!r} is not allowed in plans: it exposes interpreter "
                         "internals")
        if isinstance(obj, type):
            self.violate(f"attribute {name!r} of class {obj.__name__!r} is not allowed: "
                         "classes cannot be inspected in plans")
        allowed = _attributes_of(type(obj))
        if allowed is not None and name in allowed:
            return self.method(obj, name, allowed[name])
        if allowed is None and isinstance(obj, _OPEN_TYPES):
            return _generic_getattr(obj, name)
        if not hasattr(obj, name):
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
        self.violate(f"attribute {name!r} of {type(obj).__name__!r} objects is not available "
                     "in plans")

    def method(self, obj: Any, name: str, kind: str) -> Any:
        """The attribute `name` of a built-in value, wrapped by the guard its `kind` names."""
        attribute = getattr(obj, name)
        if not callable(attribute):
            return attribute
        guard = _GUARDS[kind]
        owner = type(obj).__name__
        return _Callable(guard(self, obj, attribute, f"the result of {owner}.{name}()"),
                         f"<built-in method {name} of {owner} object>")

    def _plain(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._note(method(*args, **kwargs))
        return call

    def _key(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(key: Any, /, *rest: Any) -> Any:
            return method(self.key(key), *rest)
        return call

    def _pad(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(width: int, *rest: Any) -> Any:
            self.check_length(width, what)
            return method(width, *rest)
        return call

    def _expandtabs(self, obj: Any, method: Callable[..., Any],
                    what: str) -> Callable[..., Any]:
        def call(tabsize: int = 8) -> Any:
            tab = "\t" if isinstance(obj, str) else b"\t"
            self.check_length(len(obj) + obj.count(tab) * max(tabsize, 0), what)
            return method(tabsize)
        return call

    def _replace(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(old: Any, new: Any, count: int = -1, /) -> Any:
            found = len(obj) + 1 if not old else obj.count(old)
            found = min(found, count) if count >= 0 else found
            self.check_length(len(obj) + found * (len(new) - len(old)), what)
            return method(old, new, count)
        return call

    def _join(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(iterable: Any, /) -> Any:
            items = iterable if type(iterable) in (list, tuple) else list(self.iterate(iterable))
            try:
                length = sum(map(len, items)) + len(obj) * max(len(items) - 1, 0)
            except TypeError:
                return method(items)  # raises join's own "expected str instance" error
            self.check_length(length, what)
            return method(items)
        return call

    def _format(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return _PlanFormatter(self).vformat(obj, args, kwargs)
        return call

    def _format_map(self, obj: Any, method: Callable[..., Any],
                    what: str) -> Callable[..., Any]:
        def call(mapping: Any, /) -> Any:
            return _PlanFormatter(self).vformat(obj, (), mapping)
        return call

    def _extend(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(iterable: Any, /) -> Any:
            if type(iterable) in _MATERIALIZED:
                self.check_length(len(obj) + len(iterable), what)
            return method(self.iterate(iterable))
        return call

    def _consume(self, obj: Any, method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._note(method(*map(self.keys, args), **kwargs))
        return call

    def _consume_first(self, obj: Any, method: Callable[..., Any],
                       what: str) -> Callable[..., Any]:
        def call(iterable: Any, /, *rest: Any) -> Any:
            return self._note(method(self.keys(iterable), *rest))
        return call

    def getitem(self, obj: Any, key: Any) -> Any:
        if isinstance(obj, type):
            self.violate(f"subscripting the class {obj.__name__!r} is not allowed in plans")
        return self._note(obj[self.key(key)])

    def key(self, value: Any) -> Any:
        """A value about to be hashed: refuse tuples nested deeper than CPython hashes safely."""
        if type(value) is tuple and not _shallow(value):
            self.violate(f"a tuple nested more than {_MAX_NESTING} levels deep cannot be a dict "
                         "key or set element")
        return value

    def keys(self, iterable: Any) -> Any:
        """Values about to be hashed one by one (a set or dict being built from them)."""
        if type(iterable) in _HASHED:
            return iterable
        if type(iterable) in _MATERIALIZED:
            if tuple in map(type, iterable):
                for item in iterable:
                    self.key(item)
            return iterable
        return map(self.key, self.iterate(iterable))

    def write(self, obj: Any) -> Any:
        """Item assignment and deletion: only on lists and dicts (which plan code owns)."""
        if type(obj) in (list, dict):
            return obj
        if isinstance(obj, MappingProxyType):
            self.violate("inputs are read-only; copy them first: data = dict(inputs)")
        self.violate(f"cannot change a {type(obj).__name__!r} object: plans change only lists "
                     "and dicts")

    # Operators.

    def multiply(self, left: Any, right: Any) -> Any:
        self._check_product(left, right)
        return self._note(left * right)

    def _check_product(self, left: Any, right: Any) -> None:
        if isinstance(left, int) and isinstance(right, int):
            if left and right:
                self.check_bits(left.bit_length() + right.bit_length(), "the product")
        elif isinstance(right, int) and isinstance(left, _SEQUENCES):
            self.check_length(len(left) * right, "the repeated sequence")
        elif isinstance(left, int) and isinstance(right, _SEQUENCES):
            self.check_length(len(right) * left, "the repeated sequence")

    def add(self, left: Any, right: Any) -> Any:
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            self.check_length(len(left) + len(right), "the concatenation")
        return self._note(left + right)

    def power(self, base: Any, exponent: Any) -> Any:
        if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0
                and abs(base) > 1):
            bits = exponent if exponent > self.limits.max_int_bits else (
                exponent * math.log2(abs(base)))
            self.check_bits(bits, "the power")
        return base**exponent

    def shift(self, value: Any, amount: Any) -> Any:
        if isinstance(value, int) and isinstance(amount, int) and value and amount > 0:
            self.check_bits(value.bit_length() + amount, "the shifted integer")
        return value << amount

    def modulo(self, left: Any, right: Any) -> Any:
        if isinstance(left, (str, bytes)):
            limit = self.limits.max_sequence_length
            template = left if isinstance(left, str) else left.decode("latin-1")
            self.check_length(percent_format_size(template, right, limit),
                              "the %-formatted string")
        return self._note(left % right)

    def inplace(self, operator_text: str, target: Any, value: Any) -> Any:
        """`name op= value`, with the same guards as the plain operator."""
        if operator_text == "+=":
            if type(target) is list:
                if type(value) in _MATERIALIZED:
                    self.check_length(len(target) + len(value), "the extended list")
                return self._note(_IADD(target, self.iterate(value)))
            return self.add(target, value)
        if operator_text == "*=":
            self._check_product(target, value)
            return self._note(_IMUL(target, value))
        if operator_text in _SET_OPERATORS:
            return self.set_operation(operator_text, target, value)
        guarded = {"**=": self.power, "<<=": self.shift, "%=": self.modulo}.get(operator_text)
        if guarded is not None:
            return guarded(target, value)
        return _INPLACE[operator_text](target, value)

    def set_operation(self, operator_text: str, left: Any, right: Any) -> Any:
        """`|`, `&`, `^`, `-` (and in place): on a dict view, both sides get hashed."""
        if isinstance(left, _DICT_VIEWS) or isinstance(right, _DICT_VIEWS):
            left, right = self.set_(left), self.set_(right)
        return self._note(_SET_OPERATORS[operator_text](left, right))

    def augment_item(self, operator_text: str, container: Any, key: Any, value: Any) -> None:
        """`container[key] op= value`."""
        target = self.write(container)
        self.key(key)
        target[key] = self.inplace(operator_text, target[key], value)

    # f-strings.

    def format_value(self, value: Any, conversion: int, spec: str | None) -> str:
        """One `{value!conversion:spec}` field, its size checked before it is built."""
        if conversion != -1 or type(value) is not str:
            self.check_text(value, "a formatted field")
        if conversion == ord("s"):
            value = str(value)
        elif conversion == ord("r"):
            value = repr(value)
        elif conversion == ord("a"):
            value = ascii(value)
        if spec:
            self.check_length(spec_width(spec), "the formatted field")
        text = format(value, spec or "")
        self._note(text)
        return text

    def concat(self, *pieces: str) -> str:
        self.check_length(sum(map(len, pieces)), "the f-string")
        return "".join(pieces)

    # Built-in functions.

    def isinstance_(self, obj: Any, classinfo: Any) -> bool:
        """isinstance, with the guarded constructors (list, dict, ...) standing for their type."""
        if type(classinfo) is tuple:
            classinfo = tuple(self._constructors.get(item, item) if callable(item) else item
                              for item in classinfo)
        elif callable(classinfo):
            classinfo = self._constructors.get(classinfo, classinfo)
        return isinstance(obj, classinfo)

    def list_(self, iterable: Iterable[Any] = (), /) -> list[Any]:
        return self._note(list(self.iterate(iterable)))  # type: ignore[no-any-return]

    def tuple_(self, iterable: Iterable[Any] = (), /) -> tuple[Any, ...]:
        return self._note(tuple(self.iterate(iterable)))  # type: ignore[no-any-return]

    def set_(self, iterable: Iterable[Any] = (), /) -> set[Any]:
        return self._note(set(self.keys(iterable)))  # type: ignore[no-any-return]

    def frozenset_(self, iterable: Iterable[Any] = (), /) -> frozenset[Any]:
        return self._note(frozenset(self.keys(iterable)))  # type: ignore[no-any-return]

    def dict_(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return self._note(dict(*map(self.keys, args), **kwargs))  # type: ignore[no-any-return]

    def str_(self, *args: Any, **kwargs: Any) -> str:
        if len(args) == 1 and not kwargs and type(args[0]) is not str:
            self.check_text(args[0], "str()")
        return str(*args, **kwargs)

    def repr_(self, obj: Any, /) -> str:
        self.check_text(obj, "repr()")
        return repr(obj)

    def int_(self, *args: Any, **kwargs: Any) -> int:
        if args and isinstance(args[0], (str, bytes)):
            self.check_bits(len(args[0]) * 3.33, "int()")
        return int(*args, **kwargs)

    def range_(self, *args: int) -> range:
        numbers = range(*args)
        try:
            length = len(numbers)
        except OverflowError:
            length = sys.maxsize
        self.check_length(length, "the range")
        return numbers

    def round_(self, number: Any, ndigits: Any = None) -> Any:
        if isinstance(number, int) and isinstance(ndigits, int):
            self.check_bits(abs(ndigits) * 3.33, "round()")
        return round(number) if ndigits is None else round(number, ndigits)

    def pow_(self, base: Any, exponent: Any, modulus: Any = None) -> Any:
        if modulus is None:
            return self.power(base, exponent)
        if isinstance(exponent, int) and isinstance(modulus, int):
            self.check_bits(exponent.bit_length() * modulus.bit_length() / 64, "pow()")
        return pow(base, exponent, modulus)

    def sorted_(self, iterable: Iterable[Any], /, *, key: Any = None,
                reverse: bool = False) -> list[Any]:
        return sorted(self.iterate(iterable), key=key, reverse=reverse)

    def sum_(self, iterable: Iterable[Any], /, start: Any = 0) -> Any:
        items = self.iterate(iterable)
        if isinstance(start, (int, float, complex)):
            return sum(items, start)
        total = start
        for item in items:
            total = self.add(total, item)
        return total

    def min_(self, *args: Any, **kwargs: Any) -> Any:
        return min(*(map(self.iterate, args) if len(args) == 1 else args), **kwargs)

    def max_(self, *args: Any, **kwargs: Any) -> Any:
        return max(*(map(self.iterate, args) if len(args) == 1 else args), **kwargs)

    def any_(self, iterable: Iterable[Any], /) -> bool:
        return any(self.iterate(iterable))

    def all_(self, iterable: Iterable[Any], /) -> bool:
        return all(self.iterate(iterable))

    def iter_(self, iterable: Iterable[Any], /) -> Iterator[Any]:
        return iterable if _is_counted(iterable) else self.lazy(iterable)  # type: ignore[return-value]

    def enumerate_(self, iterable: Iterable[Any], start: int = 0) -> Iterator[Any]:
        return self._lazy(enumerate(iterable, start))

    def zip_(self, *iterables: Iterable[Any], strict: bool = False) -> Iterator[Any]:
        return self._lazy(zip(*iterables, strict=strict))

    def map_(self, function: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return self._lazy(map(function, *iterables))

    def filter_(self, function: Any, iterable: Iterable[Any], /) -> Iterator[Any]:
        return self._lazy(filter(function, iterable))

    def reversed_(self, sequence: Any, /) -> Iterator[Any]:
        return self._lazy(reversed(sequence))


_LAZY_CODE = _Execution._lazy.__code__
_Execution._lazy.__qualname__ = "iterator"  # what reprs of the generators it makes say
_Guard = Callable[[_Execution, Any, Callable[..., Any], str], Callable[..., Any]]
_GUARDS: dict[str, _Guard] = {
    "plain": _Execution._plain, "key": _Execution._key, "pad": _Execution._pad,
    "expandtabs": _Execution._expandtabs, "replace": _Execution._replace,
    "join": _Execution._join, "format": _Execution._format,
    "format_map": _Execution._format_map, "extend": _Execution._extend,
    "consume": _Execution._consume, "consume_first": _Execution._consume_first,
}


def _is_counted(value: object) -> bool:
    """Whether `value` is one of our counting iterators."""
    return type(value) is GeneratorType and value.gi_code is _LAZY_CODE


def _check_stack_room(limits: SandboxLimits) -> None:
    """Plan code must hit `max_depth` well before the interpreter's own recursion limit.

    Each level of plan depth takes at most three interpreter frames; copying data in and out
    takes up to `_MAX_NESTING` more, and bindings need room of their own.
    """
    depth = 0
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    needed = depth + 3 * limits.max_depth + _MAX_NESTING + 200
    if needed > sys.getrecursionlimit():
        raise ValueError(f"SandboxLimits.max_depth={limits.max_depth} needs an interpreter "
                         f"recursion limit of at least {needed} here (sys.getrecursionlimit() "
                         f"is {sys.getrecursionlimit()}); lower max_depth")


def _shallow(value: tuple[Any, ...]) -> bool:
    """Whether the tuples nested in `value` stay within `_MAX_NESTING` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_NESTING:
            return False
        stack.extend((element, depth + 1) for element in item if type(element) is tuple)
    return True


def _apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """RestrictedPython's hook for calls with `*args` or `**kwargs` (already counted)."""
    return function(*args, **kwargs)


class _ResidentMemory:
    """The process's resident set size, read from /proc (None-safe where that is missing)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def read(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
