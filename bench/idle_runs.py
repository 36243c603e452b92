"""Waiting runs cost only storage: bytes, memory and look-up times at 1k vs N waiting runs.

Contract 6: a waiting run holds no process, thread or memory, only rows; resume by id and
wake-up by timer are index look-ups whose cost does not grow with the number of waiting runs.

Each store size (1,000, then N; and 100,000 on the way to 1,000,000 with `--full`) gets its
own SQLite file, filled with waiting runs, 1/3 each of: an approval gate with a 3-day expiry,
a 3-day `sleep` and a `wait_for_event` with a 3-day timeout, each followed by one no-op tool
step. Runs were started over the past 3 days, so their wake-up times spread over the next
3 days; 10 timers are due now. The runs are made three ways, all writing the same rows:

- `Engine.execute` (a sample, timed per run: the real cost of starting a run until it waits);
- the store API as the engine calls it (a sample): create_run, append_journal (the "wait"
  entry), put_waits, finish_run("waiting", wake_at=...);
- the bulk: the same rows with `executemany`, 20,000 runs per transaction (the per-call API
  makes four commits per run, too slow for 1,000,000).

The two samples are made once the store is nearly full, so they show whether starting a run
gets slower with the number waiting; each stops after `--budget` seconds (once it has 20
runs), so a store whose per-run cost grows cannot make the benchmark run for hours.

A self-check compares the rows of engine-made, API-made and bulk-made runs of each kind,
column by column, with the rows `expected_rows` derives from (run id, inputs, start time),
and stops the benchmark if any differs. Then, interleaving the stores round by round (the
machine is shared and noisy; figures are medians, ratios against the 1k store), it times
`store.due_runs(now)` (10 due), `store.get_run` and `Engine.get_run` of a random run, and
`Engine.approve` + `Engine.resume` of a run waiting on its approval (the run completes).

The rows and their check are in `bench/idle_rows.py`; memory, bytes on disk and query plans
are measured by `bench/idle_costs.py`.

    python bench/idle_runs.py [--runs 100000] [--full] [--sample 1000] [--budget 20]
        [--rounds 40] [--lookups 20] [--engine-lookups 5] [--durability full|normal]
        [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentflow import Engine  # noqa: E402
from agentflow.store import (  # noqa: E402
    JournalEntry,
    RunRecord,
    SQLiteStore,
    StoredPlan,
    WaitRecord,
)
from agentflow.store.sqlite import Durability, connect  # noqa: E402
from bench.idle_costs import (  # noqa: E402
    fresh_process_rss,
    plan_warning,
    query_plans,
    release_free_heap,
    storage,
    vm,
)
from bench.idle_rows import (  # noqa: E402
    HOLD,
    JOURNAL_COLUMNS,
    PLANS,
    TABLE_COLUMNS,
    TENANT,
    WAIT_COLUMNS,
    approval_wait_id,
    expected_rows,
    idle_plan,
    kind_of,
    noop,
    row_differences,
    run_id_of,
)

DUE = 10  # timers due now in every store
BATCH = 20_000  # runs per bulk transaction
SMALL = 1_000
MIN_SAMPLE = 20  # runs timed per creation path, however slow
NEAR_ONE = 2.0  # a look-up ratio above this grows with N (noise and B-tree depth stay below)


# --- making waiting runs ------------------------------------------------------------------

def create_with_api(store: SQLiteStore, kind: str, run_id: str, order_id: int) -> None:
    """Make a waiting run with the store calls the engine makes, in the engine's order."""
    started = time.time()
    rows = expected_rows(kind, run_id, order_id, started)
    compiled, owner = PLANS[kind], f"bench:{os.getpid()}:api"
    plan = StoredPlan(TENANT, compiled.plan_hash, "graph", compiled.canonical_json, started)
    store.create_run(RunRecord(TENANT, run_id, compiled.plan_hash, "running",
                               {"order_id": order_id}, created_at=started, updated_at=started,
                               plan_name=f"idle-{kind}"),
                     plan, owner, 30.0)
    for row in rows["journal"]:  # the journal flush comes first, then the waits'
        entry = dict(zip(JOURNAL_COLUMNS, row, strict=True))
        store.append_journal(TENANT, run_id, owner, [JournalEntry(
            key=entry["key"], kind=entry["kind"], data=json.loads(entry["data"]),
            attempt=entry["attempt"], tool=entry["tool"], args_hash=entry["args_hash"],
            at=entry["at"])])
    wait = dict(zip(WAIT_COLUMNS, rows["waits"][0], strict=True))
    for name in ("args", "approvers", "decision", "args_schema"):
        wait[name] = None if wait[name] is None else json.loads(wait[name])
    wait["consumed"] = bool(wait["consumed"])
    store.put_waits(TENANT, run_id, owner, [WaitRecord(**wait)])
    store.finish_run(TENANT, run_id, owner, "waiting", wake_at=rows["runs"][0][9])


def bulk_insert(path: Path, specs: Iterator[tuple[str, str, int, float]]) -> int:
    """Insert the runs of `specs` (kind, run id, order id, start) as `expected_rows`, with
    `executemany` in one transaction per `BATCH` runs. Returns the number of runs."""
    conn = connect(str(path))
    # This connection's own page cache (256 MB, not the store's 2 MB default): only the
    # insert speed changes, not the rows or the file the store reads.
    conn.execute("PRAGMA cache_size=-262144")
    inserts = {table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES"
                      f" ({', '.join('?' * len(cols))})" for table, cols in TABLE_COLUMNS.items()}
    count = 0
    try:
        while True:
            batch: dict[str, list[tuple[Any, ...]]] = {table: [] for table in TABLE_COLUMNS}
            for kind, run_id, order_id, started in specs:
                for table, rows in expected_rows(kind, run_id, order_id, started).items():
                    batch[table] += rows
                if len(batch["runs"]) == BATCH:
                    break
            if not batch["runs"]:
                return count
            conn.execute("BEGIN IMMEDIATE")
            for table, rows in batch.items():
                conn.executemany(inserts[table], rows)
            conn.execute("COMMIT")
            count += len(batch["runs"])
    finally:
        conn.close()


@dataclass
class Bench:
    """One store of `size` waiting runs and what was measured on it."""

    size: int
    path: Path
    engine: Engine
    rng: random.Random
    bulk_runs: int = 0
    api_first: int = 0
    api_runs: int = 0
    engine_first: int = 0
    engine_runs: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    approvals: list[int] = field(default_factory=list)

    @property
    def store(self) -> SQLiteStore:
        store = self.engine.store
        assert isinstance(store, SQLiteStore)
        return store

    def sample(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def timed_sample(bench: Bench, name: str, first: int, count: int, budget: float,
                 make: Callable[[int], None]) -> int:
    """Make runs `first`, `first + 1`, ... with `make`, timing each as `name`: `count` runs,
    or fewer (at least `MIN_SAMPLE`) once `budget` seconds have passed. Returns how many."""
    deadline = time.perf_counter() + budget
    for made, i in enumerate(range(first, first + count)):
        if made >= MIN_SAMPLE and time.perf_counter() > deadline:
            return made
        start = time.perf_counter()
        make(i)
        bench.sample(name, time.perf_counter() - start)
    return count


def open_store(path: Path, durability: Durability | None) -> SQLiteStore:
    """The store at `path`, with `durability`, or the store's default one (None)."""
    return SQLiteStore(str(path)) if durability is None else SQLiteStore(str(path), durability)


def build(size: int, sample: int, budget: float, workdir: Path, seed: int,
          durability: Durability | None = None) -> Bench:
    """A store with `size` waiting runs: bulk first (10 due timers among them), then the
    store-API sample, then the engine sample (each up to `sample` runs or `budget` seconds),
    so creation is timed on a store of ~`size` runs; then bulk again up to `size`."""
    path = workdir / f"runs-{size}.db"
    bench = Bench(size, path, Engine(open_store(path, durability), tools=[noop]),
                  random.Random(seed))
    for compiled in PLANS.values():  # pinned once, shared by every run (as the engine does)
        bench.store.put_plan(StoredPlan(TENANT, compiled.plan_hash, "graph",
                                        compiled.canonical_json, time.time()))
    per_sample = min(sample, size // 4)
    first_bulk = size - 2 * per_sample
    if first_bulk < 3 * DUE or per_sample < 3:
        raise SystemExit(f"--runs {size} is too small for --sample {sample}")
    now = time.time()

    def specs(indices: range) -> Iterator[tuple[str, str, int, float]]:
        due_left = DUE if indices.start == 0 else 0
        for i in indices:
            kind = kind_of(i)
            if kind == "timer" and due_left:
                due_left -= 1
                started = now - HOLD - 60.0 - due_left  # due a minute ago
            else:  # started over the past 3 days (less an hour): due in 1 hour to 3 days
                started = now - bench.rng.uniform(0.0, HOLD - 3600.0)
            yield kind, run_id_of(i), i, started

    start = time.perf_counter()
    bench.bulk_runs = bulk_insert(path, specs(range(first_bulk)))
    bulk_seconds = time.perf_counter() - start

    def by_engine(i: int) -> None:
        result = bench.engine.execute(idle_plan(kind_of(i)), inputs={"order_id": i},
                                      run_id=run_id_of(i))
        if result.status != "waiting":
            raise SystemExit(f"run {i} is {result.status}, not waiting: {result.error}")

    bench.api_first = first_bulk
    bench.api_runs = timed_sample(
        bench, "create: store API (4 calls)", bench.api_first, per_sample, budget,
        lambda i: create_with_api(bench.store, kind_of(i), run_id_of(i), i))
    bench.engine_first = bench.api_first + bench.api_runs
    bench.engine_runs = timed_sample(bench, "create: Engine.execute", bench.engine_first,
                                     per_sample, budget, by_engine)
    start = time.perf_counter()
    bench.bulk_runs += bulk_insert(path, specs(range(bench.engine_first + bench.engine_runs,
                                                     size)))
    bulk_seconds += time.perf_counter() - start
    bench.sample("create: bulk executemany", bulk_seconds / bench.bulk_runs)
    bench.approvals = [i for i in range(size) if kind_of(i) == "approval"]
    bench.rng.shuffle(bench.approvals)
    return bench


# --- the self-check -----------------------------------------------------------------------


def self_check(bench: Bench) -> list[str]:
    """Check one engine-made, one API-made and one bulk-made run of each kind (the first
    of each); returns the differences found (none means identical rows)."""
    starts = {"engine": bench.engine_first, "store API": bench.api_first, "bulk": DUE * 3}
    conn = sqlite3.connect(f"file:{bench.path}?mode=ro", uri=True)
    try:
        problems = []
        for origin, first in starts.items():
            for i in range(first, first + 3):
                problems += [f"{origin} {p}" for p in row_differences(conn, i)]
        return problems
    finally:
        conn.close()


# --- measuring ----------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure_round(bench: Bench, lookups: int, engine_lookups: int) -> None:
    """One round on one store: `lookups` calls of each store look-up in a row, then
    `engine_lookups` Engine.get_run calls, then one approve + resume."""
    store, engine = bench.store, bench.engine
    for _ in range(lookups):
        seconds, due = timed(lambda: store.due_runs(time.time()))
        assert len(due) == DUE, f"{len(due)} due runs in the {bench.size} store, not {DUE}"
        bench.sample("store.due_runs(now)", seconds)
    for _ in range(lookups):
        seconds, _ = timed(lambda: store.due_runs(time.time(), tenant_id=TENANT))
        bench.sample("store.due_runs(now, tenant)", seconds)
    for _ in range(lookups):
        run_id = run_id_of(bench.rng.randrange(bench.size))
        seconds, run = timed(lambda: store.get_run(TENANT, run_id))  # noqa: B023
        assert run is not None
        bench.sample("store.get_run(id)", seconds)
    for _ in range(engine_lookups):
        run_id = run_id_of(bench.rng.randrange(bench.size))
        seconds, _ = timed(lambda: engine.get_run(run_id))  # noqa: B023
        bench.sample("Engine.get_run(id)", seconds)
    i = bench.approvals.pop()
    run_id = run_id_of(i)
    approve, _ = timed(lambda: engine.approve(run_id, approval_wait_id(run_id, i), by="bench"))
    resume, result = timed(lambda: engine.resume(run_id, tools=[noop]))
    if result.status != "completed" or result.outputs != {"refund": i}:
        raise SystemExit(f"resumed run {i}: {result.status} {result.outputs} {result.error}")
    bench.sample("Engine.approve(id)", approve)
    bench.sample("Engine.resume(id)", resume)
    bench.sample("approve + resume", approve + resume)


# --- the report ---------------------------------------------------------------------------

def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def short(size: int) -> str:
    """1k, 100k, 1M: a store size in a column heading."""
    return f"{size / 1e6:g}M" if size >= 1_000_000 else f"{size / 1e3:g}k"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="waiting runs in the big store")
    parser.add_argument("--full", action="store_true", help="1,000,000 waiting runs")
    parser.add_argument("--sample", type=int, default=1000,
                        help="runs made by Engine.execute (and as many by the store API)")
    parser.add_argument("--rounds", type=int, default=40,
                        help="measuring rounds (one approve + resume per store each)")
    parser.add_argument("--lookups", type=int, default=20,
                        help="store look-ups of each kind per store per round")
    parser.add_argument("--engine-lookups", type=int, default=5,
                        help="Engine.get_run calls per store per round")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds per creation sample (store API, Engine.execute) and "
                             "store, after at least 20 runs")
    parser.add_argument("--durability", choices=get_args(Durability), default=None,
                        help="the store's durability (default: the store's default)")
    parser.add_argument("--dir", default="/tmp", help="where to make the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the store files")
    options = parser.parse_args(argv)
    runs = 1_000_000 if options.full else options.runs
    sizes = sorted({min(SMALL, runs), *([100_000] if options.full else []), runs})
    rss_before, hwm_before = vm(), vm("VmHWM")
    workdir = Path(tempfile.mkdtemp(prefix="agentflow-idle-", dir=options.dir))
    durability = options.durability or signature(SQLiteStore).parameters["durability"].default
    print(f"agentflow idle runs: {', '.join(f'{s:,}' for s in sizes)} waiting runs per store "
          f"(1/3 approvals, 1/3 timers, 1/3 events; {DUE} due); durability={durability}; "
          f"SQLite {sqlite3.sqlite_version}; {os.cpu_count()} CPUs; stores in {workdir}")
    benches: list[Bench] = []
    try:
        for n, size in enumerate(sizes):
            start = time.perf_counter()
            bench = build(size, options.sample, options.budget, workdir, n, options.durability)
            benches.append(bench)
            print(f"  built {size:>9,} runs in {time.perf_counter() - start:6.1f} s: "
                  f"{bench.bulk_runs:,} bulk, {bench.api_runs:,} store API, "
                  f"{bench.engine_runs:,} Engine.execute")
        gc.collect()
        rss_built = vm()
        rss_trimmed = vm() if release_free_heap() else None

        print("\nrow check: each kind's engine-made, store-API-made and bulk-made runs against "
              "expected_rows, column by column (times within 5 s; wake_at == expires_at == "
              "journaled due)")
        for bench in benches:
            problems = self_check(bench)
            if problems:
                print("\n".join(f"  {p}" for p in problems))
                raise SystemExit(f"rows of the {bench.size:,} store differ from the engine's")
        print("  rows identical to the engine's: yes (approval, timer, event; runs, waits, "
              "journal, events)")

        plans = query_plans(benches[-1])
        for _ in range(options.rounds):
            for bench in benches:
                measure_round(bench, options.lookups, options.engine_lookups)

        small, big = benches[0], benches[-1]
        print("\nstorage (after PRAGMA wal_checkpoint(TRUNCATE); 3 plans shared by all runs)")
        for bench in benches:
            size_bytes, wal, waiting, _ = storage(bench)
            print(f"  {bench.size:>9,} runs: file {mb(size_bytes)} + WAL {wal:,} B, "
                  f"{waiting:,} waiting; bytes per waiting run {size_bytes / bench.size:,.0f}")
        *_, parts = storage(big)
        if parts:
            print(f"  per table and index ({big.size:,} runs, dbstat):")
            for name, pgsize, pages in parts:
                print(f"    {name:<28} {mb(pgsize):>10} {pages:>8,} pages "
                      f"{pgsize / big.size:>7,.0f} B/run")

        print("\nresident memory (VmRSS)")
        trimmed = "" if rss_trimmed is None else f", after malloc_trim {mb(rss_trimmed)}"
        print(f"  this process: before creating runs {mb(rss_before)}; after creating "
              f"{sum(sizes):,} runs {mb(rss_built)}{trimmed}; after measuring {mb(vm())}\n"
              f"  (peak VmHWM {mb(vm('VmHWM'))}, {mb(hwm_before)} before: the bulk loader's "
              "own 256 MB page cache and row batches, freed when it is done)")
        for bench in benches:
            fresh = fresh_process_rss(bench)
            assert fresh["found"] and fresh["due"] == DUE
            print(f"  fresh process, {bench.size:>9,} runs: after import {mb(fresh['before'])}, "
                  f"after opening the store + get_run + due_runs + Engine.get_run "
                  f"{mb(fresh['after'])} (+{mb(fresh['after'] - fresh['before'])})")

        names = ["create: Engine.execute", "create: store API (4 calls)",
                 "create: bulk executemany", "store.due_runs(now)", "store.due_runs(now, tenant)",
                 "store.get_run(id)", "Engine.get_run(id)", "Engine.approve(id)",
                 "Engine.resume(id)", "approve + resume"]
        ratio_heads = [f"{short(b.size)}/{short(small.size)}" for b in benches[1:]]
        print(f"\nmedian microseconds per call, per store: {options.rounds} rounds of "
              f"{options.lookups} store look-ups of each kind, {options.engine_lookups} "
              "Engine.get_run and 1 approve + resume; creation: per run made (bulk: mean)")
        print(f"  {'':<30}" + "".join(f"{f'{b.size:,} runs':>16}" for b in benches)
              + "".join(f"{h:>11}" for h in ratio_heads))
        for name in names:
            medians = [b.median(name) for b in benches]
            print(f"  {name:<30}" + "".join(f"{m * 1e6:>16,.1f}" for m in medians)
                  + "".join(f"{m / medians[0]:>11.2f}" for m in medians[1:]))
        grows = [f"{name} {big.median(name) / small.median(name):,.1f}x" for name in names
                 if not name.startswith("create: bulk")
                 and big.median(name) > NEAR_ONE * small.median(name)]
        print(f"  contract 6 (every ratio but the bulk loader's <= {NEAR_ONE:g}): "
              + (f"VIOLATED, grows with the waiting runs: {', '.join(grows)}" if grows
                 else "holds"))

        print(f"\nEXPLAIN QUERY PLAN ({big.size:,} runs store; SQL as traced, literals inlined)")
        for what, sql, plan in plans:
            if what.startswith(("due_runs", "get_run")):
                print(f"  {what}: {sql}\n" + "".join(f"    {line}\n" for line in plan), end="")
        warnings = 0
        for group in ("Engine.execute until waiting", "Engine.approve + Engine.resume"):
            group_plans = [(sql, plan) for what, sql, plan in plans if what == group]
            print(f"  {group}: {len(group_plans)} distinct statements")
            for sql, plan in group_plans:
                warning = plan_warning(sql, plan)
                warnings += bool(warning)
                shown = sql if len(sql) <= 96 else sql[:93] + "..."
                print(f"    {f'[{warning}] ' if warning else ''}{shown}\n      "
                      + (" | ".join(plan) or "(no search: a plain INSERT)"))
        print(f"  statements with a plan warning: {warnings}")
    finally:
        for bench in benches:
            bench.engine.close()
        if options.keep:
            print(f"\nkept {workdir}")
        else:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    main()
