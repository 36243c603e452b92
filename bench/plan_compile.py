"""Time `compile_plan` (validation and compilation of a JSON step-graph plan).

Two plans, as in bench/step_overhead.py: a 1,000-step sequential chain of no-op tool calls
(each step's argument is the previous step's output) and one foreach step over a static list
of 1,000 items. Prints the median over repetitions of the total compile time and of the time
per step (per item for the foreach plan); machines here are shared and noisy. Then the
scaling: the chain at ten times the steps, and the ratio of time per step (about 1 when
compilation is linear; tests/test_plan_validation.py checks the same by counting calls).

    python bench/plan_compile.py [--steps 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow.plan import compile_plan
from agentflow.tools import Tool
from bench.step_overhead import foreach_plan, noop, sequential_plan

TOOLS: dict[str, Tool] = {noop.name: noop}


def compile_seconds(plan: dict[str, Any], repeat: int) -> list[float]:
    compile_plan(plan, TOOLS)  # warm up: imports, schema caches of the process
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        compile_plan(plan, TOOLS)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()
    n = options.steps
    print(f"compile_plan, median of {options.repeat} runs")
    print(f"{'plan':<32} {'total':>10} {'per step':>10}")
    for label, plan in ((f"sequential, {n} steps", sequential_plan(n)),
                        (f"foreach over {n} static items", foreach_plan(n))):
        median = statistics.median(compile_seconds(plan, options.repeat))
        print(f"{label:<32} {median * 1e3:>8.2f}ms {median / n * 1e6:>8.2f}us")
    small = statistics.median(compile_seconds(sequential_plan(n), options.repeat)) / n
    large = statistics.median(compile_seconds(sequential_plan(10 * n), 3)) / (10 * n)
    print(f"{f'sequential, {10 * n} steps':<32} {large * 10 * n * 1e3:>8.2f}ms "
          f"{large * 1e6:>8.2f}us  (per-step ratio to {n} steps: {large / small:.2f})")


if __name__ == "__main__":
    main()
