"""The limits of one execution of a code plan, kept with the run."""

from __future__ import annotations

from dataclasses import dataclass


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
