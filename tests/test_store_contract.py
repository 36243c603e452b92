"""The `Store` contract, one suite for every backend.

Each test receives a fresh, empty store from the `store` fixture and uses nothing but the
`Store` protocol, so a backend passes by adding a factory to `BACKENDS` (a PostgreSQL one
creates a throw-away schema and skips when no server is configured); no test here knows
which backend it runs on.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow.errors import LeaseLost, StoreError
from agentflow.store import JournalEntry, RunRecord, SQLiteStore, Store, StoredPlan


def _sqlite(tmp_path: Path) -> Store:
    return SQLiteStore(str(tmp_path / "contract.db"))


BACKENDS: dict[str, Callable[[Path], Store]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


T = "acme"
LEASE = 30.0


def plan(tenant: str = T, plan_hash: str = "plan-1", body: str = '{"steps":[]}') -> StoredPlan:
    return StoredPlan(tenant, plan_hash, "graph", body, 0.0)


def new_run(
    store: Store, run_id: str = "run-1", tenant: str = T, owner: str = "w1",
    plan_hash: str = "plan-1", **fields: Any,
) -> RunRecord:
    """Create a running run leased to `owner` and return it as stored."""
    fields.setdefault("inputs", {"n": 1})
    run = RunRecord(tenant, run_id, plan_hash, fields.pop("status", "running"), **fields)
    record, created = store.create_run(run, plan(tenant, plan_hash), owner, LEASE)
    assert created
    return record


def entry(key: str, kind: str = "result", data: Any = None, **fields: Any) -> JournalEntry:
    return JournalEntry(key=key, kind=kind, data=data, **fields)


def seqs(store: Store, run_id: str = "run-1", tenant: str = T) -> list[int]:
    return [e.seq for e in store.read_journal(tenant, run_id)]


# --- plans ----------------------------------------------------------------------------------

def test_put_plan_then_get_plan_returns_it(store: Store) -> None:
    stored = StoredPlan(T, "h1", "code", "return 1", 1234.5)
    store.put_plan(stored)
    assert store.get_plan(T, "h1") == stored
    assert store.get_plan(T, "other") is None


def test_put_plan_is_idempotent_and_the_first_body_stays(store: Store) -> None:
    store.put_plan(StoredPlan(T, "h1", "graph", "first", 1.0))
    store.put_plan(StoredPlan(T, "h1", "graph", "second", 2.0))
    store.put_plan(StoredPlan(T, "h1", "graph", "first", 1.0))
    assert store.get_plan(T, "h1") == StoredPlan(T, "h1", "graph", "first", 1.0)


# --- create_run -----------------------------------------------------------------------------

def test_create_run_inserts_the_run_leased_to_owner_and_pins_the_plan(store: Store) -> None:
    before = time.time()
    run = RunRecord(T, "run-1", "plan-1", "running", {"n": 1}, options={"max_parallel": 4})
    record, created = store.create_run(run, plan(), "w1", LEASE)
    assert created
    assert (record.tenant_id, record.run_id, record.plan_hash) == (T, "run-1", "plan-1")
    assert (record.status, record.inputs, record.options) == ("running", {"n": 1},
                                                              {"max_parallel": 4})
    assert record.outputs is None and record.error is None and record.wake_at is None
    assert record.lease_owner == "w1"
    assert before <= record.created_at <= time.time()
    assert record.updated_at == record.created_at
    assert record.lease_expires_at == pytest.approx(record.created_at + LEASE)
    assert store.get_run(T, "run-1") == record
    assert store.get_plan(T, "plan-1") == StoredPlan(T, "plan-1", "graph", '{"steps":[]}',
                                                      record.created_at)


def test_create_run_keeps_given_timestamps(store: Store) -> None:
    record = new_run(store, created_at=1000.0, updated_at=1001.0)
    assert (record.created_at, record.updated_at) == (1000.0, 1001.0)
    assert record.lease_expires_at == 1000.0 + LEASE


def test_create_run_twice_returns_the_existing_run_unchanged_and_not_leased(
    store: Store,
) -> None:
    first = new_run(store)
    again = RunRecord(T, "run-1", "plan-1", "running", {"n": 2})
    record, created = store.create_run(again, plan(), "w2", 999.0)
    assert not created
    assert record == first
    assert store.get_run(T, "run-1") == first


def test_create_run_of_an_existing_run_id_does_not_pin_the_other_plan(store: Store) -> None:
    new_run(store)
    run = RunRecord(T, "run-1", "plan-2", "running", {})
    record, created = store.create_run(run, plan(plan_hash="plan-2"), "w1", LEASE)
    assert not created and record.plan_hash == "plan-1"
    assert store.get_plan(T, "plan-2") is None


def test_create_run_of_a_finished_run_does_not_lease_it_again(store: Store) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", "completed", outputs={"ok": True})
    record, created = store.create_run(
        RunRecord(T, "run-1", "plan-1", "running", {}), plan(), "w2", LEASE
    )
    assert not created
    assert record.status == "completed" and record.lease_owner is None
    assert record.outputs == {"ok": True}


def test_create_run_rejects_a_plan_of_another_tenant_or_hash(store: Store) -> None:
    run = RunRecord(T, "run-1", "plan-1", "running", {})
    with pytest.raises(ValueError, match="does not match"):
        store.create_run(run, plan(tenant="other"), "w1", LEASE)
    with pytest.raises(ValueError, match="does not match"):
        store.create_run(run, plan(plan_hash="plan-2"), "w1", LEASE)
    assert store.get_run(T, "run-1") is None


# --- leases ---------------------------------------------------------------------------------

def test_acquire_lease_on_a_released_run(store: Store) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", "waiting")
    now = time.time()
    assert store.acquire_lease(T, "run-1", "w2", 10.0, now)
    record = store.get_run(T, "run-1")
    assert record is not None
    assert (record.lease_owner, record.lease_expires_at) == ("w2", now + 10.0)


def test_acquire_lease_after_the_holder_expired(store: Store) -> None:
    record = new_run(store)
    assert record.lease_expires_at is not None
    later = record.lease_expires_at + 1.0
    assert store.acquire_lease(T, "run-1", "w2", 10.0, later)
    after = store.get_run(T, "run-1")
    assert after is not None and after.lease_owner == "w2"


def test_acquire_lease_already_held_extends_it(store: Store) -> None:
    new_run(store)
    now = time.time() + 5.0
    assert store.acquire_lease(T, "run-1", "w1", 100.0, now)
    record = store.get_run(T, "run-1")
    assert record is not None
    assert (record.lease_owner, record.lease_expires_at) == ("w1", now + 100.0)


def test_acquire_lease_taking_over_from_a_known_dead_holder(store: Store) -> None:
    new_run(store)
    now = time.time()
    assert store.acquire_lease(T, "run-1", "w2", 10.0, now, take_over_from="w1")
    record = store.get_run(T, "run-1")
    assert record is not None and record.lease_owner == "w2"


def test_acquire_lease_held_by_a_live_other_is_refused(store: Store) -> None:
    held = new_run(store)
    now = time.time()
    assert not store.acquire_lease(T, "run-1", "w2", 10.0, now)
    assert not store.acquire_lease(T, "run-1", "w2", 10.0, now, take_over_from="w3")
    assert store.get_run(T, "run-1") == held


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_acquire_lease_on_a_finished_run_is_refused(store: Store, status: str) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", status)  # type: ignore[arg-type]
    assert not store.acquire_lease(T, "run-1", "w1", 10.0, time.time())
    record = store.get_run(T, "run-1")
    assert record is not None and record.lease_owner is None


def test_acquire_lease_on_an_unknown_run_is_refused(store: Store) -> None:
    assert not store.acquire_lease(T, "nope", "w1", 10.0, time.time())


def test_renew_lease_extends_only_the_holders_lease(store: Store) -> None:
    new_run(store)
    now = time.time() + 20.0
    assert store.renew_lease(T, "run-1", "w1", 60.0, now)
    record = store.get_run(T, "run-1")
    assert record is not None and record.lease_expires_at == now + 60.0
    assert not store.renew_lease(T, "run-1", "w2", 999.0, now)
    assert store.get_run(T, "run-1") == record


def test_renew_lease_fences_by_identity_not_expiry(store: Store) -> None:
    record = new_run(store)
    assert record.lease_expires_at is not None
    late = record.lease_expires_at + 100.0
    assert store.renew_lease(T, "run-1", "w1", 10.0, late)  # expired, but nobody took it
    assert store.acquire_lease(T, "run-1", "w2", 10.0, late + 11.0)
    assert not store.renew_lease(T, "run-1", "w1", 10.0, late + 11.0)


# --- journal --------------------------------------------------------------------------------

def test_append_then_read_journal_round_trips_every_field(store: Store) -> None:
    new_run(store)
    written = [
        entry("fetch", "intent", {"args": {"n": 7}}, attempt=1, tool="fetch_issue",
              args_hash="abc123", at=100.5),
        entry("fetch", "result", [1, "two", None], attempt=1, tool="fetch_issue",
              args_hash="abc123", at=101.5),
    ]
    store.append_journal(T, "run-1", "w1", written)
    read = store.read_journal(T, "run-1")
    assert read == [
        JournalEntry("fetch", "intent", {"args": {"n": 7}}, 1, "fetch_issue", "abc123", 100.5, 1),
        JournalEntry("fetch", "result", [1, "two", None], 1, "fetch_issue", "abc123", 101.5, 2),
    ]


def test_append_journal_stamps_entries_without_a_time(store: Store) -> None:
    new_run(store)
    before = time.time()
    store.append_journal(T, "run-1", "w1", [entry("a")])
    (read,) = store.read_journal(T, "run-1")
    assert before <= read.at <= time.time()


def test_seq_increases_by_one_across_appends_in_append_order(store: Store) -> None:
    new_run(store)
    batches = [1, 2, 1, 5, 150, 1, 3]  # 150: more entries than one statement takes
    keys = [f"k{i}" for i in range(sum(batches))]
    position = 0
    for size in batches:
        store.append_journal(T, "run-1", "w1",
                             [entry(k) for k in keys[position:position + size]])
        position += size
    read = store.read_journal(T, "run-1")
    assert [e.key for e in read] == keys
    assert [e.seq for e in read] == list(range(1, len(keys) + 1))


def test_seq_is_counted_per_run(store: Store) -> None:
    new_run(store, "run-1")
    new_run(store, "run-2")
    for key in ("a", "b", "c"):
        store.append_journal(T, "run-1", "w1", [entry(key)])
        store.append_journal(T, "run-2", "w1", [entry(key)])
    assert seqs(store, "run-1") == seqs(store, "run-2") == [1, 2, 3]


def test_seq_continues_after_the_lease_changes_hands(store: Store) -> None:
    new_run(store)
    store.append_journal(T, "run-1", "w1", [entry("a"), entry("b")])
    assert store.acquire_lease(T, "run-1", "w2", 10.0, time.time(), take_over_from="w1")
    store.append_journal(T, "run-1", "w2", [entry("c")])
    store.finish_run(T, "run-1", "w2", "waiting", entries=[entry("d")])
    assert store.acquire_lease(T, "run-1", "w1", 10.0, time.time())
    store.append_journal(T, "run-1", "w1", [entry("e")])
    assert [(e.key, e.seq) for e in store.read_journal(T, "run-1")] == [
        ("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)
    ]


@pytest.mark.parametrize("size", [1, 3, 150])
def test_append_journal_by_a_worker_that_lost_the_lease_writes_nothing(
    store: Store, size: int
) -> None:
    new_run(store)
    store.append_journal(T, "run-1", "w1", [entry("before")])
    assert store.acquire_lease(T, "run-1", "w2", 10.0, time.time(), take_over_from="w1")
    with pytest.raises(LeaseLost) as lost:
        store.append_journal(T, "run-1", "w1", [entry(f"late{i}") for i in range(size)])
    assert (lost.value.run_id, lost.value.owner) == ("run-1", "w1")
    assert [e.key for e in store.read_journal(T, "run-1")] == ["before"]
    store.append_journal(T, "run-1", "w2", [entry("after")])
    assert seqs(store) == [1, 2]


def test_append_journal_to_a_released_or_unknown_run_raises_lease_lost(store: Store) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", "waiting")
    with pytest.raises(LeaseLost):
        store.append_journal(T, "run-1", "w1", [entry("x")])
    with pytest.raises(LeaseLost):
        store.append_journal(T, "nope", "w1", [entry("x")])
    assert store.read_journal(T, "run-1") == []
    assert store.read_journal(T, "nope") == []


def test_append_journal_of_nothing_writes_nothing(store: Store) -> None:
    new_run(store)
    store.append_journal(T, "run-1", "w1", [])
    assert store.read_journal(T, "run-1") == []


def test_threads_sharing_a_store_append_without_losing_or_reordering(store: Store) -> None:
    new_run(store)
    threads, per_thread = 8, 40

    def work(name: int) -> None:
        for i in range(per_thread):
            store.append_journal(T, "run-1", "w1", [entry(f"t{name}-{i}")])

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    read = store.read_journal(T, "run-1")
    assert [e.seq for e in read] == list(range(1, threads * per_thread + 1))
    for name in range(threads):
        mine = [e.key for e in read if e.key.startswith(f"t{name}-")]
        assert mine == [f"t{name}-{i}" for i in range(per_thread)]


# --- finish_run -----------------------------------------------------------------------------

def test_finish_run_sets_the_outcome_appends_and_releases_the_lease(store: Store) -> None:
    created = new_run(store)
    store.append_journal(T, "run-1", "w1", [entry("a")])
    store.finish_run(T, "run-1", "w1", "waiting", outputs={"partial": [1]},
                     error=None, wake_at=5000.0, entries=[entry("b"), entry("c")])
    record = store.get_run(T, "run-1")
    assert record is not None
    assert (record.status, record.outputs, record.error, record.wake_at) == (
        "waiting", {"partial": [1]}, None, 5000.0)
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert record.updated_at >= created.updated_at
    assert record.inputs == created.inputs and record.created_at == created.created_at
    assert [(e.key, e.seq) for e in store.read_journal(T, "run-1")] == [
        ("a", 1), ("b", 2), ("c", 3)
    ]


def test_finish_run_records_an_error(store: Store) -> None:
    new_run(store)
    error = {"type": "ToolError", "message": "boom", "step_id": "deploy"}
    store.finish_run(T, "run-1", "w1", "failed", error=error)
    record = store.get_run(T, "run-1")
    assert record is not None
    assert (record.status, record.error, record.outputs) == ("failed", error, None)


def test_finish_run_by_a_worker_that_lost_the_lease_writes_nothing(store: Store) -> None:
    new_run(store)
    assert store.acquire_lease(T, "run-1", "w2", 10.0, time.time(), take_over_from="w1")
    held = store.get_run(T, "run-1")
    with pytest.raises(LeaseLost):
        store.finish_run(T, "run-1", "w1", "completed", outputs=1, entries=[entry("late")])
    assert store.get_run(T, "run-1") == held
    assert store.read_journal(T, "run-1") == []


def test_finish_run_twice_raises_lease_lost(store: Store) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", "completed", outputs=1)
    with pytest.raises(LeaseLost):
        store.finish_run(T, "run-1", "w1", "failed", entries=[entry("x")])
    record = store.get_run(T, "run-1")
    assert record is not None and (record.status, record.outputs) == ("completed", 1)
    assert store.read_journal(T, "run-1") == []


def test_finish_run_rejects_an_unknown_status(store: Store) -> None:
    new_run(store)
    with pytest.raises(ValueError, match="status"):
        store.finish_run(T, "run-1", "w1", "done")  # type: ignore[arg-type]
    record = store.get_run(T, "run-1")
    assert record is not None and record.status == "running"


# --- listing and timers ---------------------------------------------------------------------

def test_list_runs_newest_first_with_filters_and_limit(store: Store) -> None:
    new_run(store, "a", created_at=100.0)
    new_run(store, "b", created_at=300.0, plan_hash="plan-2")
    new_run(store, "c", created_at=200.0)
    store.finish_run(T, "c", "w1", "completed")

    def ids(runs: list[RunRecord]) -> list[str]:
        return [r.run_id for r in runs]

    assert ids(store.list_runs(T)) == ["b", "c", "a"]
    assert ids(store.list_runs(T, status="running")) == ["b", "a"]
    assert ids(store.list_runs(T, plan_hash="plan-1")) == ["c", "a"]
    assert ids(store.list_runs(T, status="running", plan_hash="plan-1")) == ["a"]
    assert ids(store.list_runs(T, limit=2)) == ["b", "c"]
    assert store.list_runs(T, status="failed") == []
    assert store.list_runs(T)[0] == store.get_run(T, "b")


def test_due_runs_are_the_waiting_runs_whose_time_has_come(store: Store) -> None:
    for run_id, wake_at in [("late", 500.0), ("soon", 150.0), ("first", 100.0),
                            ("approval", None), ("future", 9000.0)]:
        new_run(store, run_id)
        store.finish_run(T, run_id, "w1", "waiting", wake_at=wake_at)
    new_run(store, "running")
    new_run(store, "done")
    store.finish_run(T, "done", "w1", "completed", wake_at=50.0)
    assert [r.run_id for r in store.due_runs(600.0)] == ["first", "soon", "late"]
    assert [r.run_id for r in store.due_runs(600.0, limit=2)] == ["first", "soon"]
    assert [r.run_id for r in store.due_runs(150.0)] == ["first", "soon"]
    assert store.due_runs(99.0) == []
    assert store.due_runs(600.0)[0] == store.get_run(T, "first")


# --- tenant isolation -----------------------------------------------------------------------

def test_the_same_run_id_in_two_tenants_is_two_independent_runs(store: Store) -> None:
    a = new_run(store, tenant="a", inputs={"who": "a"})
    b = new_run(store, tenant="b", owner="w2", inputs={"who": "b"})
    assert (a.inputs, b.inputs) == ({"who": "a"}, {"who": "b"})
    store.append_journal("a", "run-1", "w1", [entry("x"), entry("y")])
    store.append_journal("b", "run-1", "w2", [entry("z")])
    assert [e.key for e in store.read_journal("a", "run-1")] == ["x", "y"]
    assert [(e.key, e.seq) for e in store.read_journal("b", "run-1")] == [("z", 1)]
    store.finish_run("a", "run-1", "w1", "completed", outputs="A")
    b_now = store.get_run("b", "run-1")
    assert b_now is not None and (b_now.status, b_now.lease_owner) == ("running", "w2")
    with pytest.raises(LeaseLost):  # w1 holds a's lease, not b's
        store.append_journal("b", "run-1", "w1", [entry("intruder")])


def test_a_tenant_can_neither_see_nor_touch_another_tenants_run(store: Store) -> None:
    new_run(store, tenant="a", created_at=100.0)
    store.append_journal("a", "run-1", "w1", [entry("secret", data="a's data")])
    store.put_plan(StoredPlan("a", "plan-9", "graph", "{}", 1.0))
    a_before = store.get_run("a", "run-1")
    now = time.time() + 10 * LEASE  # even after a's lease expired

    assert store.get_run("b", "run-1") is None
    assert store.get_plan("b", "plan-1") is None and store.get_plan("b", "plan-9") is None
    assert store.list_runs("b") == []
    assert store.read_journal("b", "run-1") == []
    assert not store.acquire_lease("b", "run-1", "w2", 10.0, now)
    assert not store.acquire_lease("b", "run-1", "w2", 10.0, now, take_over_from="w1")
    assert not store.renew_lease("b", "run-1", "w1", 10.0, now)
    with pytest.raises(LeaseLost):
        store.append_journal("b", "run-1", "w1", [entry("x")])
    with pytest.raises(LeaseLost):
        store.finish_run("b", "run-1", "w1", "cancelled")

    assert store.get_run("a", "run-1") == a_before
    assert [e.key for e in store.read_journal("a", "run-1")] == ["secret"]


def test_due_runs_of_one_tenant(store: Store) -> None:
    for tenant in ("a", "b"):
        new_run(store, tenant=tenant)
        store.finish_run(tenant, "run-1", "w1", "waiting", wake_at=10.0)
    assert [(r.tenant_id, r.run_id) for r in store.due_runs(20.0, tenant_id="b")] == [
        ("b", "run-1")
    ]
    assert sorted(r.tenant_id for r in store.due_runs(20.0)) == ["a", "b"]


# --- JSON values ----------------------------------------------------------------------------

NESTED: Any = {
    "unicode": "héllo — 世界 🚀 \u0000 \ud83d",  # a NUL and a lone surrogate too
    "numbers": [0, -1, 2**70, 1.5, -0.0, 1e308, 5e-324],
    "nested": {"a": [{"b": [None, True, False, ""]}], "ключ": {"🔑": []}},
    "empty": {},
}


def test_json_values_round_trip_everywhere(store: Store) -> None:
    new_run(store, inputs=NESTED, options={"o": NESTED})
    store.append_journal(T, "run-1", "w1", [entry("k🚀", "result", NESTED, tool="t",
                                                  args_hash="é")])
    store.finish_run(T, "run-1", "w1", "failed", outputs=NESTED, error={"e": NESTED})
    record = store.get_run(T, "run-1")
    assert record is not None
    assert record.inputs == NESTED and record.options == {"o": NESTED}
    assert record.outputs == NESTED and record.error == {"e": NESTED}
    (read,) = store.read_journal(T, "run-1")
    assert (read.key, read.data, read.args_hash) == ("k🚀", NESTED, "é")


def test_json_decodes_tuples_as_lists(store: Store) -> None:
    new_run(store)
    store.append_journal(T, "run-1", "w1", [entry("k", data=(1, (2, 3)))])
    assert store.read_journal(T, "run-1")[0].data == [1, [2, 3]]


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"when": object()}, {1j}])
def test_a_value_that_is_not_json_is_refused_and_nothing_is_written(
    store: Store, bad: Any
) -> None:
    new_run(store)
    with pytest.raises(StoreError, match="not JSON"):
        store.append_journal(T, "run-1", "w1", [entry("ok"), entry("bad", data=bad)])
    with pytest.raises(StoreError, match="not JSON"):
        store.finish_run(T, "run-1", "w1", "completed", outputs=bad)
    with pytest.raises(StoreError, match="not JSON"):
        store.create_run(RunRecord(T, "run-2", "plan-1", "running", {"x": bad}), plan(),
                         "w1", LEASE)
    assert store.read_journal(T, "run-1") == []
    record = store.get_run(T, "run-1")
    assert record is not None and (record.status, record.lease_owner) == ("running", "w1")
    assert store.get_run(T, "run-2") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_run_ids = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, key=st.text(min_size=1, max_size=20))
def test_any_json_value_round_trips(store: Store, value: Any, key: str) -> None:
    run_id = f"prop-{next(_run_ids)}"
    new_run(store, run_id, inputs={"v": value})
    store.append_journal(T, run_id, "w1", [entry(key, data=value)])
    store.finish_run(T, run_id, "w1", "completed", outputs=value)
    record = store.get_run(T, run_id)
    assert record is not None and record.inputs == {"v": value} and record.outputs == value
    assert [(e.key, e.data) for e in store.read_journal(T, run_id)] == [(key, value)]
