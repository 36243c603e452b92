"""One lease keeper per engine: runs executing at once are renewed by one thread, all their
leases in one store call per round, and each lease still outlives its first expiry.

Counted, not timed: threads alive, renewal calls and the leases each one carried."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from agentflow import Engine, ToolContext, tool
from agentflow.store.sqlite import SQLiteStore

RUNS = 20


def test_runs_executing_at_once_share_one_lease_thread_and_one_renewal_per_round(
        tmp_path: Path) -> None:
    engine = Engine(SQLiteStore(str(tmp_path / "runs.db")), lease_seconds=0.6)
    renewals: list[int] = []
    renew = engine.store.renew_leases

    def counted(leases: list[tuple[str, str, str]], seconds: float,
                now: float) -> set[tuple[str, str, str]]:
        renewals.append(len(leases))
        return renew(leases, seconds, now)

    engine.store.renew_leases = counted  # type: ignore[method-assign]
    arrived: set[str] = set()
    release = threading.Event()

    @tool
    async def linger(ctx: ToolContext) -> str:
        arrived.add(ctx.run_id)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "done"

    plan: dict[str, Any] = {"steps": [{"id": "linger", "tool": "linger"}]}

    async def together() -> list[Any]:
        return await asyncio.gather(*(engine.aexecute(plan, tools=[linger], run_id=f"r{i}")
                                      for i in range(RUNS)))

    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.extend(asyncio.run(together())))
    runner.start()
    try:
        deadline = time.monotonic() + 60  # a safety net only
        while len(arrived) < RUNS and time.monotonic() < deadline:
            time.sleep(0.01)
        first_expiry = max(engine.store.get_run("default", f"r{i}").lease_expires_at  # type: ignore[union-attr]
                           for i in range(RUNS))
        while (engine.leases.rounds < 2 or time.time() <= first_expiry) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        names = [thread.name for thread in threading.enumerate()]
        stored = [engine.store.get_run("default", f"r{i}") for i in range(RUNS)]
    finally:
        release.set()
        runner.join(60)

    assert names.count("agentflow-leases") == 1
    assert not [name for name in names if name.startswith("lease:")]
    assert RUNS in renewals  # a round renewed every lease at once, in one call
    assert len(renewals) == engine.leases.rounds
    assert all(run is not None and run.lease_expires_at > first_expiry  # type: ignore[operator]
               for run in stored)  # renewed past the first lease's end: nobody took over
    assert [r.status for r in results] == ["completed"] * RUNS
    engine.close()
    assert "agentflow-leases" not in [t.name for t in threading.enumerate()]
