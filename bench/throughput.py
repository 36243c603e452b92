"""Throughput of one engine process: many concurrent runs, in steps per second.

    python bench/throughput.py [--runs 1000] [--steps 10] [--repeat 3] [--durability both]

For each durability (`full`, the default, and `normal`), in one process and one store:

- `concurrent`: RUNS runs of a STEPS-step sequential plan of no-op tools, all started at
  once on one event loop (`asyncio.gather` of `Engine.aexecute`), in steps per second;
- `starts`: RUNS runs of a plan whose first step waits for an approval, started at once:
  runs started (until their first wait) per second;
- `lone run`: one run of 1,000 sequential steps, time per step (the plan is validated
  before, by a first run: validation is once per plan, `bench/step_overhead.py` times it);
- the baseline, measured in the same round on the same disk: one raw SQLite commit
  (`BEGIN; INSERT; COMMIT` of a ~100-byte row, the store's PRAGMAs), as commits per second.

Ratios are taken per round (against that round's raw commit), then the median; min and max
are shown, and so is the CPU time per step (the process's, all threads): on a machine busy
with other work, time per step grows with the load, CPU time much less. Machines here are
shared and noisy. For reference, Cloudflare Workflows advertises 300 new instances per
second per account.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import Engine
from agentflow.store.sqlite import Durability
from bench.raw_sqlite import raw_commit_seconds
from bench.step_overhead import noop, sequential_plan

GATED: dict[str, Any] = {"format": "agentflow/v1", "name": "gated", "steps": [
    {"id": "gate", "approval": {"prompt": "go?"}},
    {"id": "after", "tool": "noop", "args": {"x": 1}, "after": ["gate"]}]}


async def concurrent_seconds(engine: Engine, plan: dict[str, Any], runs: int,
                             prefix: str, expected: str) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.aexecute(plan, tools=[noop], run_id=f"{prefix}{i}")
                                     for i in range(runs)))
    seconds = time.perf_counter() - started
    assert all(r.status == expected for r in results), {r.status for r in results}
    return seconds


def round_of(directory: str, durability: Durability, runs: int, steps: int,
             index: int) -> dict[str, float]:
    raw = statistics.median(raw_commit_seconds(f"{directory}/raw-{durability}.db", durability,
                                               300))
    engine = Engine(f"sqlite:///{directory}/{durability}-{index}.db?durability={durability}")
    try:
        plan = sequential_plan(steps)
        cpu = time.process_time()
        concurrent = asyncio.run(concurrent_seconds(engine, plan, runs, "c", "completed"))
        cpu = time.process_time() - cpu
        starts = asyncio.run(concurrent_seconds(engine, GATED, runs, "g", "waiting"))
        lone_plan = sequential_plan(1000)  # validated once, before it is timed
        assert engine.execute(lone_plan, tools=[noop], run_id="warm").status == "completed"
        lone_started, lone_cpu = time.perf_counter(), time.process_time()
        assert engine.execute(lone_plan, tools=[noop], run_id="lone").status == "completed"
        lone = (time.perf_counter() - lone_started) / 1000
        lone_cpu = (time.process_time() - lone_cpu) / 1000
    finally:
        engine.close()
    return {"raw_rate": 1 / raw, "steps_per_second": runs * steps / concurrent,
            "starts_per_second": runs / starts, "lone_step": lone, "raw": raw,
            "concurrent_cpu": cpu / (runs * steps), "lone_cpu": lone_cpu}


def spread(values: list[float], fmt: str) -> str:
    return (f"{format(statistics.median(values), fmt)} "
            f"[{format(min(values), fmt)}-{format(max(values), fmt)}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--durability", choices=["full", "normal", "both"], default="both")
    options = parser.parse_args()
    durabilities: list[Durability] = (["full", "normal"] if options.durability == "both"
                                      else [options.durability])
    print(f"{options.runs} concurrent runs of a {options.steps}-step plan, one process; "
          f"{options.repeat} rounds, durabilities alternated; median [min-max]")
    rounds: dict[str, list[dict[str, float]]] = {d: [] for d in durabilities}
    # In the working directory (or BENCH_DIR), not /tmp: a tmpfs would make fsync free.
    with tempfile.TemporaryDirectory(prefix="throughput-",
                                     dir=os.environ.get("BENCH_DIR", ".")) as directory:
        for index in range(options.repeat):
            for durability in durabilities:
                rounds[durability].append(round_of(directory, durability, options.runs,
                                                   options.steps, index))
    medians: dict[str, dict[str, float]] = {}
    for durability, results in rounds.items():
        def column(name: str) -> list[float]:
            return [r[name] for r in results]  # noqa: B023 (used at once)

        ratio = [r["steps_per_second"] / r["raw_rate"] for r in results]
        start_ratio = [r["starts_per_second"] / r["raw_rate"] for r in results]
        lone = [r["lone_step"] / r["raw"] for r in results]
        print(f"\ndurability={durability}")
        print(f"  raw single commits        {spread(column('raw_rate'), ',.0f')} /s")
        print(f"  concurrent runs, steps    {spread(column('steps_per_second'), ',.0f')} /s"
              f"   = {spread(ratio, '.2f')} x the raw commit rate")
        print(f"  run starts (until a wait) {spread(column('starts_per_second'), ',.0f')} /s"
              f"   = {spread(start_ratio, '.2f')} x the raw commit rate")
        lone_us = [x * 1e6 for x in column("lone_step")]
        print(f"  lone run, per step        {spread(lone_us, ',.0f')} us"
              f" = {spread(lone, '.2f')} x one raw commit")
        concurrent_cpu = [x * 1e6 for x in column("concurrent_cpu")]
        lone_cpu = [x * 1e6 for x in column("lone_cpu")]
        print(f"  CPU per step (process time, every thread): concurrent "
              f"{spread(concurrent_cpu, ',.0f')} us, lone {spread(lone_cpu, ',.0f')} us")
        medians[durability] = {"concurrent": statistics.median(ratio),
                               "lone": statistics.median(lone)}
    print("\nissue #12's checks, on the medians above:")
    for durability, wanted in (("full", "concurrent >= 3x the raw commit rate, lone <= 1.5x"),
                               ("normal", "lone <= 3x one raw commit")):
        if durability in medians:
            found = medians[durability]
            print(f"  {durability}: want {wanted}; found concurrent "
                  f"{found['concurrent']:.2f}x, lone {found['lone']:.2f}x")


if __name__ == "__main__":
    main()
