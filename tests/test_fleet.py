"""A fleet of worker processes on one store: every run completes, no completed step runs
twice, nothing stays claimed, and a killed worker's runs are taken over once its leases
expire.

The plan has two parallel branches, a 1 s timer and an approval, which this test process
decides from outside the workers. Every worker has the same per-tenant cap, and one tenant's
stored policy caps it lower; the leases of each tenant are sampled as the fleet runs.
Midway, one worker is killed with SIGKILL and started again later. The tool logs each
execution with its start time; an execution that started after its call's result was
journaled would be a completed step executed twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from agentflow import Engine
from tests.support.fleet_tools import TOOLS
from tests.support.stores import postgres_schema

ROOT = Path(__file__).resolve().parent.parent
TENANTS = ("acme", "globex", "initech")
LEASE = 4.0
POLL = 0.5
CAP = 6  # runs of one tenant executing at once, across the fleet
CAPS = {"acme": CAP, "globex": 3, "initech": CAP}  # globex's policy: max_concurrent_runs=3
PLAN = {
    "format": "agentflow/v1",
    "steps": [
        {"id": "left", "tool": "count", "args": {"label": "left"}},
        {"id": "right", "tool": "count", "args": {"label": "right"}},
        {"id": "nap", "sleep": 1, "after": ["left", "right"]},
        {"id": "ok", "approval": {"prompt": "ship?"}, "after": ["nap"]},
        {"id": "ship", "tool": "count", "args": {"label": "ship"}, "after": ["ok"]},
    ],
    "outputs": {"shipped": "${steps.ship.output}"},
}


def start_worker(store: str, log: Path) -> subprocess.Popen[bytes]:
    if store.startswith("postgresql:"):  # 8 slots share 3 connections: a modest budget
        store += "&pool_size=3"
    return subprocess.Popen(
        [sys.executable, "-m", "agentflow.cli", "worker", "--store", store, "--tools",
         "tests.support.fleet_tools", "--concurrency", "8", "--lease", str(LEASE),
         "--poll", str(POLL), "--drain", "60", "--tenant-cap", str(CAP)],
        cwd=ROOT, env={**os.environ, "FLEET_LOG": str(log), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL)


def executions(log: Path) -> list[tuple[str, str, str, int, float]]:
    if not log.exists():
        return []
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return [(t, r, k, int(pid), float(at)) for t, r, k, pid, at in rows]


def held_by(engine: Engine, pid: int) -> dict[tuple[str, str], float]:
    """Runs whose lease a worker process holds: their lease expiry."""
    held = {}
    for tenant in TENANTS:
        for run in engine.list_runs(tenant=tenant, limit=100_000):
            if run.lease_owner and f":{pid}:" in run.lease_owner and run.lease_expires_at:
                held[(tenant, run.run_id)] = run.lease_expires_at
    return held


def leased_per_tenant(engine: Engine) -> dict[str, int]:
    now = time.time()
    return {tenant: sum(1 for run in engine.list_runs(tenant=tenant, limit=100_000)
                        if run.lease_expires_at is not None and run.lease_expires_at >= now)
            for tenant in TENANTS}


def run_fleet(store: str, tmp_path: Path, runs: int, workers: int) -> None:
    log = tmp_path / "executions.log"
    engine = Engine(store, tools=TOOLS)
    engine.tenant("globex").policy(max_concurrent_runs=CAPS["globex"])
    for i in range(runs):
        engine.submit(PLAN, run_id=f"run-{i}", tenant=TENANTS[i % len(TENANTS)])
    fleet = [start_worker(store, log) for _ in range(workers)]
    killed_pid, kill_time, restarted = 0, 0.0, False
    abandoned: dict[tuple[str, str], float] = {}
    taken_over: dict[tuple[str, str], float] = {}
    most_leased = dict.fromkeys(TENANTS, 0)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            for tenant, leased in leased_per_tenant(engine).items():
                most_leased[tenant] = max(most_leased[tenant], leased)
            done = 0
            for tenant in TENANTS:  # decide approvals from this process, as a human would
                for wait in engine.store.list_waits(tenant, status="pending", limit=10_000):
                    if wait.kind == "approval":
                        engine.approve(wait.run_id, wait.wait_id, by="ops", tenant=tenant)
                done += len(engine.list_runs(tenant=tenant, status="completed",
                                             limit=100_000))
            if done == runs and restarted:
                break
            if not killed_pid and len(executions(log)) >= runs:  # midway: a third of calls
                # Frozen first, so the runs it holds stay held until the kill (a worker that
                # ran on could release them all between a look and the kill).
                fleet[0].send_signal(signal.SIGSTOP)
                time.sleep(0.2)  # a statement it had sent commits meanwhile
                held = held_by(engine, fleet[0].pid)
                if held:  # killed while it holds runs
                    killed_pid = fleet[0].pid
                    fleet[0].send_signal(signal.SIGKILL)
                    fleet[0].wait()
                    kill_time = time.time()
                    abandoned = held
                else:
                    fleet[0].send_signal(signal.SIGCONT)
            for key in abandoned.keys() - taken_over.keys():
                run = engine.store.get_run(*key)
                if run is not None and (run.lease_owner is None
                                        or f":{killed_pid}:" not in run.lease_owner):
                    taken_over[key] = time.time()
            if killed_pid and not restarted and time.time() > kill_time + LEASE + 1:
                fleet[0] = start_worker(store, log)
                restarted = True
            time.sleep(0.2)
    finally:
        for proc in fleet:
            proc.send_signal(signal.SIGTERM)
        for proc in fleet:
            proc.wait(120)

    assert killed_pid and restarted and abandoned
    # Each tenant's cap (globex's own, lower) held across the worker processes.
    assert all(most_leased[tenant] <= CAPS[tenant] for tenant in TENANTS), most_leased
    results = {(t, f"run-{i}"): engine.get_run(f"run-{i}", tenant=t)
               for i, t in ((i, TENANTS[i % len(TENANTS)]) for i in range(runs))}
    assert {(r.status, str(r.outputs)) for r in results.values()} == {
        ("completed", "{'shipped': 'ship'}")}
    leased = [key for key in results
              if engine.store.get_run(*key).lease_owner is not None]  # type: ignore[union-attr]
    assert leased == []
    # Each call ran; none started again after its result was journaled.
    journaled: dict[tuple[str, str, str], float] = {}
    for tenant, run_id in results:
        for entry in engine.journal(run_id, tenant=tenant):
            if entry.kind == "result" and entry.key in ("left", "right", "ship"):
                journaled.setdefault((tenant, run_id, entry.key), entry.at)
    started: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for tenant, run_id, key, _pid, at in executions(log):
        started[(tenant, run_id, key)].append(at)
    assert started.keys() == journaled.keys() and len(journaled) == 3 * runs
    again = {key: times for key, times in started.items()
             if any(at > journaled[key] for at in times)}
    assert again == {}
    # The killed worker's runs waited for their leases to expire, and not much longer.
    assert taken_over.keys() == abandoned.keys()
    late = {key: round(taken_over[key] - expiry, 1) for key, expiry in abandoned.items()
            if taken_over[key] > expiry + POLL + 10}
    assert late == {}
    engine.close()


def test_four_workers_on_postgres(tmp_path: Path) -> None:
    with postgres_schema() as store:
        run_fleet(store, tmp_path, runs=90, workers=4)


@pytest.mark.slow
def test_four_workers_on_postgres_500_runs(tmp_path: Path) -> None:
    with postgres_schema() as store:
        run_fleet(store, tmp_path, runs=500, workers=4)


def test_two_workers_on_one_sqlite_file(tmp_path: Path) -> None:
    run_fleet(str(tmp_path / "fleet.db"), tmp_path, runs=30, workers=2)
