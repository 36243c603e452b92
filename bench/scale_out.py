"""Scale-out: steps per second with 1, 2 and 4 worker processes on one PostgreSQL database,
against raw PostgreSQL single-row INSERT + COMMIT measured in the same run.

Two workloads: short no-op tools, and tools that sleep 50 ms (I/O-bound). Each measurement
uses a fresh schema: the workers start and go idle (until each listens for work), are
frozen (SIGSTOP) while RUNS runs of a chain of STEPS tool calls are submitted, and the clock
runs from their thaw (SIGCONT) until the last run completed. So the figure is the fleet's
rate on a full queue, not the submitting client's, and a worker's start-up is not counted.
Rounds alternate: each measures the raw rate, then every fleet on both workloads, so the
ratios compare figures taken under the same load (medians over rounds, with min-max). The
workers' CPU per step tells a fleet starved of CPU (its figure grows with the fleet) from
one that waits on the database. Goals: 4 workers >= 3.2x one worker on the I/O-bound
workload; the no-op workload >= 50% of the raw commit rate.

    python -m bench.scale_out [--runs 400] [--steps 5] [--concurrency 8] [--repeats 3]

The server is AGENTFLOW_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from agentflow import Engine
from bench.scale_tools import TOOLS

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("AGENTFLOW_BENCH_POSTGRES_DSN",
                     "postgresql://postgres@127.0.0.1:5432/test")
ROW = '{"status":"ok","result":{"id":12345,"items":["alpha","beta","gamma"]},"note":"xxxx"}'


@contextmanager
def fresh_schema() -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def raw_commits_per_second(n: int, seconds: float = 3.0) -> float:
    """Single-row INSERT + COMMIT of a ~100-byte JSON row on one connection, `n` times or
    for `seconds`, whichever ends first."""
    with fresh_schema() as schema, psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.rows (id BIGINT PRIMARY KEY, data TEXT)")
        started = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() - started < seconds:
            with conn.transaction():
                conn.execute(f"INSERT INTO {schema}.rows VALUES (%s, %s)", (done, ROW))
            done += 1
        return done / (time.perf_counter() - started)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` used so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def listening(application: str, workers: int) -> None:
    """Wait until every worker process has started and listens for work."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE 'LISTEN%%'", (application,)).fetchone()[0] < workers:
            time.sleep(0.1)


def completed(schema: str, runs: int) -> None:
    """Wait until `runs` runs of `schema` have completed (one count every 20 ms)."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        while conn.execute(f"SELECT count(*) FROM {schema}.runs WHERE status = 'completed'"
                           ).fetchone()[0] < runs:
            time.sleep(0.02)


def plan(steps: int) -> dict[str, object]:
    chain = [{"id": f"s{i}", "tool": "step", "args": {"n": i},
              **({"after": [f"s{i - 1}"]} if i else {})} for i in range(steps)]
    return {"format": "agentflow/v1", "steps": chain, "outputs": {}}


def steps_per_second(workers: int, tool_seconds: float, runs: int, steps: int,
                     concurrency: int) -> tuple[float, float]:
    """(steps per second, the workers' CPU milliseconds per step) of one measurement."""
    with fresh_schema() as schema:
        url = f"{DSN}?schema={schema}"
        engine = Engine(url, tools=TOOLS)
        worker_url = f"{url}&application_name={schema}"
        env = {**os.environ, "SCALE_TOOL_SECONDS": str(tool_seconds), "PYTHONPATH": str(ROOT)}
        fleet = [subprocess.Popen(
            [sys.executable, "-m", "agentflow.cli", "worker", "--store", worker_url, "--tools",
             "bench.scale_tools", "--concurrency", str(concurrency), "--poll", "1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
        try:
            listening(schema, workers)
            for proc in fleet:
                proc.send_signal(signal.SIGSTOP)
            for i in range(runs):
                engine.submit(plan(steps), run_id=f"r{i}")
            started, cpu = time.perf_counter(), cpu_seconds([p.pid for p in fleet])
            for proc in fleet:
                proc.send_signal(signal.SIGCONT)
            completed(schema, runs)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds([p.pid for p in fleet]) - cpu
        finally:
            for proc in fleet:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            for proc in fleet:
                proc.wait(60)
            engine.close()
        return runs * steps / elapsed, cpu * 1000 / (runs * steps)


WORKLOADS = (("no-op", 0.0), ("50 ms", 0.05))
FLEETS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=400,
                        help="runs submitted per measurement (default 400; 100 for a quick look)")
    parser.add_argument("--steps", type=int, default=5,
                        help="tool calls in each run's chain (default 5)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="runs each worker process executes at once (default 8)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; figures are medians over them (default 3: about 5 "
                             "minutes on a quiet machine; 1 for a quick look)")
    args = parser.parse_args()
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    raws: list[float] = []
    for _ in range(args.repeats):  # rounds: every figure of a round under the same load
        for name, seconds in WORKLOADS:
            if seconds == 0.0:  # the ceiling, just before the figures compared with it
                raws.append(raw_commits_per_second(2000))
            for workers in FLEETS:
                rate, ms = steps_per_second(workers, seconds, args.runs, args.steps,
                                            args.concurrency)
                rates.setdefault((name, workers), []).append(rate)
                cpu.setdefault((name, workers), []).append(ms)
    print(f"{args.runs} runs x {args.steps} steps, workers of concurrency {args.concurrency}; "
          f"medians of {args.repeats} rounds (min-max); load average {os.getloadavg()[0]:.1f}")
    print(f"raw PostgreSQL INSERT+COMMIT: {statistics.median(raws):8,.0f}/s "
          f"({min(raws):,.0f}-{max(raws):,.0f})")
    for (name, workers), samples in rates.items():
        print(f"{name:6} tools, {workers} worker(s): {statistics.median(samples):8,.1f} "
              f"steps/s ({min(samples):,.1f}-{max(samples):,.1f}); worker CPU "
              f"{statistics.median(cpu[(name, workers)]):.2f} ms/step")
    ratios = [four / one for one, four in zip(rates[("50 ms", 1)], rates[("50 ms", 4)],
                                              strict=True)]
    print(f"50 ms tools: 4 workers / 1 worker = {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}) (goal >= 3.2x)")
    for workers in FLEETS:
        shares = [rate / raw for rate, raw in zip(rates[("no-op", workers)], raws, strict=True)]
        print(f"no-op tools, {workers} worker(s): {statistics.median(shares):.0%} of the raw "
              f"commit rate of its round ({min(shares):.0%}-{max(shares):.0%}) (goal >= 50%)")


if __name__ == "__main__":
    main()
