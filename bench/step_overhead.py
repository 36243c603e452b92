"""Per-step overhead of the durable executor against raw SQLite commits.

Runs a 1,000-step sequential plan and a 1,000-item foreach of no-op tools, and divides the
time per step (per item) by the time of one raw SQLite commit (BEGIN; INSERT; COMMIT of a
~100-byte row) measured in the same run, on the same disk, with the same durability PRAGMAs.
The figures are medians over repetitions: machines here are shared and noisy.

    python bench/step_overhead.py [--steps 1000] [--repeat 5] [--durability normal|full|both]

Durability "normal" (the default store setting: WAL, synchronous=NORMAL) survives a process
crash; on power loss the last commits may be lost, never corrupted. "full" (synchronous=FULL)
also survives power loss, at one fsync per commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import Engine, tool
from agentflow.plan import compile_plan
from agentflow.store.sqlite import SQLiteStore
from bench.raw_sqlite import raw_commit_seconds


@tool(side_effects=False)
def noop(x: int) -> int:
    return x


def sequential_plan(steps: int) -> dict[str, Any]:
    plan_steps: list[dict[str, Any]] = [{"id": "s0", "tool": "noop", "args": {"x": 0}}]
    for i in range(1, steps):
        plan_steps.append({"id": f"s{i}", "tool": "noop",
                           "args": {"x": f"${{steps.s{i - 1}.output}}"}})
    return {"format": "agentflow/v1", "name": "sequential", "steps": plan_steps,
            "outputs": {"last": f"${{steps.s{steps - 1}.output}}"}}


def foreach_plan(items: int) -> dict[str, Any]:
    return {"format": "agentflow/v1", "name": "fanout",
            "steps": [{"id": "each", "tool": "noop", "foreach": list(range(items)),
                       "args": {"x": "${item}"}}],
            "outputs": {"n": "${steps.each.output}"}}


def per_step_seconds(plan: dict[str, Any], steps: int, durability: str, path: Path) -> float:
    """Seconds per step of one execution of `plan` on a fresh store (validation included)."""
    engine = Engine(SQLiteStore(str(path), durability))  # type: ignore[arg-type]
    start = time.perf_counter()
    result = engine.execute(plan, tools=[noop])
    elapsed = time.perf_counter() - start
    assert result.status == "completed", result.error
    engine.close()
    return elapsed / steps


def compile_seconds(plan: dict[str, Any], steps: int) -> float:
    start = time.perf_counter()
    compile_plan(plan, {"noop": noop})
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--durability", choices=["normal", "full", "both"], default="both")
    options = parser.parse_args()
    modes = ["full", "normal"] if options.durability == "both" else [options.durability]
    sequential, fanout = sequential_plan(options.steps), foreach_plan(options.steps)
    print(f"{options.steps} steps; median of {options.repeat} rounds, each round measuring the "
          "raw baseline and both plans back to back (ratios are per round, then the median)")
    print(f"{'durability':<10} {'raw commit':>11} {'sequential/step':>16} {'ratio':>6} "
          f"{'(validation)':>13} {'foreach/item':>13} {'ratio':>6}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", ".")) as tmp:
        workdir = Path(tmp)
        for durability in modes:
            raws, seqs, fans, checks = [], [], [], []
            for rep in range(options.repeat):
                raws.append(statistics.median(raw_commit_seconds(
                    str(workdir / f"raw-{durability}-{rep}.db"), durability,  # type: ignore[arg-type]
                    options.steps)))
                seqs.append(per_step_seconds(sequential, options.steps, durability,
                                             workdir / f"seq-{durability}-{rep}.db"))
                fans.append(per_step_seconds(fanout, options.steps, durability,
                                             workdir / f"fan-{durability}-{rep}.db"))
                checks.append(compile_seconds(sequential, options.steps))
            raw, seq, fan = (statistics.median(x) for x in (raws, seqs, fans))
            seq_ratio = statistics.median(s / r for s, r in zip(seqs, raws, strict=True))
            fan_ratio = statistics.median(f / r for f, r in zip(fans, raws, strict=True))
            print(f"{durability:<10} {raw * 1e6:>9.1f}us {seq * 1e6:>14.1f}us {seq_ratio:>6.2f} "
                  f"{statistics.median(checks) * 1e6:>11.1f}us {fan * 1e6:>11.1f}us "
                  f"{fan_ratio:>6.2f}")


if __name__ == "__main__":
    main()
