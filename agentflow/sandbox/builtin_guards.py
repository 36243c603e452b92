"""The guarded built-in functions of plans: `list`, `range`, `sum`, `sorted`, `zip`, ...

Each is the Python built-in with its result's size checked before (or as) it is built, and
anything lazy it consumes counted, through the value guards of `agentflow.sandbox.guards`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agentflow.sandbox.guards import ValueGuards
from agentflow.sandbox.shown import plain_text


class BuiltinGuards(ValueGuards):
    """The built-in functions plan code calls, guarded like the operators they build on."""

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
        return plain_text(str(*args, **kwargs))

    def repr_(self, obj: Any, /) -> str:
        self.check_text(obj, "repr()")
        return plain_text(repr(obj))

    def int_(self, *args: Any, **kwargs: Any) -> int:
        if args and isinstance(args[0], (str, bytes)):
            base = args[1] if len(args) > 1 else kwargs.get("base", 10)
            # a digit of base 36 carries 5.2 bits; base 0 reads a prefix, at most base 16
            digit_bits = math.log2(base) if isinstance(base, int) and 2 <= base <= 36 else 4
            self.check_bits(len(args[0]) * max(digit_bits, 3.33), "int()")
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

