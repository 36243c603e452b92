"""What only the PostgreSQL store promises: its URL, its schema, and its faults (an
unreachable server, dropped connections, statement timeouts), each one clear error naming
the URL without its password and losing nothing committed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentflow import Engine, tool
from agentflow.errors import LeaseLost, StoreError
from agentflow.store import JournalAppend, JournalEntry, RunRecord, StoredPlan, open_store
from agentflow.store.postgres import PostgresStore
from agentflow.store.schema import latest_version
from agentflow.worker import Worker
from tests.support.faults import record_statements
from tests.support.stores import postgres_schema
from tests.support.wire import Wire

T = "acme"
PLAN = StoredPlan(T, "plan-1", "graph", "{}", 0.0)


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as fresh:
        yield fresh


def admin(url: str) -> object:
    import psycopg

    return psycopg.connect(url.split("?")[0], autocommit=True)


def start(store: Any, run_id: str = "run-1") -> None:
    store.create_run(RunRecord(T, run_id, "plan-1", "running", {}), PLAN, "w1", 30.0)


def test_an_unreachable_server_is_one_error_naming_the_url_without_password() -> None:
    with pytest.raises(StoreError) as error:
        open_store("postgresql://alice:hunter2@127.0.0.1:1/agentflow?connect_timeout=5")
    message = str(error.value)
    assert "hunter2" not in message
    assert message.startswith(
        "cannot reach PostgreSQL store at postgresql://alice:***@127.0.0.1:1/agentflow")


@pytest.mark.parametrize(("query", "message"), [
    ("schema=Bad-Name", "schema must be a lower-case name"),
    ("pool_size=none", "pool_size must be a whole number"),
    ("pool_size=0", "pool_size must be >= 1"),
    ("statement_timeout=-1", "statement_timeout > 0"),
])
def test_bad_url_options_are_refused_before_connecting(query: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as error:
        open_store(f"postgresql://alice:hunter2@127.0.0.1:1/x?{query}")
    assert "hunter2" not in str(error.value)


def test_the_schema_is_created_migrated_and_versioned(url: str) -> None:
    with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        schema = store.schema
    with admin(url) as conn:  # type: ignore[attr-defined]
        tables = {name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
        version = conn.execute(f"SELECT value FROM {schema}.meta"
                               " WHERE key = 'schema_version'").fetchone()
    assert tables == {"meta", "plans", "runs", "journal", "waits", "events", "tokens", "secrets",
                      "plan_versions", "policies", "charges", "traces", "tenant_usage"}
    assert version == (str(latest_version()),)


def test_a_database_from_a_newer_agentflow_is_refused(url: str) -> None:
    with open_store(url) as store:
        schema = store.schema  # type: ignore[attr-defined]
    with admin(url) as conn:  # type: ignore[attr-defined]
        conn.execute(f"UPDATE {schema}.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="has schema version 99, newer than"):
        open_store(url)


def test_stores_opening_a_new_schema_at_once_all_succeed(url: str) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_store(url).close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def terminate(url: str, application: str) -> int:
    """Terminate this test's own server connections (as a server restart would)."""
    with admin(url) as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE application_name = %s", (application,)).fetchone()
    return int(row[0])


def test_a_dropped_connection_is_replaced_and_the_call_succeeds(url: str) -> None:
    application = f"af_test_{uuid.uuid4().hex[:12]}"
    with open_store(f"{url}&application_name={application}") as store:
        start(store)
        assert terminate(url, application) >= 1
        store.append_journal(T, "run-1", "w1", [JournalEntry("a", "result", {"v": 1})])
        assert [e.data for e in store.read_journal(T, "run-1")] == [{"v": 1}]
        assert terminate(url, application) >= 1
        assert store.get_run(T, "run-1") is not None


def test_close_engines_ends_the_connections_of_the_shared_engines(url: str) -> None:
    from agentflow import execute_plan, tool
    from agentflow.engine.api import close_engines

    @tool
    def noop() -> str:
        return "ok"

    application = url.rsplit("application_name=", 1)[-1]
    plan = {"format": "agentflow/v1", "steps": [{"id": "a", "tool": "noop", "args": {}}]}
    assert execute_plan(plan, tools=[noop], store=url).status == "completed"

    def sessions() -> int:
        with admin(url) as conn:  # type: ignore[attr-defined]
            return int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE"
                                    " application_name = %s", (application,)).fetchone()[0])

    assert sessions() >= 1  # the shared engine keeps its pool open between calls
    close_engines()
    deadline = time.monotonic() + 60  # the server ends a session a moment after its client
    while sessions() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sessions() == 0


def test_a_group_commit_of_several_runs_is_one_statement_fenced_per_run(url: str) -> None:
    with open_store(url) as store:
        for run_id in ("run-1", "run-2", "run-3"):
            start(store, run_id)
        store.append_journal(T, "run-2", "w1", [JournalEntry("before", "result")])
        store.finish_run(T, "run-3", "w1", "running")  # releases the lease: w1 lost it
        seen = record_statements(store)
        answers = store.write_group([
            JournalAppend(T, "run-1", "w1", [JournalEntry("a", "result", 1),
                                             JournalEntry("b", "result")]),
            JournalAppend(T, "run-2", "w1", [JournalEntry("c", "result", 3)]),
            JournalAppend(T, "run-3", "w1", [JournalEntry("lost", "result")]),
            JournalAppend(T, "run-1", "w1", [JournalEntry("d", "result", 4)]),
        ])
        assert len(seen) == 1
        assert [type(answer) for answer in answers] == [type(None), type(None), LeaseLost,
                                                         type(None)]
        journals = {run_id: [(e.seq, e.key) for e in store.read_journal(T, run_id)]
                    for run_id in ("run-1", "run-2", "run-3")}
        assert journals == {"run-1": [(1, "a"), (2, "b"), (3, "d")],
                            "run-2": [(1, "before"), (2, "c")], "run-3": []}


class _DropOnce:
    """A pool whose first journal append loses its connection before or after the server
    ran it (after: committed, but the client cannot know)."""

    def __init__(self, pool: Any, after: bool) -> None:
        self._pool, self._after, self.dropped = pool, after, 0

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._pool.connection() as conn:
            yield _Dropping(conn, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _Dropping:
    def __init__(self, conn: Any, pool: _DropOnce) -> None:
        self._conn, self._pool = conn, pool

    def execute(self, sql: str, params: Any = (), **options: Any) -> Any:
        import psycopg

        drop = sql.startswith("WITH batch") and not self._pool.dropped
        if drop and not self._pool._after:
            self._pool.dropped += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        cursor = self._conn.execute(sql, params, **options)
        if drop:
            self._pool.dropped += 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.mark.parametrize("after_commit", [False, True])
def test_a_group_commit_whose_connection_drops_writes_each_entry_once(
    url: str, after_commit: bool
) -> None:
    with open_store(url) as store:
        assert isinstance(store, PostgresStore)
        for run_id in ("run-1", "run-2"):
            start(store, run_id)
        store._pool = _DropOnce(store._pool, after_commit)  # type: ignore[assignment]
        answers = store.write_group([
            JournalAppend(T, "run-1", "w1", [JournalEntry("a", "result", 1)]),
            JournalAppend(T, "run-2", "w1", [JournalEntry("b", "result", 2)]),
            JournalAppend(T, "run-1", "w1", [JournalEntry("c", "result", 3)]),
        ])
        assert answers == [None, None, None]
        assert store._pool.dropped == 1  # type: ignore[attr-defined]
        assert [e.key for e in store.read_journal(T, "run-1")] == ["a", "c"]
        assert [e.key for e in store.read_journal(T, "run-2")] == ["b"]


def test_a_statement_timeout_is_a_clear_error_and_changes_nothing(url: str) -> None:
    secret = url.replace("://postgres@", "://postgres:hunter2@", 1)  # trust auth ignores it
    with open_store(f"{secret}&statement_timeout=0.2") as store:
        assert isinstance(store, PostgresStore)
        start(store)
        schema = store.schema
        with admin(url) as blocker:  # type: ignore[attr-defined]
            blocker.execute("BEGIN")
            blocker.execute(f"SELECT 1 FROM {schema}.runs FOR UPDATE")
            with pytest.raises(StoreError) as error:
                store.append_journal(T, "run-1", "w1", [JournalEntry("a", "result", 1)])
            blocker.execute("ROLLBACK")
        assert "statement_timeout; nothing was changed" in str(error.value)
        assert "PostgreSQL store at postgresql://postgres:***@" in str(error.value)
        assert "hunter2" not in str(error.value)
        assert store.read_journal(T, "run-1") == []
        store.append_journal(T, "run-1", "w1", [JournalEntry("a", "result", 1)])
        assert len(store.read_journal(T, "run-1")) == 1


def test_wait_for_work_wakes_on_a_submission_from_another_store(url: str) -> None:
    with open_store(url) as idle, open_store(url) as other:
        assert idle.wait_for_work(0.01) is False  # listening from now on
        threading.Timer(0.2, lambda: other.submit_run(
            RunRecord(T, "q-1", "plan-1", "queued", {}), PLAN)).start()
        assert idle.wait_for_work(120.0) is True


def test_a_deadlock_is_retried_and_the_decision_lands_once(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's transaction locks the run, then waits for the wait; another transaction
    holds the wait and then asks for the run. The store's backend, waiting longest, finds
    the deadlock and is aborted; the store runs its transaction again, and it lands once."""
    from agentflow.store import WaitRecord

    application = f"af_test_{uuid.uuid4().hex[:12]}"
    with open_store(f"{url}&application_name={application}") as store:
        schema = store.schema  # type: ignore[attr-defined]
        start(store)
        store.put_waits(T, "run-1", "w1", [WaitRecord(T, "run-1", "ok:1", "ok", "approval",
                                                      "plan-1")])
        store.finish_run(T, "run-1", "w1", "waiting")
        decided: list[object] = []
        decider = threading.Thread(target=lambda: decided.append(store.decide_wait(
            T, "run-1", "ok:1", "approved", {"by": "ann"}, time.time())))
        with admin(url) as other, caplog.at_level("INFO", logger="agentflow.store"):  # type: ignore[attr-defined]
            other.execute("BEGIN")
            other.execute(f"SELECT 1 FROM {schema}.waits FOR UPDATE")
            decider.start()
            while other.execute(  # the decider holds the run's row, waits for the wait's
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                    " AND wait_event_type = 'Lock'", (application,)).fetchone()[0] == 0:
                time.sleep(0.05)
            other.execute(f"SELECT 1 FROM {schema}.runs FOR UPDATE")  # granted once aborted
            other.execute("ROLLBACK")
            decider.join(60)
        assert len(decided) == 1
        (wait,) = store.list_waits(T, "run-1")
        assert (wait.status, wait.decision) == ("approved", {"by": "ann"})
    retries = [m for m in caplog.messages if "retrying (attempt 2 of 5)" in m]
    assert len(retries) == 1 and "deadlock detected" in retries[0]


def test_a_serialization_failure_is_retried_and_loses_nothing_committed(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store runs at REPEATABLE READ (libpq `options` in its URL), so a row another
    transaction changed after its snapshot fails its lock with SQLSTATE 40001: another
    transaction renews the lease and journals an entry while the store's `finish_run`
    waits for the run's row. The store runs its transaction again, on a fresh snapshot:
    both writes are kept, each once."""
    import psycopg

    application = f"af_test_{uuid.uuid4().hex[:12]}"
    isolation = "options=-c%20default_transaction_isolation%3Drepeatable%5C%20read"
    with open_store(f"{url}&application_name={application}&{isolation}") as store:
        schema = store.schema  # type: ignore[attr-defined]
        start(store)
        finished: list[object] = []
        finisher = threading.Thread(target=lambda: finished.append(store.finish_run(
            T, "run-1", "w1", "completed", outputs={"v": 1},
            entries=[JournalEntry("done", "result", 2)])))
        with admin(url) as other, caplog.at_level("INFO", logger="agentflow.store"):  # type: ignore[attr-defined]
            assert other.execute(  # the store's sessions run at REPEATABLE READ
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application,)).fetchone()[0] >= 1
            other.execute(f"SET search_path = {schema}")  # as the store's triggers expect
            other.execute("BEGIN")
            other.execute(f"UPDATE {schema}.runs SET lease_expires_at = lease_expires_at + 60"
                          " WHERE tenant_id = %s AND run_id = 'run-1'", (T,))
            other.execute(f"INSERT INTO {schema}.journal (tenant_id, run_id, seq, key, kind,"
                          " attempt, data, at) VALUES (%s, 'run-1', 1, 'renewed', 'result', 0,"
                          " '1', 1.0)", (T,))
            finisher.start()
            while other.execute(  # the store's transaction took its snapshot, waits for the row
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                    " AND wait_event_type = 'Lock'", (application,)).fetchone()[0] == 0:
                time.sleep(0.05)
            other.execute("COMMIT")
            finisher.join(60)
        assert finished == [None]
        assert [(e.seq, e.key) for e in store.read_journal(T, "run-1")] == [
            (1, "renewed"), (2, "done")]
        run = store.get_run(T, "run-1")
        assert run is not None
        assert (run.status, run.outputs, run.lease_owner) == ("completed", {"v": 1}, None)
    retries = [m for m in caplog.messages if "retrying (attempt 2 of 5)" in m]
    assert len(retries) == 1 and "could not serialize access" in retries[0]
    assert psycopg.errors.SerializationFailure.sqlstate == "40001"


def test_a_worker_survives_a_server_restart_and_finishes_its_runs(url: str) -> None:
    """Every connection of the worker is terminated while its runs execute (as a server
    restart does): the runs finish, and the worker goes on to claim new ones."""
    from agentflow import Engine, tool
    from agentflow.worker import Worker

    gate = threading.Event()

    @tool
    def held(text: str) -> str:
        gate.wait(120)
        return text

    application = f"af_test_{uuid.uuid4().hex[:12]}"
    engine = Engine(f"{url}&application_name={application}", tools=[held])
    flow = {"format": "agentflow/v1", "steps": [
        {"id": "a", "tool": "held", "args": {"text": "a"}},
        {"id": "b", "tool": "held", "args": {"text": "b"}, "after": ["a"]}],
        "outputs": {"b": "${steps.b.output}"}}
    engine.submit(flow, run_id="r1")
    stop = threading.Event()
    worker = threading.Thread(target=Worker(engine, poll=0.2).run, args=(stop,))
    worker.start()
    try:
        while engine.store.get_run("default", "r1").status != "running":  # type: ignore[union-attr]
            time.sleep(0.05)
        assert terminate(url, application) >= 1
        gate.set()
        assert engine.wait("r1", timeout=120).outputs == {"b": "b"}
        engine.submit(flow, run_id="r2")  # claimed after the restart
        assert engine.wait("r2", timeout=120).outputs == {"b": "b"}
    finally:
        stop.set()
        gate.set()
        worker.join(60)
        engine.close()


def test_an_idle_worker_is_woken_by_a_notification_not_its_poll(url: str) -> None:
    """The worker's poll is 10 minutes; the run submitted after it went idle completes
    well within `wait`'s 2 minutes, so the submission's NOTIFY woke it."""
    from agentflow import Engine, tool
    from agentflow.worker import Worker

    @tool
    def echo(text: str) -> str:
        return text

    engine = Engine(url, tools=[echo])
    stop = threading.Event()
    worker = threading.Thread(target=Worker(engine, poll=600).run, args=(stop,))
    worker.start()
    try:
        time.sleep(0.5)  # idle: listening, its slots waiting
        engine.submit({"format": "agentflow/v1", "steps": [
            {"id": "a", "tool": "echo", "args": {"text": "hi"}}],
            "outputs": {"a": "${steps.a.output}"}}, run_id="r1")
        assert engine.wait("r1", timeout=120).outputs == {"a": "hi"}
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()  # a stop is seen within a second, whatever the poll
    engine.close()


def test_appends_of_one_tenants_runs_do_not_wait_for_each_others_commit(url: str) -> None:
    """The tenant's journal counter has a row per connection: a transaction that appended
    and has not committed yet does not hold up another connection's append for the
    same tenant (with one row per tenant it did, until the first committed)."""
    import psycopg

    schema = url.split("schema=")[1].split("&")[0]
    with open_store(url) as store:
        start(store, "run-1")
        start(store, "run-2")
        connections: list[Any] = []
        while len({c.info.backend_pid % 32 for c in connections}) < 2:
            connections.append(psycopg.connect(url.split("?")[0]))
        first = connections[0]
        second = next(c for c in connections
                      if c.info.backend_pid % 32 != first.info.backend_pid % 32)
        insert = (f"INSERT INTO {schema}.journal (tenant_id, run_id, seq, key, kind, attempt,"
                  " data, at) VALUES ('acme', %s, 1, 'k', 'result', 1, %s, 0)")
        try:
            first.execute(insert, ("run-1", '"' + "a" * 10 + '"'))  # open, not committed
            second.execute("SET lock_timeout = '20s'")  # a safety net: it must not wait
            second.execute(insert, ("run-2", '"' + "b" * 20 + '"'))
            second.commit()
            assert store.journal_bytes(T) == 22
            first.commit()
            assert store.journal_bytes(T) == 34
        finally:
            for connection in connections:
                connection.close()


@tool
def echo(text: str) -> str:
    return text


def statements_of_a_lone_run(url: str, steps: int) -> int:
    """Statements a worker's pooled connections send to claim, execute and settle one run
    of a chain of `steps` tool calls, alone on the store (the idle loop's look for the next
    timer left out: it is the worker's, not the run's)."""
    chain = [{"id": f"s{i}", "tool": "echo", "args": {"text": str(i)},
              **({"after": [f"s{i - 1}"]} if i else {})} for i in range(steps)]
    engine = Engine(url, tools=[echo])
    engine.submit({"format": "agentflow/v1", "steps": chain, "outputs": {}}, run_id=f"r{steps}")
    engine.store.next_wake_at = lambda: None  # type: ignore[method-assign]
    wire = Wire(engine.store)
    try:
        assert Worker(engine, concurrency=1).run(threading.Event(), max_runs=1) == 1
    finally:
        wire.close()
    assert engine.get_run(f"r{steps}").status == "completed"
    engine.close()
    return wire.statements


def test_a_lone_run_costs_a_fixed_number_of_statements_and_one_per_further_step(
        url: str) -> None:
    # The claim 1 (with the plan and the policy; the engine reads neither again, nor the
    # journal and waits of a run the claim started); one engine read; a step's journal
    # batch 1 each; the end 1 (its last entries, the update and the notification).
    assert statements_of_a_lone_run(url, 2) == 5
    assert statements_of_a_lone_run(url, 6) == 5 + 4
