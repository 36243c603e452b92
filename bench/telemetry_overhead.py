"""What tracing costs per step: a sequential plan of no-op tools run untraced, traced into a
provider that drops every span (the cost of making spans), and traced into memory.

    python bench/telemetry_overhead.py [--steps 300] [--repeat 5]

Prints the median time per step of each mode and its ratio to the untraced run measured in
the same process, on the same disk (durability "normal", so commits do not drown the rest).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow.engine.telemetry import instrument, uninstrument
from bench.step_overhead import per_step_seconds, sequential_plan


def in_memory() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider


MODES = {"untraced": None, "traced, spans dropped": TracerProvider,
         "traced, in memory": in_memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    plan = sequential_plan(options.steps)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(options.repeat):
            for mode, make in MODES.items():  # interleaved: load changes hit every mode
                if make is None:
                    uninstrument()
                else:
                    instrument(make())
                path = Path(scratch) / f"{rep}-{len(times[mode])}-{mode[:6]}.db"
                times[mode].append(per_step_seconds(plan, options.steps, "normal", path))
        uninstrument()
    base = statistics.median(times["untraced"])
    print(f"{'mode':<24} {'per step':>10} {'ratio':>6}")
    for mode, samples in times.items():
        median = statistics.median(samples)
        print(f"{mode:<24} {median * 1e6:>8.1f}us {median / base:>6.2f}")


if __name__ == "__main__":
    main()
