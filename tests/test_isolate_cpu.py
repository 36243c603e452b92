"""CPU fairness between tenants: each tenant's isolates share one cgroup of equal weight.

Seen from outside: which cgroup each running isolate is in (/proc/<pid>/cgroup), and how
the CPU time of busy isolates pinned to one CPU splits (in clock ticks from
/proc/<pid>/stat, a ratio of counts: three isolates of one tenant against one of another
get, each, a third of what the lone one gets; without the groups, as much).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentflow import Engine, SandboxLimits, code_plan, tool
from agentflow.errors import IsolateCrashed
from agentflow.sandbox import IsolatePool
from agentflow.sandbox.cpu_groups import TenantCpuGroups
from tests.support.isolates import isolate_pids, limit_of, running_isolate

seen: dict[str, Any] = {}


def cpu_group(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") or (controllers == "" and number == "0"):
            return path
    raise LookupError(pid)


@tool
def my_cpu_group() -> str:
    """The CPU cgroup of the isolate running the calling plan."""
    return cpu_group(running_isolate(seen["pool"]))


@pytest.fixture
def pool() -> Iterator[IsolatePool]:
    isolates = IsolatePool(warm=1)
    seen["pool"] = isolates
    yield isolates
    isolates.close()


def _groups_or_skip(pool: IsolatePool) -> TenantCpuGroups:
    pool.release(pool.acquire())  # starts the pool, which looks for a CPU controller
    groups = pool._cpu_groups  # the test looks at what the pool made
    if groups is None:
        pytest.skip("no cgroup with a CPU controller can be made here (needs root and a "
                    "cpu hierarchy: cgroup v1 cpu, or v2 delegating cpu)")
    return groups


def test_each_tenants_isolates_share_one_cpu_group_of_equal_weight(
        tmp_path: Path, pool: IsolatePool) -> None:
    groups = _groups_or_skip(pool)
    engine = Engine(f"sqlite:///{tmp_path / 'runs.db'}", isolates=pool, tools=[my_cpu_group])
    plan = code_plan("return my_cpu_group()")
    where = {(tenant, n): engine.tenant(tenant).execute(plan).outputs
             for tenant in ("acme", "globex") for n in range(2)}
    engine.close()
    assert where[("acme", 0)] == where[("acme", 1)] != where[("globex", 0)]
    assert where[("globex", 0)] == where[("globex", 1)]
    for tenant in ("acme", "globex"):
        group = groups.group_of(tenant)
        assert where[(tenant, 0)].endswith(f"/{groups.parent.name}/{group.name}")
        assert (group / groups.weight_file).read_text().strip() == str(groups.weight)
    assert pool.cpu_fairness == groups.describe()
    pool.close()
    assert not groups.parent.exists()  # the pool removes its groups


BUSY = code_plan("while True:\n    pass")
ENDLESS = SandboxLimits(max_operations=10**15, max_seconds=600)


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _cpu_split(tmp_path: Path, pool: IsolatePool) -> dict[str, list[int]]:
    """Clock ticks each busy isolate got while all four shared one CPU: three of tenant
    "many", one of tenant "one"."""
    engine = Engine(f"sqlite:///{tmp_path / 'runs.db'}", isolates=pool)
    runners = [threading.Thread(target=_run_busy, args=(engine, tenant), daemon=True)
               for tenant in ("many", "many", "many", "one")]
    for runner in runners:
        runner.start()
    deadline = time.monotonic() + 120  # a safety net: four isolates start long before
    busy: list[int] = []
    while len(busy) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
        busy = [pid for pid in isolate_pids(pool) if _limited(pid)]
    assert len(busy) == 4, busy
    cpu = min(os.sched_getaffinity(0))
    for pid in busy:
        os.sched_setaffinity(pid, {cpu})
    start = {pid: _ticks(pid) for pid in busy}
    while sum(_ticks(pid) - start[pid] for pid in busy) < 400 and time.monotonic() < deadline:
        time.sleep(0.1)  # until the four got 4 s of CPU together
    used = {pid: _ticks(pid) - start[pid] for pid in busy}
    tenants = {pid: _tenant_of(pid, pool) for pid in busy}
    for pid in busy:
        os.kill(pid, signal.SIGKILL)
    for runner in runners:
        runner.join(60)
    engine.close()
    split: dict[str, list[int]] = {"many": [], "one": []}
    for pid, ticks in used.items():
        split[tenants[pid]].append(ticks)
    return split


def _limited(pid: int) -> bool:
    try:
        return limit_of(pid, "Max cpu time") != "unlimited"
    except FileNotFoundError:
        return False


def _tenant_of(pid: int, pool: IsolatePool) -> str:
    groups = pool._cpu_groups
    assert groups is not None
    group = cpu_group(pid)
    return next(tenant for tenant in ("many", "one") if group.endswith(
        groups.group_of(tenant).name))


def _run_busy(engine: Engine, tenant: str) -> None:
    with contextlib.suppress(IsolateCrashed):  # the test kills it
        engine.tenant(tenant).execute(BUSY, limits=ENDLESS)


@pytest.mark.timeout(300)
def test_a_tenant_with_three_busy_isolates_gets_no_more_cpu_than_one_with_one(
        tmp_path: Path, pool: IsolatePool) -> None:
    _groups_or_skip(pool)
    split = _cpu_split(tmp_path, pool)
    assert len(split["many"]) == 3 and len(split["one"]) == 1, split
    # fair by tenant: "one" gets half of the CPU, each of "many" a sixth (3x); by process
    # each would get a quarter (1x)
    assert split["one"][0] > 1.8 * max(split["many"]), split


def test_without_cpu_groups_isolates_run_and_the_pool_says_so(tmp_path: Path) -> None:
    pool = IsolatePool(warm=1, cpu_groups=False)
    seen["pool"] = pool
    engine = Engine(f"sqlite:///{tmp_path / 'runs.db'}", isolates=pool, tools=[my_cpu_group])
    try:
        result = engine.tenant("acme").execute(code_plan("return my_cpu_group()"))
    finally:
        engine.close()
        pool.close()
    assert result.status == "completed"
    assert result.outputs == cpu_group(os.getpid())  # where the engine is: no group of its own
    assert pool.cpu_fairness is None
