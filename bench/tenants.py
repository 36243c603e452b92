"""Many tenants, each with its own plan and many waiting runs: does one tenant's work get
slower with the number of tenants?

Two SQLite stores are built: a small one (10 tenants) and a large one (`--tenants`, 10,000
for the issue's figure; 100 by default for a quick run), each tenant with its own
registered plan (`tenant.plans.put`) and `--runs` runs (100) waiting on an approval. Per
tenant, the first run is started for real (`tenant.execute(NAME)`); the others are copies
of its rows (runs, waits, journal) under new run ids, inserted with `executemany` in large
transactions, since starting 1,000,000 runs one by one would take hours. A self-check
compares a copied run with the real one through the engine (same status, steps, pending).

Then, interleaving the two stores round by round (medians; the machine is shared), it
times for one random tenant: `tenant.execute(NAME)` until the run waits, `tenant.runs.get`
of a random run and `tenant.runs.list(status="waiting")` (its 100 runs), and reports the
storage per run. The ratios large/small should stay near 1.

    python bench/tenants.py [--tenants 100] [--runs 100] [--rounds 30] [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentflow import Engine, tool  # noqa: E402
from agentflow.engine import Tenant  # noqa: E402

SMALL = 10
BATCH = 50_000  # rows per executemany transaction


@tool
def build(ref: str) -> str:
    return f"artifact-{ref}"


@tool
def ship(artifact: str) -> str:
    return f"shipped {artifact}"


def plan_for(tenant: str) -> dict[str, Any]:
    """A release plan of the tenant's own (its hash differs from every other tenant's)."""
    return {"format": "agentflow/v1", "name": "release",
            "inputs": {"type": "object", "properties": {"ref": {"type": "string"}}},
            "steps": [
                {"id": "build", "tool": "build", "args": {"ref": f"{tenant}:${{inputs.ref}}"}},
                {"id": "ok", "approval": {"prompt": "ship ${steps.build.output}?"},
                 "after": ["build"]},
                {"id": "ship", "tool": "ship", "args": {"artifact": "${steps.build.output}"},
                 "after": ["ok"]}],
            "outputs": {"shipped": "${steps.ship.output}"}}


def tenant_name(i: int) -> str:
    return f"tenant-{i:05d}"


def build_store(path: Path, tenants: int, runs: int) -> None:
    """Each tenant: its plan registered, one run started for real, `runs - 1` copies."""
    engine = Engine(f"sqlite:///{path}?durability=normal", tools=[build, ship])
    started = time.perf_counter()
    for i in range(tenants):
        view = engine.tenant(tenant_name(i))
        view.plans.put("release", plan_for(view.id))
        view.execute("release", inputs={"ref": "v1"}, run_id="run-0000")
    engine.close()
    real = time.perf_counter() - started
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    tables = {name: [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
              for name in ("runs", "waits", "journal")}
    for table, columns in tables.items():
        source = conn.execute(f"SELECT {', '.join(columns)} FROM {table}"
                              " WHERE run_id = 'run-0000'").fetchall()
        run_index = columns.index("run_id")
        rows: list[tuple[Any, ...]] = []
        insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                  f"({', '.join('?' for _ in columns)})")
        for row in source:
            for n in range(1, runs):
                copy = list(row)
                copy[run_index] = f"run-{n:04d}"
                rows.append(tuple(copy))
                if len(rows) >= BATCH:
                    conn.executemany(insert, rows)
                    conn.commit()
                    rows.clear()
        conn.executemany(insert, rows)
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"  {path.name}: {tenants:,} tenants x {runs} runs in "
          f"{time.perf_counter() - started:.0f} s ({real:.0f} s for the real first runs)",
          flush=True)


def self_check(engine: Engine) -> None:
    """A copied run reads like the real one it was copied from."""
    view = engine.tenant(tenant_name(0))
    real, copy = view.runs.get("run-0000"), view.runs.get("run-0001")
    assert (copy.status, list(copy.steps), len(copy.pending)) == (
        real.status, list(real.steps), len(real.pending)) == ("waiting", list(real.steps), 1)
    assert copy.pending[0].prompt == real.pending[0].prompt


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def one_round(view: Tenant, run_id: str, new_run_id: str) -> dict[str, float]:
    """One timing of each operation, for one tenant."""
    return {"execute": timed(lambda: view.execute("release", inputs={"ref": "v2"},
                                                  run_id=new_run_id)),
            "get": timed(lambda: view.runs.get(run_id)),
            "list": timed(lambda: view.runs.list(status="waiting"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="agentflow-tenants-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = {"small": SMALL, "large": args.tenants}
    paths = {name: workdir / f"{name}-{count}.db" for name, count in sizes.items()}
    print(f"building stores in {workdir}", flush=True)
    for name, count in sizes.items():
        paths[name].unlink(missing_ok=True)
        build_store(paths[name], count, args.runs)
    engines = {name: Engine(str(path), tools=[build, ship]) for name, path in paths.items()}
    for engine in engines.values():
        self_check(engine)
    samples: dict[str, dict[str, list[float]]] = {
        name: {"execute": [], "get": [], "list": []} for name in sizes}
    rng = random.Random(7)
    for round_no in range(args.rounds):
        for name, engine in engines.items():
            view = engine.tenant(tenant_name(rng.randrange(sizes[name])))
            for key, seconds in one_round(view, f"run-{rng.randrange(args.runs):04d}",
                                          f"bench-{round_no}").items():
                samples[name][key].append(seconds)
    for engine in engines.values():
        engine.close()
    total = {name: sizes[name] * args.runs for name in sizes}
    per_run = {name: os.path.getsize(paths[name]) / total[name] for name in sizes}
    print(f"\n| | {SMALL} tenants ({total['small']:,} runs) | {args.tenants:,} tenants "
          f"({total['large']:,} runs) | ratio |")
    print("|---|---|---|---|")
    print(f"| storage per waiting run | {per_run['small']:,.0f} B | {per_run['large']:,.0f} B "
          "| |")
    labels = {"execute": '`tenant.execute("release")` until it waits',
              "get": "`tenant.runs.get(run_id)`",
              "list": f'`tenant.runs.list(status="waiting")` ({args.runs} runs)'}
    for key, label in labels.items():
        small = statistics.median(samples["small"][key])
        large = statistics.median(samples["large"][key])
        print(f"| {label} | {small * 1e3:.2f} ms | {large * 1e3:.2f} ms | "
              f"{large / small:.2f} |")
    if not args.keep:
        for path in paths.values():
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
