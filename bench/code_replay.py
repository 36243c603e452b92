"""Replaying a 10,000-call code plan from the journal, against the same calls undurable.

The plan is a loop calling a no-op tool, then an approval, so every execution ends waiting:

    for i in range(CALLS):
        noop(x=i)
    approve("done?")

Measured, each as the median of several rounds, per tool call:

- plain loop: the tool's function called CALLS times in a Python loop (no agentflow at all);
- sandbox: the plan through `run_code_plan` with trivial bindings (no journal, no store), to
  separate the cost of restricted Python from the cost of durability;
- durable, fresh: `Engine.execute` on a new store: each call journaled (intent committed
  before the call, result with the next commit), then the run waits at the approval;
- replay: `Engine.resume` of that waiting run: the program runs again from the top, all
  CALLS calls are answered from the journal (nothing executes), and it waits again.

Both engine figures include validating the plan and reading the run's rows; the durable
ones depend on the disk (set BENCH_DIR to put the stores elsewhere). With `--isolation
process` the engine runs plan code in isolates, and the CPU each call costs is given on
both sides: the engine's process time and the isolate's (its exit is reaped by the fork
server, whose children's CPU grows by it), per call, the isolate's start included.

    python bench/code_replay.py [--calls 10000] [--repeat 5] [--isolation none|process]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import Engine, code_plan, tool
from agentflow.sandbox import IsolatePool, compile_code_plan
from agentflow.sandbox.runtime import run_code_plan


@tool(side_effects=False)
def noop(x: int) -> int:
    return x


def plan_source(calls: int) -> str:
    return f'for i in range({calls}):\n    noop(x=i)\napprove("done?")\n'


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def isolates_cpu(pool: IsolatePool | None) -> float:
    """CPU seconds of the isolates of `pool` that have exited (its fork server reaps them)."""
    server = pool._server if pool is not None else None
    if server is None:
        return 0.0
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def cpu(action: Callable[[], Any], pool: IsolatePool | None) -> tuple[float, float]:
    """(engine, isolate) CPU seconds of `action`: the isolate's once it has exited."""
    engine, isolates = time.process_time(), isolates_cpu(pool)
    action()
    engine = time.process_time() - engine
    while pool is not None and any(not i.exited.is_set() for i in pool._isolates.values()
                                   if i not in pool._idle.queue):
        time.sleep(0.01)
    return engine, isolates_cpu(pool) - isolates


def plain_loop(calls: int) -> None:
    function = noop.fn
    for i in range(calls):
        function(x=i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--isolation", choices=("none", "process"), default="none")
    options = parser.parse_args()
    calls = options.calls
    plan = code_plan(plan_source(calls), name="replay_bench")
    compiled = compile_code_plan(plan, {"noop": noop})
    bindings: dict[str, Callable[..., Any]] = {"noop": lambda position, x: x,
                                               "approve": lambda position, prompt: True}
    pool = IsolatePool() if options.isolation == "process" else None
    rounds: dict[str, list[float]] = {"plain": [], "sandbox": [], "fresh": [], "replay": []}
    cpus: dict[str, list[tuple[float, float]]] = {"fresh": [], "replay": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", ".")) as tmp:
        for rep in range(options.repeat):
            rounds["plain"].append(timed(lambda: plain_loop(calls)))
            rounds["sandbox"].append(timed(lambda: run_code_plan(compiled, bindings, {})))
            engine = Engine(str(Path(tmp) / f"runs-{rep}.db"), tools=[noop],
                            isolation=options.isolation, isolates=pool)
            engine.execute(code_plan("return 1", name="warm"), run_id=f"warm-{rep}")
            run_id = f"bench-{rep}"
            start = time.perf_counter()
            cpus["fresh"].append(cpu(partial(engine.execute, plan, run_id=run_id), pool))
            rounds["fresh"].append(time.perf_counter() - start)
            replays = []
            for _ in range(3):
                start = time.perf_counter()
                cpus["replay"].append(cpu(partial(engine.resume, run_id), pool))
                replays.append(time.perf_counter() - start)
            rounds["replay"].append(statistics.median(replays))
            result = engine.get_run(run_id)
            assert result.status == "waiting", result.error
            assert sum(1 for e in engine.journal(run_id) if e.kind == "result") == calls
            engine.close()
    if pool is not None:
        pool.close()
    report(calls, options, rounds, cpus)


def report(calls: int, options: argparse.Namespace, rounds: dict[str, list[float]],
           cpus: dict[str, list[tuple[float, float]]]) -> None:
    per_call = {name: statistics.median(times) / calls for name, times in rounds.items()}
    labels = {"plain": "plain Python loop", "sandbox": "sandbox, no journal",
              "fresh": "durable, fresh", "replay": "replay from journal"}
    print(f"{calls} calls of a no-op tool, isolation={options.isolation!r}; median of "
          f"{options.repeat} rounds (replay: median of 3 resumes per round)")
    print(f"{'':<22}{'total':>10}{'per call':>12}{'x plain':>10}{'x sandbox':>11}"
          f"{'engine CPU':>13}{'isolate CPU':>13}")
    for name, label in labels.items():
        seconds = per_call[name]
        line = (f"{label:<22}{seconds * calls * 1e3:>8.1f}ms{seconds * 1e6:>10.2f}us"
                f"{seconds / per_call['plain']:>10.1f}{seconds / per_call['sandbox']:>11.2f}")
        if name in cpus:
            for side in (0, 1):
                line += f"{statistics.median(c[side] for c in cpus[name]) / calls * 1e6:>11.1f}us"
        print(line)
    print(f"replay is {per_call['fresh'] / per_call['replay']:.1f}x faster than the fresh "
          f"durable run; journal cost of a replayed call: "
          f"{(per_call['replay'] - per_call['sandbox']) * 1e6:.2f}us")


if __name__ == "__main__":
    main()
