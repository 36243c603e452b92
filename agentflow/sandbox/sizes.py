"""Size estimates the sandbox makes before it builds a string: cheap upper bounds, never exact.

Turning a value into text (`str(x)`, an f-string field, `%`-formatting) can cost far more
memory than the value holds: a list of a thousand references to one 10 MB string is 8 KB, its
repr is 10 GB. These functions bound the text without building it, so the sandbox can refuse
first.
"""

from __future__ import annotations

import re
from types import MappingProxyType

_SEQUENCES = (list, tuple, set, frozenset)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)
_SPEC_NUMBER = re.compile(r"\d+")


class _Leave:
    """Marks the end of a container on the walk stack (to tell cycles from shared values)."""

    __slots__ = ("ident",)

    def __init__(self, ident: int) -> None:
        self.ident = ident


def text_size(value: object, limit: int) -> int:
    """An upper bound of `len(repr(value))` (and of `len(str(value))`).

    Walks containers without recursion and stops as soon as the bound passes `limit`, so the
    walk itself costs at most `limit` steps. A container met again inside itself counts as
    `[...]`, as repr prints it.
    """
    total = 0
    stack: list[object] = [value]
    active: set[int] = set()
    strings: dict[int, int] = {}  # a string referenced many times is measured once
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, _Leave):
            active.discard(item.ident)
        elif isinstance(item, str):
            size = strings.get(id(item))
            if size is None:
                factor = 1 if item.isprintable() else 4 if item.isascii() else 10
                size = strings[id(item)] = (factor * len(item) + 2 + item.count("\\")
                                            + item.count("'"))
            total += size
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 14
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 6
        elif isinstance(item, (float, complex)) or item is None:
            total += 52
        elif isinstance(item, (*_SEQUENCES, dict, MappingProxyType, BaseException)):
            if id(item) in active:
                total += 5
                continue
            active.add(id(item))
            stack.append(_Leave(id(item)))
            if isinstance(item, BaseException):
                total += len(type(item).__name__) + 2
                stack.append(item.args)
            elif isinstance(item, (dict, MappingProxyType)):
                total += 16 + 4 * len(item)
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                total += 13 + 2 * len(item)
                stack.extend(item)
        else:
            total += len(repr(item))
    return total


def spec_width(spec: str) -> int:
    """The largest number in a format spec (width or precision): what it can pad a field to."""
    numbers = _SPEC_NUMBER.findall(spec)
    if any(len(number) > 18 for number in numbers):
        return 10**18
    return max((int(number) for number in numbers), default=0)


def percent_format_size(template: str, arguments: object, limit: int) -> int:
    """An upper bound of `len(template % arguments)` for a str or bytes template."""
    if isinstance(arguments, tuple):
        values: list[object] = list(arguments)
    elif isinstance(arguments, (dict, MappingProxyType)):
        values = list(arguments.values())
    else:
        values = [arguments]
    distinct = {id(value): value for value in values}.values()
    largest = max((text_size(value, limit) for value in distinct), default=0)
    biggest_int = max((abs(value) for value in values if isinstance(value, int)), default=0)
    total = len(template)
    for match in _PERCENT_SPEC.finditer(template):
        if match.group(3) == "%":
            continue
        for number in match.group(1, 2):
            if number == "*":
                total += biggest_int
            elif number:
                total += spec_width(number)
        total += largest
        if total > limit:
            break
    return total
