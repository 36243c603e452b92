"""What isolates cost: code plans in isolate processes against the same plans in-process.

Measured in one run, each as the median of several rounds, for `isolation="process"`
against `isolation="none"`:

- start: one execution of `return 1` from a warm pool (take a forked isolate, send the
  plan, run it, get the outcome back), against `run_code_plan` of the same plan. The pool
  refills between rounds, as it would between runs; the goal is <= 5 ms;
- round trip: `noop(x=i)` called CALLS times with bindings that return at once (no
  journal, no store): the cost of one message each way per tool call;
- replay: `Engine.resume` of a run whose CALLS calls are all journaled (then it waits on
  an approval again): with isolates, the recorded answers go to the isolate in one message
  and it reports the replayed calls in batches. The goal is under 1 s for 10,000 calls.

    python bench/isolates.py [--calls 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import Engine, SandboxLimits, code_plan, tool
from agentflow.sandbox import IsolatePool, compile_code_plan, run_code_plan, run_isolated


@tool(side_effects=False)
def noop(x: int) -> int:
    return x


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_of(action: Callable[[], Any], repeat: int, pause: float = 0.0) -> float:
    times = []
    for _ in range(repeat):
        time.sleep(pause)
        times.append(timed(action))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    calls, repeat = options.calls, options.repeat
    pool = IsolatePool(warm=2)
    limits = SandboxLimits()
    no_answers: dict[str, list[Any]] = {}

    def isolated(code: Any, bindings: dict[str, Callable[..., Any]]) -> Any:
        return run_isolated(pool, code, bindings, {}, limits, max_concurrency=4,
                            answers=no_answers, verify=lambda *call: None)

    trivial = compile_code_plan(code_plan("return 1"), {}).code
    isolated(trivial, {})  # the fork server is up and the pool warm
    start = {"none": median_of(lambda: run_code_plan(trivial, {}, {}), repeat * 4),
             "process": median_of(lambda: isolated(trivial, {}), repeat * 4, pause=0.05)}

    loop = compile_code_plan(code_plan(f"for i in range({calls}):\n    noop(x=i)"),
                             {"noop": noop}).code
    bindings: dict[str, Callable[..., Any]] = {"noop": lambda position, x: x}
    trip = {"none": median_of(lambda: run_code_plan(loop, bindings, {}), repeat) / calls,
            "process": median_of(lambda: isolated(loop, bindings), repeat, 0.05) / calls}

    plan = code_plan(f'for i in range({calls}):\n    noop(x=i)\napprove("done?")\n')
    replay: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", ".")) as tmp:
        for isolation in ("none", "process"):
            engine = Engine(str(Path(tmp) / f"{isolation}.db"), tools=[noop],
                            isolation=isolation, isolates=pool)  # type: ignore[arg-type]
            first = engine.execute(plan, run_id="replay")
            assert first.status == "waiting", first.error
            replay[isolation] = median_of(lambda e=engine: e.resume("replay"), repeat, 0.05)
            assert engine.get_run("replay").status == "waiting"
    pool.close()

    print(f"median of {repeat} rounds (start: {repeat * 4}); in-process is isolation='none'")
    print(f"{'':<34}{'in-process':>12}{'isolate':>12}{'ratio':>8}")
    rows = [("start of an execution (warm pool)", start, 1e3, "ms"),
            ("round trip per tool call", trip, 1e6, "us"),
            (f"replay of {calls:,} journaled calls", replay, 1e3, "ms")]
    for label, figures, scale, unit in rows:
        none, process = figures["none"] * scale, figures["process"] * scale
        print(f"{label:<34}{none:>10.2f}{unit}{process:>10.2f}{unit}{process / none:>8.1f}")
    print(f"goals: start <= 5 ms ({'met' if start['process'] <= 0.005 else 'missed'}), "
          f"replay < 1 s ({'met' if replay['process'] < 1 else 'missed'})")


if __name__ == "__main__":
    main()
