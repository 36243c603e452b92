"""Operation counts that stand in for wall-clock time in tests.

A test that says "this is fast" or "this is linear" must not time itself: a loaded machine
makes any time limit flaky, and a fast one hides a quadratic loop. `python_calls` counts the
Python-level function calls (`sys.setprofile` "call" events) a piece of code makes. The count
depends on the algorithm only, so tests compare counts across input sizes; the speed itself
is measured in `bench/`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def python_calls(work: Callable[[], Any]) -> int:
    """How many Python function calls `work()` makes in this thread."""
    calls = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    previous = sys.getprofile()
    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(previous)
    return calls
