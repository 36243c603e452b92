"""One trial of one workload on one system, in a process of its own (bench/peers.py runs them).

    python -m bench.peer_trials SYSTEM WORKLOAD SETTING DIR STEPS

SYSTEM: agentflow, dbos or langgraph. WORKLOAD: sequential (STEPS durable no-op steps),
fanout (STEPS parallel 20 ms tools, then a fan-in step), crash (STEPS steps that each append
their index to DIR/side, to be SIGKILLed) or recover (finish the crashed run). SETTING is
the durability: agentflow `full`/`normal`; LangGraph `async` (its default) / `sync`; DBOS
has one (`default`). Prints one JSON line: the seconds the workload took, timed inside the
process after imports and setup, the CPU seconds of the process meanwhile (all its
threads: the Python each system runs per step, without the waits for the disk), and for
`sequential` the bytes the store grew by.

Each system is set up as its documentation shows: agentflow a JSON plan on its SQLite
store; DBOS Transact `@DBOS.workflow`/`@DBOS.step` on its SQLite system database (async
steps started with `asyncio.create_task` and gathered for the fan-out); LangGraph's
functional API (`@entrypoint`, `@task`) with `SqliteSaver` (`AsyncSqliteSaver` for the
async fan-out).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

TOOL_SECONDS = 0.02


def store_bytes(directory: Path) -> int:
    """The store's size on disk, its WAL (if any) checkpointed into the database first."""
    for database in directory.iterdir():
        if database.suffix in (".db", ".sqlite"):
            connection = sqlite3.connect(database)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()
    return sum(f.stat().st_size for f in directory.iterdir() if f.name != "side")


def mark(directory: Path, index: int) -> None:
    with open(directory / "side", "a", encoding="utf-8") as side:
        side.write(f"{index}\n")


# -- agentflow ----------------------------------------------------------------------------

def agentflow_trial(workload: str, setting: str, directory: Path, steps: int) -> dict[str, Any]:
    from agentflow import Engine, tool

    @tool(side_effects=False)
    def noop(x: int) -> int:
        return x + 1

    @tool
    async def sleepy(x: int) -> int:
        await asyncio.sleep(TOOL_SECONDS)
        return x

    @tool(side_effects=False)
    def join(values: list[int]) -> int:
        return sum(values)

    @tool
    def marked(x: int) -> int:
        mark(directory, x)
        return x + 1

    engine = Engine(f"sqlite:///{directory / 'agentflow.db'}?durability={setting}",
                    max_concurrency=steps)
    before = store_bytes(directory)
    tools = [noop, sleepy, join, marked]
    if workload == "fanout":
        plan: dict[str, Any] = {"steps": [
            {"id": "fan", "tool": "sleepy", "foreach": list(range(steps)),
             "args": {"x": "${item}"}, "max_parallel": steps},
            {"id": "join", "tool": "join", "args": {"values": "${steps.fan.output}"}}],
            "outputs": {"sum": "${steps.join.output}"}}
    else:
        name = "noop" if workload == "sequential" else "marked"
        chain = [{"id": "s0", "tool": name, "args": {"x": 0}}]
        chain += [{"id": f"s{i}", "tool": name, "args": {"x": f"${{steps.s{i - 1}.output}}"}}
                  for i in range(1, steps)]
        plan = {"steps": chain, "outputs": {"last": f"${{steps.s{steps - 1}.output}}"}}
    start, cpu = time.perf_counter(), time.process_time()
    if workload == "recover":
        result = engine.resume("crash", tools=tools)
    else:
        result = engine.execute(plan, tools=tools, run_id=workload)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.status == "completed", result.error
    engine.close()
    return {"seconds": seconds, "cpu": cpu, "bytes": store_bytes(directory) - before}


# -- DBOS Transact ------------------------------------------------------------------------

def dbos_trial(workload: str, setting: str, directory: Path, steps: int) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    @DBOS.step()
    def noop(x: int) -> int:
        return x + 1

    @DBOS.step()
    def marked(x: int) -> int:
        mark(directory, x)
        return x + 1

    @DBOS.step()
    async def sleepy(x: int) -> int:
        await asyncio.sleep(TOOL_SECONDS)
        return x

    @DBOS.step()
    async def join(values: list[int]) -> int:
        return sum(values)

    @DBOS.workflow()
    def chain(n: int, marking: bool) -> int:
        x = 0
        for _ in range(n):
            x = marked(x) if marking else noop(x)
        return x

    @DBOS.workflow()
    async def fanout(n: int) -> int:
        tasks = [asyncio.create_task(sleepy(i)) for i in range(n)]
        return await join(list(await asyncio.gather(*tasks)))

    config: DBOSConfig = {"name": "peers",
                          "system_database_url": f"sqlite:///{directory / 'dbos.sqlite'}",
                          "run_admin_server": False}
    DBOS(config=config)
    start = time.perf_counter()
    DBOS.launch()  # recovers the crashed workflow, as a restarted application does
    if workload == "recover":
        DBOS.retrieve_workflow("crash").get_result()
        seconds = time.perf_counter() - start
        DBOS.destroy()
        return {"seconds": seconds}
    before = store_bytes(directory)
    start, cpu = time.perf_counter(), time.process_time()
    with SetWorkflowID(workload):
        if workload == "fanout":
            asyncio.run(fanout(steps))
        else:
            chain(steps, workload == "crash")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    DBOS.destroy()
    return {"seconds": seconds, "cpu": cpu, "bytes": store_bytes(directory) - before}


# -- LangGraph ----------------------------------------------------------------------------

def langgraph_trial(workload: str, setting: str, directory: Path,
                    steps: int) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.func import entrypoint, task

    path = str(directory / "langgraph.sqlite")
    config = {"configurable": {"thread_id": "crash" if workload == "recover" else workload},
              "recursion_limit": 10 * steps}
    if workload == "fanout":
        return asyncio.run(langgraph_fanout(path, setting, steps, config))

    @task
    def noop(x: int) -> int:
        return x + 1

    @task
    def marked(x: int) -> int:
        mark(directory, x)
        return x + 1

    with SqliteSaver.from_conn_string(path) as saver:
        step = noop if workload == "sequential" else marked

        @entrypoint(checkpointer=saver)
        def chain(n: int) -> int:
            x = 0
            for _ in range(n):
                x = step(x).result()
            return x

        saver.setup()
        before = store_bytes(directory)
        start, cpu = time.perf_counter(), time.process_time()
        value = chain.invoke(None if workload == "recover" else steps, config,
                             durability=setting)  # type: ignore[arg-type]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert value == steps, value
    return {"seconds": seconds, "cpu": cpu, "bytes": store_bytes(directory) - before}


async def langgraph_fanout(path: str, setting: str, steps: int,
                           config: dict[str, Any]) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.func import entrypoint, task

    @task
    async def sleepy(x: int) -> int:
        await asyncio.sleep(TOOL_SECONDS)
        return x

    @task
    async def join(values: list[int]) -> int:
        return sum(values)

    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        @entrypoint(checkpointer=saver)
        async def fanout(n: int) -> int:
            values = await asyncio.gather(*[sleepy(i) for i in range(n)])
            return await join(list(values))

        await saver.setup()
        start = time.perf_counter()
        await fanout.ainvoke(steps, config, durability=setting)  # type: ignore[arg-type]
        return {"seconds": time.perf_counter() - start}


TRIALS = {"agentflow": agentflow_trial, "dbos": dbos_trial, "langgraph": langgraph_trial}


def main() -> None:
    system, workload, setting, directory, steps = sys.argv[1:6]
    os.chdir(directory)  # DBOS looks for its config file and writes nothing else here
    result = TRIALS[system](workload, setting, Path(directory), int(steps))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
