"""What restricted-Python plan code may name: one list shared by the validator and the sandbox.

The validator (`agentflow.sandbox.compiler`) rejects anything not listed here before a plan runs;
the runtime namespace (`agentflow.sandbox.runtime`) exposes exactly these names, so a name that
slipped past validation still finds nothing to call.
"""

from __future__ import annotations

from RestrictedPython.transformer import INSPECT_ATTRIBUTES

#: The plan built-ins of DESIGN §8, provided by the executor as bindings (`inputs` by the
#: sandbox), and `run_plan(name, **inputs)`, which runs a registered plan as a child run.
PLAN_BUILTINS: frozenset[str] = frozenset(
    {"approve", "sleep", "wait_for_event", "now", "parallel", "inputs", "run_plan"})

#: Python built-ins available to plans; the sandbox guards those that can blow up.
SAFE_BUILTINS: frozenset[str] = frozenset({
    "abs", "all", "any", "bin", "bool", "callable", "chr", "dict", "divmod", "enumerate",
    "filter", "float", "frozenset", "hex", "int", "isinstance", "iter", "len", "list", "map",
    "max", "min", "next", "oct", "ord", "pow", "range", "repr", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "zip",
})

#: The only exceptions plan code may name (raise or catch). All derive from `Exception`, so no
#: `except` clause can catch the executor's `Suspension`, which derives from `BaseException`.
CATCHABLE_EXCEPTIONS: frozenset[str] = frozenset({
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "IndexError",
    "KeyError", "LookupError", "NotImplementedError", "OverflowError", "RuntimeError",
    "StopIteration", "TypeError", "ValueError", "ZeroDivisionError", "ToolCallError",
})

_DYNAMIC_CODE = "dynamic code is not allowed in plans"
_INTROSPECTION = "introspection is not allowed in plans"
_NO_IO = "plans have no direct I/O; call a tool instead"
_INTERACTIVE = "interactive helpers are not available in plans"
_NOT_PROVIDED = "it is not available in plans"

#: Python built-ins a plan might reach for, with the reason each one is refused.
UNAVAILABLE_BUILTINS: dict[str, str] = {
    "exec": _DYNAMIC_CODE, "eval": _DYNAMIC_CODE, "compile": _DYNAMIC_CODE,
    "open": _NO_IO, "input": _NO_IO,
    "print": "plans have no output stream; return the value instead",
    "getattr": _INTROSPECTION, "setattr": _INTROSPECTION, "delattr": _INTROSPECTION,
    "hasattr": _INTROSPECTION, "vars": _INTROSPECTION, "dir": _INTROSPECTION,
    "globals": _INTROSPECTION, "locals": _INTROSPECTION, "type": _INTROSPECTION,
    "super": _INTROSPECTION, "object": _INTROSPECTION, "id": _INTROSPECTION,
    "issubclass": _INTROSPECTION, "classmethod": _INTROSPECTION,
    "staticmethod": _INTROSPECTION, "property": _INTROSPECTION,
    "breakpoint": _INTERACTIVE, "help": _INTERACTIVE, "exit": _INTERACTIVE,
    "quit": _INTERACTIVE, "copyright": _INTERACTIVE, "credits": _INTERACTIVE,
    "license": _INTERACTIVE,
    "memoryview": _NOT_PROVIDED, "bytearray": _NOT_PROVIDED, "bytes": _NOT_PROVIDED,
    "format": "use an f-string or str.format instead", "ascii": "use repr() instead",
    "hash": _NOT_PROVIDED, "slice": _NOT_PROVIDED, "complex": _NOT_PROVIDED,
    "BaseException": "it would catch the executor's own signals; catch Exception instead",
    "GeneratorExit": "it would catch the executor's own signals; catch Exception instead",
    "KeyboardInterrupt": "it would catch the executor's own signals; catch Exception instead",
    "SystemExit": "it would catch the executor's own signals; catch Exception instead",
}

#: Attributes refused wherever they appear: they expose frames, code and the class hierarchy.
FORBIDDEN_ATTRIBUTES: frozenset[str] = INSPECT_ATTRIBUTES | {"mro"}

# Hooks the compiler injects into plan code. User code can never spell them (RestrictedPython
# and our own checks reject every name that starts with "_"), so they cannot be shadowed.
MAIN = "_af_main_"  # the module body, wrapped into a function so `return` sets the outputs
TICK = "_af_tick_"  # one operation: top of every loop body and comprehension iteration
FUNCTION = "_af_function_"  # wraps each def and lambda: op count and call depth
GENERATOR_FUNCTION = "_af_generator_function_"  # wraps a def containing `yield`
LAZY = "_af_lazy_"  # wraps a generator expression: op count and depth per item
ITERATE = "_af_iterate_"  # `*x` and `yield from x`: items produced in C are counted
MULTIPLY = "_af_multiply_"
ADD = "_af_add_"
POWER = "_af_power_"
SHIFT = "_af_shift_"
MODULO = "_af_modulo_"
CAUGHT = "_af_caught_"  # first statement of every `except` and `finally` block
AUGMENT_ITEM = "_af_augment_item_"  # `a[k] += v`, which RestrictedPython alone refuses
FORMAT_VALUE = "_af_format_value_"  # one `{...}` field of an f-string
CONCAT = "_af_concat_"  # the pieces of an f-string, size-checked before joining
# CPython hashes nested tuples recursively in C, with no recursion check: a deep enough tuple
# used as a key crashes the process. Every value about to be hashed passes one of these.
KEY = "_af_key_"  # a dict key, set element or `in` operand
KEYS = "_af_keys_"  # `{*items}`: each item becomes a set element
DISPLAY = "_af_display_"  # `[*a, *b]`, `(*a, *b)`: built part by part, its length checked
SET_OPERATION = "_af_set_operation_"  # `|`, `&`, `^`, `-`: set operators of dict views hash
