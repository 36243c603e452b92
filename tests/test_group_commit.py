"""Group commit: runs executing at once in one engine share their journal commits, and still
no call starts before the commit that holds its predecessor's result has returned
(contract 3). A lone run commits at once, in its own thread.

Counted, not timed: transactions that wrote journal rows (from the SQLite connection's
statement trace), and, from inside each tool, what another connection can already read."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from agentflow import Engine, ToolContext, tool
from agentflow.store.sqlite import SQLiteStore

RUNS, STEPS = 20, 10


class Transactions:
    """A statement trace that counts the transactions holding a statement starting with
    each of `prefixes` (an autocommit statement is a transaction of its own)."""

    def __init__(self, *prefixes: str) -> None:
        self.prefixes = [prefix.upper() for prefix in prefixes]
        self.count = 0
        self.threads: set[str] = set()  # that committed them
        self._open = False
        self._hits: set[str] = set()
        self._last = ""

    def __call__(self, statement: str) -> None:
        if statement == self._last:  # the trace repeats a statement for each trigger it fires
            return
        self._last = statement
        words = statement.lstrip().upper()
        if words.startswith("BEGIN"):
            self._open, self._hits = True, set()
        elif words.startswith(("COMMIT", "ROLLBACK")):
            if words.startswith("COMMIT") and len(self._hits) == len(self.prefixes):
                self._commit()
            self._open = False
        else:
            hits = {prefix for prefix in self.prefixes if words.startswith(prefix)}
            if self._open:
                self._hits |= hits
            elif hits and len(self.prefixes) == 1:
                self._commit()

    def _commit(self) -> None:
        self.count += 1
        self.threads.add(threading.current_thread().name)


def traced(engine: Engine) -> Transactions:
    """Count the transactions that write journal rows."""
    assert isinstance(engine.store, SQLiteStore)
    commits = Transactions("INSERT INTO journal")
    engine.store._conn.set_trace_callback(commits)
    return commits


def chain(steps: int) -> dict[str, Any]:
    plan = [{"id": "s0", "tool": "probe", "args": {"previous": None}}]
    plan += [{"id": f"s{i}", "tool": "probe", "args": {"previous": f"s{i - 1}"},
              "after": [f"s{i - 1}"]} for i in range(1, steps)]
    return {"steps": plan, "outputs": {"last": f"${{steps.s{steps - 1}.output}}"}}


def probing(db: Path, seen: list[tuple[str, str, bool]]) -> Any:
    """A tool that asks a connection of its own whether its predecessor's result and its
    own intent are committed (only committed rows are visible to another connection)."""
    @tool
    def probe(previous: str | None, ctx: ToolContext) -> str:
        reader = sqlite3.connect(db)
        try:
            kinds = {row for row in reader.execute(
                "SELECT key, kind FROM journal WHERE run_id = ?", (ctx.run_id,))}
        finally:
            reader.close()
        committed = (ctx.step_id, "intent") in kinds and (
            previous is None or (previous, "result") in kinds)
        seen.append((ctx.run_id, ctx.step_id, committed))
        return ctx.step_id

    return probe


async def run_together(engine: Engine, tools: list[Any], plan: dict[str, Any]) -> list[Any]:
    return await asyncio.gather(*(engine.aexecute(plan, tools=tools, run_id=f"r{i}")
                                  for i in range(RUNS)))


def test_concurrent_runs_share_commits_and_no_call_outruns_its_predecessors_commit(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    # A window far longer than the test: a group closes only once every run handed in.
    engine = Engine(str(db), group_commit_window=30.0)
    seen: list[tuple[str, str, bool]] = []
    commits = traced(engine)
    results = asyncio.run(run_together(engine, [probing(db, seen)], chain(STEPS)))

    assert [r.outputs for r in results] == [{"last": f"s{STEPS - 1}"}] * RUNS
    assert len(seen) == RUNS * STEPS
    assert [call for call in seen if not call[2]] == []  # every call after its commit
    assert commits.count <= RUNS * STEPS / 5  # not one commit per step: about one per round
    assert engine.commits.commits >= STEPS  # the shared commits were the committer's
    assert "agentflow-group-commit" in commits.threads
    engine.close()


def test_a_lone_run_commits_each_round_at_once_in_its_own_thread(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = Engine(str(db), group_commit_window=30.0)
    seen: list[tuple[str, str, bool]] = []
    commits = traced(engine)
    result = engine.execute(chain(STEPS), tools=[probing(db, seen)], run_id="lone")

    assert result.status == "completed" and all(call[2] for call in seen)
    assert commits.count == STEPS + 1  # a commit per round (results, then next intents)
    assert commits.threads == {threading.current_thread().name}
    assert engine.commits.commits == 0
    engine.close()


def test_runs_started_together_share_the_commits_that_create_and_end_them(
        tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"), group_commit_window=30.0)
    assert isinstance(engine.store, SQLiteStore)
    creations, ends = Transactions("INSERT INTO runs"), Transactions("UPDATE runs SET status")
    engine.store._conn.set_trace_callback(lambda sql: (creations(sql), ends(sql)))
    seen: list[tuple[str, str, bool]] = []
    results = asyncio.run(run_together(engine, [probing(tmp_path / "runs.db", seen)],
                                       chain(2)))

    assert [r.status for r in results] == ["completed"] * RUNS
    assert all(call[2] for call in seen)  # still: every call after its predecessor's commit
    assert 1 <= creations.count <= RUNS / 4  # not one commit per run created
    assert 1 <= ends.count <= RUNS / 4  # nor per run ended
    engine.close()


def test_a_lone_run_commits_its_last_results_with_its_end(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = Engine(str(db), group_commit_window=30.0)
    assert isinstance(engine.store, SQLiteStore)
    journal = Transactions("INSERT INTO journal")
    ends = Transactions("UPDATE runs SET status")
    both = Transactions("INSERT INTO journal", "UPDATE runs SET status")
    engine.store._conn.set_trace_callback(lambda sql: (journal(sql), ends(sql), both(sql)))
    result = engine.execute(chain(STEPS), tools=[probing(db, [])], run_id="lone")

    assert result.status == "completed" and result.outputs == {"last": f"s{STEPS - 1}"}
    # a commit per round (its results, then the next intents), the last one with the end
    assert (journal.count, ends.count, both.count) == (STEPS + 1, 1, 1)
    stored = [(e.key, e.kind) for e in engine.journal("lone")]
    assert stored[-1] == (f"s{STEPS - 1}", "result")
    engine.close()


class CountedCondition(threading.Condition):
    """The committer's condition, counting how often its thread woke up."""

    wakeups = 0

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        self.wakeups += 1
        return woke


def test_the_committer_wakes_once_or_twice_per_group_not_once_per_batch(
        tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"), group_commit_window=30.0)
    condition = engine.commits._changed = CountedCondition()
    results = asyncio.run(run_together(engine, [probing(tmp_path / "runs.db", [])],
                                       chain(STEPS)))

    assert [r.status for r in results] == ["completed"] * RUNS
    groups = engine.commits.commits
    assert groups >= STEPS
    # each group: the first batch wakes the thread, the batch that completes it again
    # (it was one wake-up per batch: RUNS per group)
    assert condition.wakeups <= 2 * groups + 1, (condition.wakeups, groups)
    engine.close()
