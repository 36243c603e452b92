"""The guarded operations on plan values: attributes, items, operators, f-strings.

Plan code never touches a built-in value directly where that could blow up or reach the
host: RestrictedPython and our compiler route attribute and item access, the operators that
can build huge results and f-strings through these methods (the built-in functions, in
`agentflow.sandbox.builtin_guards`, build on them). Each allows what ordinary Python allows
(attributes from a per-type allow-list) and refuses, before it is built, a result larger
than the execution's `SandboxLimits`. `ValueGuards` is a part of the execution
(`agentflow.sandbox.runtime`), which provides the halting and counting it relies on.
"""

from __future__ import annotations

import math
import operator
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from types import MappingProxyType
from typing import Any, NoReturn

from RestrictedPython.Guards import safer_getattr_raise

from agentflow.sandbox.attributes import _OPEN_TYPES, PlanFunction, _attributes_of
from agentflow.sandbox.limits import SandboxLimits
from agentflow.sandbox.policy import FORBIDDEN_ATTRIBUTES
from agentflow.sandbox.shown import plain_text
from agentflow.sandbox.sizes import percent_format_size, spec_width, text_size

# RestrictedPython's helper is untyped; this alias gives it a signature.
_generic_getattr: Callable[[object, str], Any] = safer_getattr_raise

MATERIALIZED: frozenset[type] = frozenset({
    list, tuple, str, bytes, dict, set, frozenset, MappingProxyType,
    type({}.keys()), type({}.values()), type({}.items()),
})
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_LARGE = 1 << 16  # results at least this long trigger a memory check
MAX_NESTING = 200  # nesting of data copied in or out (kept far below the recursion limit)
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


class _PlanFormatter(string.Formatter):
    """str.format for plans: fields name arguments only, sizes checked before formatting."""

    def __init__(self, execution: ValueGuards) -> None:
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


class ValueGuards(ABC):
    """The guards of one execution; the execution supplies its limits and how to halt."""

    limits: SandboxLimits
    _constructors: dict[Any, type]

    @abstractmethod
    def violate(self, message: str, limit: str | None = None) -> NoReturn:
        """Raise (and remember) a SandboxViolation at the current plan line."""

    @abstractmethod
    def check_memory(self) -> None:
        """Refuse to go on when the memory limit is exceeded."""

    @abstractmethod
    def iterate(self, iterable: Any) -> Any:
        """What C code may consume: materialized values as they are, anything lazy counted."""

    @abstractmethod
    def lazy(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """An iterator whose items are counted."""

    @abstractmethod
    def _lazy(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """`iterator` with its items counted."""

    @abstractmethod
    def set_(self, iterable: Iterable[Any] = (), /) -> set[Any]:
        """The built-in `set` (`agentflow.sandbox.builtin_guards`): its items hashed safely."""

    # Sizes.

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
            kind = "function" if isinstance(obj, PlanFunction) else type(obj).__name__
            raise AttributeError(f"{kind!r} object has no attribute {name!r}")
        self.violate(f"attribute {name!r} of {type(obj).__name__!r} objects is not available "
                     "in plans")

    def method(self, obj: Any, name: str, kind: str) -> Any:
        """The attribute `name` of a built-in value, wrapped by the guard its `kind` names."""
        attribute = getattr(obj, name)
        if not callable(attribute):
            return attribute
        guard = _GUARDS[kind]
        owner = type(obj).__name__
        return PlanFunction(guard(self, obj, attribute, f"the result of {owner}.{name}()"),
                            f"<built-in method {name} of {owner} object>", f"{owner}.{name}")

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
            if type(iterable) in MATERIALIZED:
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
            self.violate(f"a tuple nested more than {MAX_NESTING} levels deep cannot be a dict "
                         "key or set element")
        return value

    def keys(self, iterable: Any) -> Any:
        """Values about to be hashed one by one (a set or dict being built from them)."""
        if type(iterable) in _HASHED:
            return iterable
        if type(iterable) in MATERIALIZED:
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
        result = left % right
        return self._note(plain_text(result) if isinstance(result, str) else result)

    def inplace(self, operator_text: str, target: Any, value: Any) -> Any:
        """`name op= value`, with the same guards as the plain operator."""
        if operator_text == "+=":
            if type(target) is list:
                if type(value) in MATERIALIZED:
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

    def display(self, kind: str, *parts: Any) -> list[Any] | tuple[Any, ...]:
        """`[*a, *b]` (see `transform._display`): `parts` alternate plain elements (a tuple)
        and what a `*` unpacks; the length is checked before each part that has one is
        added, and after each lazy one (whose items the operation budget counts)."""
        items: list[Any] = []
        for part in parts:
            if type(part) in MATERIALIZED:
                self.check_length(len(items) + len(part), f"the {kind}")
            items.extend(part)
            self.check_length(len(items), f"the {kind}")
        return items if kind == "list" else tuple(items)

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
        text = plain_text(format(value, spec or ""))
        self._note(text)
        return text

    def concat(self, *pieces: str) -> str:
        self.check_length(sum(map(len, pieces)), "the f-string")
        return "".join(pieces)


_Guard = Callable[[ValueGuards, Any, Callable[..., Any], str], Callable[..., Any]]
_GUARDS: dict[str, _Guard] = {
    "plain": ValueGuards._plain, "key": ValueGuards._key, "pad": ValueGuards._pad,
    "expandtabs": ValueGuards._expandtabs, "replace": ValueGuards._replace,
    "join": ValueGuards._join, "format": ValueGuards._format,
    "format_map": ValueGuards._format_map, "extend": ValueGuards._extend,
    "consume": ValueGuards._consume, "consume_first": ValueGuards._consume_first,
}


def _shallow(value: tuple[Any, ...]) -> bool:
    """Whether the tuples nested in `value` stay within `MAX_NESTING` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return False
        stack.extend((element, depth + 1) for element in item if type(element) is tuple)
    return True


