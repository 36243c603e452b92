"""Scale-out: steps per second with 1, 2 and 4 worker processes on one PostgreSQL database,
against raw PostgreSQL single-row INSERT + COMMIT measured in the same run.

Two workloads: short no-op tools, and tools that sleep 50 ms (I/O-bound). Each measurement
uses a fresh schema: the workers start and go idle (until each listens for work), then RUNS
runs of a chain of STEPS tool calls are submitted, and the clock runs from the first
submission until the last run completed. Goals: 4 workers >= 3.2x one worker on the
I/O-bound workload; the no-op workload >= 50% of the raw commit rate.

    python -m bench.scale_out [--runs 200] [--steps 5] [--concurrency 8] [--repeats 1]

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


def raw_commits_per_second(n: int) -> float:
    """Single-row INSERT + COMMIT of a ~100-byte JSON row, one connection, `n` times."""
    with fresh_schema() as schema, psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.rows (id BIGINT PRIMARY KEY, data TEXT)")
        started = time.perf_counter()
        for i in range(n):
            with conn.transaction():
                conn.execute(f"INSERT INTO {schema}.rows VALUES (%s, %s)", (i, ROW))
        return n / (time.perf_counter() - started)


def listening(application: str, workers: int) -> None:
    """Wait until every worker process has started and listens for work."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        while conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE 'LISTEN%%'", (application,)).fetchone()[0] < workers:
            time.sleep(0.1)


def plan(steps: int) -> dict[str, object]:
    chain = [{"id": f"s{i}", "tool": "step", "args": {"n": i},
              **({"after": [f"s{i - 1}"]} if i else {})} for i in range(steps)]
    return {"format": "agentflow/v1", "steps": chain, "outputs": {}}


def steps_per_second(workers: int, tool_seconds: float, runs: int, steps: int,
                     concurrency: int) -> float:
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
            started = time.perf_counter()
            for i in range(runs):
                engine.submit(plan(steps), run_id=f"r{i}")
            while len(engine.list_runs(status="completed", limit=runs)) < runs:
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
        finally:
            for proc in fleet:
                proc.send_signal(signal.SIGTERM)
            for proc in fleet:
                proc.wait(60)
            engine.close()
        return runs * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    raw = statistics.median(raw_commits_per_second(2000) for _ in range(args.repeats))
    print(f"raw PostgreSQL INSERT+COMMIT: {raw:,.0f}/s (median of {args.repeats})")
    figures: dict[tuple[str, int], float] = {}
    for name, seconds in (("no-op", 0.0), ("50 ms", 0.05)):
        for workers in (1, 2, 4):
            figures[(name, workers)] = statistics.median(
                steps_per_second(workers, seconds, args.runs, args.steps, args.concurrency)
                for _ in range(args.repeats))
            print(f"{name:6} tools, {workers} worker(s) x {args.concurrency}: "
                  f"{figures[(name, workers)]:8,.1f} steps/s")
    io_ratio = figures[("50 ms", 4)] / figures[("50 ms", 1)]
    print(f"50 ms tools: 4 workers / 1 worker = {io_ratio:.2f}x (goal >= 3.2x)")
    for workers in (1, 2, 4):
        share = figures[("no-op", workers)] / raw
        print(f"no-op tools, {workers} worker(s): {share:.0%} of the raw commit rate "
              "(goal >= 50%)")


if __name__ == "__main__":
    main()
