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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow.errors import (
    AlreadyDecided,
    DecisionExpired,
    DecisionRefused,
    LeaseLost,
    PendingNotFound,
    RunFinished,
    RunNotFound,
    StaleDecision,
    StoreError,
    TooManyRuns,
    WaitConflict,
)
from agentflow.store import (
    EventRecord,
    JournalAppend,
    JournalEntry,
    NewRun,
    RunEnd,
    RunRecord,
    SQLiteStore,
    Store,
    StoredPlan,
    TokenRecord,
    WaitRecord,
    open_store,
)
from tests.support.stores import postgres_schema


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[Store]:
    with SQLiteStore(str(tmp_path / "contract.db")) as store:
        yield store


@contextmanager
def _postgres(tmp_path: Path) -> Iterator[Store]:
    with postgres_schema() as url:
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Store]]] = {
    "sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with BACKENDS[request.param](tmp_path) as backend:
        yield backend


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


# --- repin_plan -----------------------------------------------------------------------------

def test_repin_plan_pins_the_run_and_its_waits_to_the_new_plan(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval()])
    final = StoredPlan(T, "plan-2", "graph", '{"steps":[{"id":"a"}]}', 5.0)
    store.repin_plan(T, "run-1", "w1", final)
    assert the_run(store).plan_hash == "plan-2" and the_run(store).lease_owner == "w1"
    assert [wait.plan_hash for wait in store.list_waits(T, "run-1")] == ["plan-2"]
    assert store.get_plan(T, "plan-2") == final
    assert store.get_plan(T, "plan-1") == StoredPlan(T, "plan-1", "graph", '{"steps":[]}',
                                                     the_run(store).created_at)


def test_repin_plan_keeps_the_first_body_of_a_plan_already_stored(store: Store) -> None:
    new_run(store)
    store.put_plan(StoredPlan(T, "plan-2", "graph", "first", 1.0))
    store.repin_plan(T, "run-1", "w1", StoredPlan(T, "plan-2", "graph", "second", 2.0))
    assert store.get_plan(T, "plan-2") == StoredPlan(T, "plan-2", "graph", "first", 1.0)
    assert the_run(store).plan_hash == "plan-2"


def test_repin_plan_by_a_worker_without_the_lease_writes_nothing(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval()])
    before = snapshot(store)
    with pytest.raises(LeaseLost):
        store.repin_plan(T, "run-1", "w2", plan(plan_hash="plan-2"))
    assert snapshot(store) == before
    assert store.get_plan(T, "plan-2") is None


def test_repin_plan_refuses_a_plan_of_another_tenant(store: Store) -> None:
    new_run(store)
    with pytest.raises(ValueError, match="tenant"):
        store.repin_plan(T, "run-1", "w1", plan(tenant="other", plan_hash="plan-2"))
    assert the_run(store).plan_hash == "plan-1" and store.get_plan("other", "plan-2") is None


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


def test_renew_leases_renews_the_held_ones_in_one_call_and_names_them(store: Store) -> None:
    for index in range(350):  # more than one statement's worth (RENEW_MANY_CHUNK)
        new_run(store, f"run-{index}", owner=f"w{index}")
    leases = [(T, f"run-{index}", f"w{index}") for index in range(350)]
    stale = [(T, "run-0", "someone-else"), (T, "no-such-run", "w0"), ("other", "run-1", "w1")]
    now = time.time() + 20.0
    held = store.renew_leases(leases + stale, 60.0, now)
    assert held == set(leases)
    for index in (0, 299, 300, 349):
        record = store.get_run(T, f"run-{index}")
        assert record is not None and record.lease_expires_at == now + 60.0
        assert record.lease_owner == f"w{index}"
    assert store.renew_leases([], 60.0, now) == set()


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


def test_journal_pages_and_sizes_per_run_and_per_tenant(store: Store) -> None:
    new_run(store)
    new_run(store, "run-2")
    new_run(store, "run-1", tenant="other")
    store.append_journal(T, "run-1", "w1", [entry(f"k{i}", "result", "x" * i)
                                           for i in range(5)])
    store.append_journal(T, "run-2", "w1", [entry("k", "result", {"a": 1})])
    store.append_journal("other", "run-1", "w1", [entry("k", "result", "y" * 100)])
    pages = [store.read_journal_page(T, "run-1", after, 2) for after in (0, 2, 4, 5)]
    assert [[e.key for e in page] for page in pages] == [["k0", "k1"], ["k2", "k3"], ["k4"], []]
    assert [e.seq for e in pages[1]] == [3, 4]
    assert store.journal_bytes(T, "run-1") == sum(i + 2 for i in range(5))  # '"xx"'
    assert store.journal_bytes(T, "run-2") == len('{"a":1}')
    assert store.journal_bytes(T) == sum(i + 2 for i in range(5)) + 7
    assert store.journal_bytes(T, "nope") == 0 and store.journal_bytes("none") == 0


def test_the_tenant_journal_size_follows_every_write_and_every_prune(store: Store) -> None:
    """One counter per tenant, kept in the transaction of each append (alone, grouped,
    with a run's end) and of each prune: always the sum of the tenant's runs."""
    for run_id in ("run-1", "run-2", "run-3"):
        new_run(store, run_id)
    new_run(store, "run-1", tenant="other")
    store.append_journal(T, "run-1", "w1", [entry("a", data="x" * 10)])
    store.write_group([JournalAppend(T, "run-2", "w1", [entry("a", data=[1, 2]),
                                                      entry("b", data={})]),
                       JournalAppend("other", "run-1", "w1", [entry("a", data="y" * 50)]),
                       JournalAppend(T, "run-3", "w1", [entry("a", data=True)])])
    store.finish_run(T, "run-1", "w1", "completed", outputs=1,
                     entries=[entry("end", data="z" * 20)])
    assert store.journal_bytes(T) == 12 + 22 + len("[1,2]") + len("{}") + len("true")
    assert store.journal_bytes("other") == 52
    lost = store.write_group([JournalAppend(T, "run-2", "someone-else", [entry("c")])])
    assert isinstance(lost[0], LeaseLost)  # not written, not counted
    assert store.prune_runs(time.time() + 1, ["completed"], tenant_id=T) == [(T, "run-1")]
    assert store.journal_bytes(T) == len("[1,2]") + len("{}") + len("true") == \
        store.journal_bytes(T, "run-2") + store.journal_bytes(T, "run-3")
    assert store.journal_bytes("other") == 52


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


def test_a_write_group_commits_several_runs_and_fences_each_by_its_own_lease(
    store: Store,
) -> None:
    for run_id in ("run-1", "run-2", "run-3"):
        new_run(store, run_id)
    store.append_journal(T, "run-2", "w1", [entry("earlier")])
    assert store.acquire_lease(T, "run-3", "w2", 10.0, time.time(), take_over_from="w1")
    answers = store.write_group([
        JournalAppend(T, "run-2", "w1", [entry("a"), entry("b")]),
        JournalAppend(T, "run-3", "w1", [entry("late")]),  # w2 holds it now
        JournalAppend(T, "run-1", "w1", [entry("c")]),
    ])
    assert answers[0] is None and answers[2] is None
    assert isinstance(answers[1], LeaseLost) and answers[1].run_id == "run-3"
    assert [(e.key, e.seq) for e in store.read_journal(T, "run-2")] == [
        ("earlier", 1), ("a", 2), ("b", 3)]
    assert [(e.key, e.seq) for e in store.read_journal(T, "run-1")] == [("c", 1)]
    assert store.read_journal(T, "run-3") == []


def test_a_write_group_creates_appends_and_finishes_runs_in_one_transaction(
    store: Store,
) -> None:
    new_run(store, "old")
    new_run(store, "stolen")
    assert store.acquire_lease(T, "stolen", "w2", 10.0, time.time(), take_over_from="w1")
    fresh = RunRecord(T, "fresh", "plan-1", "running", {"n": 2})
    answers = store.write_group([
        NewRun(fresh, plan(T, "plan-1"), "w9", LEASE),
        NewRun(RunRecord(T, "old", "plan-1", "running", {"n": 3}), plan(T, "plan-1"),
               "w9", LEASE),  # exists: returned unchanged, not leased
        RunEnd(T, "old", "w1", "completed", outputs={"ok": True}, entries=[entry("last")]),
        RunEnd(T, "stolen", "w1", "completed", entries=[entry("late")]),  # w2 holds it
        JournalAppend(T, "fresh", "w9", [entry("bad", data=float("nan"))]),  # not JSON
        JournalAppend(T, "fresh", "w9", [entry("first")]),
    ])
    created_run, created = answers[0]
    assert created and created_run.lease_owner == "w9" and created_run.inputs == {"n": 2}
    existing, created = answers[1]
    assert not created and existing.inputs == {"n": 1} and existing.lease_owner == "w1"
    assert answers[2] is None and answers[5] is None
    assert isinstance(answers[3], LeaseLost) and answers[3].run_id == "stolen"
    assert isinstance(answers[4], StoreError)
    old = store.get_run(T, "old")
    assert old is not None and old.status == "completed" and old.outputs == {"ok": True}
    assert old.lease_owner is None
    assert [e.key for e in store.read_journal(T, "old")] == ["last"]
    assert store.read_journal(T, "stolen") == []
    stolen = store.get_run(T, "stolen")
    assert stolen is not None and stolen.status == "running" and stolen.lease_owner == "w2"
    assert [e.key for e in store.read_journal(T, "fresh")] == ["first"]


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


def test_list_runs_pages_with_a_cursor_and_ties_broken_by_run_id(store: Store) -> None:
    for run_id, created in (("a", 100.0), ("b", 200.0), ("c", 200.0), ("d", 300.0)):
        new_run(store, run_id, created_at=created)
    pages, cursor = [], None
    while True:
        page = store.list_runs(T, limit=1, before=cursor)
        if not page:
            break
        pages.append(page[0].run_id)
        cursor = (page[0].created_at, page[0].run_id)
    assert pages == ["d", "c", "b", "a"]
    assert [r.run_id for r in store.list_runs(T, before=(200.0, "c"))] == ["b", "a"]
    assert [r.run_id for r in store.list_runs(T, before=(200.0, "b"), limit=5)] == ["a"]
    assert store.list_runs(T, before=(100.0, "a")) == []


def test_tokens_are_found_by_hash_listed_by_tenant_and_revoked_once(store: Store) -> None:
    first = TokenRecord("h1", "id1", T, "viewer", "alice", 10.0)
    other = TokenRecord("h2", "id2", "globex", "admin", "ops", 20.0)
    store.put_token(first)
    store.put_token(other)
    assert store.find_token("h1") == first
    assert store.find_token("nope") is None
    assert store.list_tokens(T) == [first]
    assert store.list_tokens() == [first, other]
    with pytest.raises(StoreError):
        store.put_token(TokenRecord("h3", "id1", T, "viewer", "dup", 30.0))  # same id
    assert store.revoke_token("id1", 40.0)
    assert not store.revoke_token("id1", 50.0)
    assert not store.revoke_token("unknown", 50.0)
    assert store.find_token("h1") == TokenRecord("h1", "id1", T, "viewer", "alice", 10.0, 40.0)


def test_a_secret_is_made_once_and_then_kept(store: Store) -> None:
    assert store.secret(T, "key", lambda: "first") == "first"
    assert store.secret(T, "key", lambda: "second") == "first"
    assert store.secret("globex", "key", lambda: "theirs") == "theirs"
    assert store.secret(T, "other", lambda: "x") == "x"


def test_a_runs_trace_context_is_kept_per_tenant_and_replaced(store: Store) -> None:
    assert store.get_trace(T, "run-1") is None
    store.put_trace(T, "run-1", "00-aa-01-01")
    store.put_trace("globex", "run-1", "00-bb-02-01")
    assert store.get_trace(T, "run-1") == "00-aa-01-01"
    store.put_trace(T, "run-1", "00-aa-03-01")
    assert store.get_trace(T, "run-1") == "00-aa-03-01"
    assert store.get_trace("globex", "run-1") == "00-bb-02-01"


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


def test_orphaned_runs_are_running_runs_whose_lease_is_gone(store: Store) -> None:
    now = time.time()
    new_run(store, "leased")                      # a live worker holds it
    new_run(store, "crashed", owner="dead")       # its lease expires below
    new_run(store, "released")
    store.finish_run(T, "released", "w1", "running")  # lease given back, still running
    new_run(store, "waiting")
    store.finish_run(T, "waiting", "w1", "waiting", wake_at=None)
    new_run(store, "other-tenant", tenant="b", owner="dead")
    later = now + LEASE + 1  # every lease taken above has expired by then
    store.renew_lease(T, "leased", "w1", 3 * LEASE, now)
    assert sorted(r.run_id for r in store.orphaned_runs(now)) == ["released"]
    assert sorted(r.run_id for r in store.orphaned_runs(later, tenant_id=T)) == [
        "crashed", "released"]
    assert sorted((r.tenant_id, r.run_id) for r in store.orphaned_runs(later)) == [
        (T, "crashed"), (T, "released"), ("b", "other-tenant")]
    assert len(store.orphaned_runs(later, limit=1)) == 1


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
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values,
       key=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                   min_size=1, max_size=20))
def test_any_json_value_round_trips(store: Store, value: Any, key: str) -> None:
    run_id = f"prop-{next(_run_ids)}"
    new_run(store, run_id, inputs={"v": value})
    store.append_journal(T, run_id, "w1", [entry(key, data=value)])
    store.finish_run(T, run_id, "w1", "completed", outputs=value)
    record = store.get_run(T, run_id)
    assert record is not None and record.inputs == {"v": value} and record.outputs == value
    assert [(e.key, e.data) for e in store.read_journal(T, run_id)] == [(key, value)]


def test_a_journal_key_with_a_nul_character_is_refused(store: Store) -> None:
    new_run(store)
    with pytest.raises(StoreError, match=r"key 'a\\x00b' contains a NUL character"):
        store.append_journal(T, "run-1", "w1", [entry("ok"), entry("a\x00b")])
    with pytest.raises(StoreError, match="or a lone surrogate"):
        store.append_journal(T, "run-1", "w1", [entry("ok"), entry("\ud800")])
    assert store.read_journal(T, "run-1") == []


# --- waits ----------------------------------------------------------------------------------

NOW = 10_000.0


def approval(wait_id: str = "deploy:1", run_id: str = "run-1", tenant: str = T,
             **fields: Any) -> WaitRecord:
    values: dict[str, Any] = {
        "step_id": "deploy", "tool": "deploy", "args": {"sha": "abc"}, "args_hash": "h-abc",
        "prompt": "Deploy abc?", "approvers": ["ops"], "created_at": 100.0, **fields,
    }
    return WaitRecord(tenant, run_id, wait_id, "deploy", "approval", "plan-1", **values)


def event_wait(name: str = "go", wait_id: str = "go:1", **fields: Any) -> WaitRecord:
    return WaitRecord(T, "run-1", wait_id, "call#3", "event", "plan-1", event_name=name,
                      created_at=100.0, **fields)


def waiting(store: Store, *waits: WaitRecord, run_id: str = "run-1", tenant: str = T,
            wake_at: float | None = None) -> None:
    """A run that recorded `waits`, then released its lease to wait."""
    new_run(store, run_id, tenant)
    store.put_waits(tenant, run_id, "w1", list(waits))
    store.finish_run(tenant, run_id, "w1", "waiting", wake_at=wake_at)


def snapshot(store: Store, run_id: str = "run-1", tenant: str = T) -> tuple[Any, ...]:
    """Everything the store holds about a run."""
    return (store.get_run(tenant, run_id), store.list_waits(tenant, run_id),
            store.list_events(tenant, run_id), store.read_journal(tenant, run_id))


def the_run(store: Store, run_id: str = "run-1", tenant: str = T) -> RunRecord:
    record = store.get_run(tenant, run_id)
    assert record is not None
    return record


def test_put_waits_then_list_waits_round_trips_every_field(store: Store) -> None:
    new_run(store)
    stored = approval(expires_at=5000.0, on_expiry="reject")
    timer = WaitRecord(T, "run-1", "nap:1", "nap", "timer", "plan-1", expires_at=7000.0)
    before = time.time()
    store.put_waits(T, "run-1", "w1", [stored, timer])
    read, read_timer = store.list_waits(T, "run-1")
    assert read == stored
    assert read_timer == replace(timer, created_at=read_timer.created_at)
    assert before <= read_timer.created_at <= time.time()


def test_put_waits_updates_the_outcome_fields_of_an_existing_wait(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval(expires_at=5000.0)])
    expired = approval(status="expired", decision={"reason": "expired", "approved": False},
                       consumed=True, decided_at=6000.0, expires_at=5500.0,
                       prompt="ignored", args={"sha": "ignored"}, created_at=1.0)
    store.put_waits(T, "run-1", "w1", [expired])
    (read,) = store.list_waits(T, "run-1")
    assert read == approval(status="expired", decision={"reason": "expired", "approved": False},
                            consumed=True, decided_at=6000.0, expires_at=5500.0)


def test_put_waits_marks_a_decided_wait_consumed_or_stale(store: Store) -> None:
    waiting(store, approval(), approval("deploy:2"))
    decided = store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "alice"}, NOW)
    store.decide_wait(T, "run-1", "deploy:2", "approved", {"by": "bob"}, NOW)
    assert store.acquire_lease(T, "run-1", "w1", LEASE, time.time())
    store.put_waits(T, "run-1", "w1", [replace(decided, consumed=True)])
    store.put_waits(T, "run-1", "w1", [approval("deploy:2", status="stale")])
    one, two = store.list_waits(T, "run-1")
    assert one == replace(decided, consumed=True)
    assert (two.status, two.decision, two.consumed) == ("stale", None, False)


@pytest.mark.parametrize("attempted", ["expired", "rejected", "pending", "fired"])
def test_put_waits_never_overwrites_a_decision_made_since_the_worker_read_it(
    store: Store, attempted: str
) -> None:
    waiting(store, approval(), approval("deploy:2"))
    store.decide_wait(T, "run-1", "deploy:2", "approved", {"by": "alice"}, NOW)
    assert store.acquire_lease(T, "run-1", "w1", LEASE, time.time())
    before = snapshot(store)
    stale_read = approval("deploy:2", status=attempted, decided_at=NOW + 1)
    with pytest.raises(WaitConflict) as conflict:
        store.put_waits(T, "run-1", "w1", [approval(consumed=True), stale_read])
    assert (conflict.value.run_id, conflict.value.wait_id) == ("run-1", "deploy:2")
    assert (conflict.value.stored, conflict.value.attempted) == ("approved", attempted)
    assert snapshot(store) == before  # the first wait of the batch was not written either


def test_put_waits_by_a_worker_without_the_lease_writes_nothing(store: Store) -> None:
    new_run(store)
    assert store.acquire_lease(T, "run-1", "w2", LEASE, time.time(), take_over_from="w1")
    with pytest.raises(LeaseLost):
        store.put_waits(T, "run-1", "w1", [approval()])
    store.finish_run(T, "run-1", "w2", "waiting")
    with pytest.raises(LeaseLost):
        store.put_waits(T, "run-1", "w2", [approval()])
    with pytest.raises(LeaseLost):
        store.put_waits(T, "nope", "w1", [approval(run_id="nope")])
    assert store.list_waits(T) == []


@pytest.mark.parametrize(("bad", "message"), [
    (approval(run_id="run-2"), "belongs to run 'run-2' of tenant 'acme', not to run 'run-1'"),
    (approval(tenant="other"), "of tenant 'other', not to run 'run-1' of tenant 'acme'"),
    (replace(approval(), kind="email"), "unknown kind 'email'"),  # type: ignore[arg-type]
    (replace(approval(), status="done"), "unknown status 'done'"),  # type: ignore[arg-type]
])
def test_put_waits_refuses_a_wait_of_another_run_or_with_unknown_values(
    store: Store, bad: WaitRecord, message: str
) -> None:
    new_run(store)
    new_run(store, "run-2")
    with pytest.raises(ValueError, match=message):
        store.put_waits(T, "run-1", "w1", [approval("ok"), bad])
    with pytest.raises(StoreError, match="not JSON"):
        store.put_waits(T, "run-1", "w1", [approval(args={"x": math.nan})])
    assert store.list_waits(T) == []


def test_list_waits_oldest_first_filtered_by_run_and_status(store: Store) -> None:
    waiting(store, approval("c", created_at=300.0), approval("a", created_at=100.0))
    waiting(store, approval("b", run_id="run-2", created_at=200.0), run_id="run-2")
    store.decide_wait(T, "run-1", "c", "rejected", {"by": "bob"}, NOW)

    def ids(waits: list[WaitRecord]) -> list[str]:
        return [w.wait_id for w in waits]

    assert ids(store.list_waits(T)) == ["a", "b", "c"]
    assert ids(store.list_waits(T, status="pending")) == ["a", "b"]
    assert ids(store.list_waits(T, run_id="run-1")) == ["a", "c"]
    assert ids(store.list_waits(T, run_id="run-1", status="pending")) == ["a"]
    assert ids(store.list_waits(T, limit=2)) == ["a", "b"]
    assert store.list_waits(T, run_id="nope") == []


# --- decide_wait ----------------------------------------------------------------------------

def test_decide_wait_records_the_decision_and_wakes_the_waiting_run(store: Store) -> None:
    waiting(store, approval(expires_at=NOW + 1), wake_at=None)
    decision = {"by": "alice", "comment": "ship it", "args": {"sha": "def"}}
    decided = store.decide_wait(T, "run-1", "deploy:1", "approved", decision, NOW)
    assert decided == approval(expires_at=NOW + 1, status="approved", decision=decision,
                               decided_at=NOW)
    assert store.list_waits(T, "run-1") == [decided]
    assert the_run(store).wake_at == NOW
    assert [r.run_id for r in store.due_runs(NOW)] == ["run-1"]


def test_decide_wait_never_postpones_an_earlier_wake_up(store: Store) -> None:
    waiting(store, approval(), wake_at=NOW - 50.0)
    store.decide_wait(T, "run-1", "deploy:1", "rejected", {"by": "bob"}, NOW)
    assert the_run(store).wake_at == NOW - 50.0


def test_decide_wait_moves_a_later_timer_forward(store: Store) -> None:
    waiting(store, approval(), wake_at=NOW + 3600.0)
    store.decide_wait(T, "run-1", "deploy:1", "rejected", {"by": "bob"}, NOW)
    assert the_run(store).wake_at == NOW


def test_decide_wait_on_a_running_run_leaves_its_wake_up_alone(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval()])
    before = the_run(store)
    store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "alice"}, NOW)
    assert the_run(store) == before
    assert store.due_runs(NOW + 1e9) == []


def test_a_decision_made_while_the_run_executes_is_not_slept_through(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval(), approval("deploy:2")])
    store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "alice"}, NOW)
    before = time.time()
    store.finish_run(T, "run-1", "w1", "waiting", wake_at=None)  # the worker had not seen it
    wake_at = the_run(store).wake_at
    assert wake_at is not None and before <= wake_at <= time.time()


def test_a_consumed_decision_does_not_wake_the_run_again(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval(), approval("deploy:2")])
    decided = store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "alice"}, NOW)
    store.put_waits(T, "run-1", "w1", [replace(decided, consumed=True)])
    store.finish_run(T, "run-1", "w1", "waiting", wake_at=NOW + 60.0)
    assert the_run(store).wake_at == NOW + 60.0


def test_decide_wait_of_other_kinds_when_asked_for(store: Store) -> None:
    timer = WaitRecord(T, "run-1", "nap:1", "nap", "timer", "plan-1", expires_at=NOW + 60.0,
                       created_at=1.0)
    waiting(store, timer)
    with pytest.raises(PendingNotFound, match=r"no approval 'nap:1' \('nap:1' is a timer wait\)"):
        store.decide_wait(T, "run-1", "nap:1", "fired", None, NOW)
    fired = store.decide_wait(T, "run-1", "nap:1", "fired", None, NOW, kinds=("timer",))
    assert (fired.status, fired.decided_at) == ("fired", NOW)


def refused(store: Store, error: type[Exception], wait_id: str = "deploy:1",
            run_id: str = "run-1", tenant: str = T, now: float = NOW,
            status: Any = "approved") -> Exception:
    """Decide, expect `error`, and check that nothing about the run changed."""
    before = snapshot(store, run_id, tenant) if store.get_run(tenant, run_id) else None
    with pytest.raises(error) as caught:
        store.decide_wait(tenant, run_id, wait_id, status, {"by": "mallory"}, now)
    if before is not None:
        assert snapshot(store, run_id, tenant) == before
    return caught.value


def test_deciding_an_unknown_run_is_refused(store: Store) -> None:
    waiting(store, approval())
    before = snapshot(store)
    error = refused(store, RunNotFound, run_id="nope")
    assert isinstance(error, RunNotFound) and error.run_id == "nope"
    assert snapshot(store) == before


def test_deciding_an_unknown_wait_is_refused(store: Store) -> None:
    waiting(store, approval(), event_wait())
    error = refused(store, PendingNotFound, wait_id="deploy:9")
    assert isinstance(error, DecisionRefused)
    assert (error.run_id, error.wait_id) == ("run-1", "deploy:9")
    assert "run 'run-1' has no approval 'deploy:9'" in str(error)
    refused(store, PendingNotFound, wait_id="go:1", status="received")  # an event, not approval


def test_deciding_twice_is_refused_saying_by_whom_when_and_what(store: Store) -> None:
    waiting(store, approval())
    store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "alice"}, 1_700_000_000.0)
    error = refused(store, AlreadyDecided, status="rejected")
    assert isinstance(error, AlreadyDecided)
    assert (error.run_id, error.wait_id, error.status, error.by, error.decided_at) == (
        "run-1", "deploy:1", "approved", "alice", 1_700_000_000.0)
    assert str(error) == ("'deploy:1' of run 'run-1' was already approved by alice at "
                          "2023-11-14T22:13:20Z")


def test_deciding_a_stale_approval_is_refused(store: Store) -> None:
    waiting(store, approval())
    assert store.acquire_lease(T, "run-1", "w1", LEASE, time.time())
    store.put_waits(T, "run-1", "w1", [approval(status="stale"), approval("deploy:2")])
    store.finish_run(T, "run-1", "w1", "waiting")
    error = refused(store, StaleDecision)
    assert isinstance(error, DecisionRefused) and error.wait_id == "deploy:1"
    assert "arguments it was bound to changed" in str(error)


def test_deciding_after_the_expiry_is_refused(store: Store) -> None:
    waiting(store, approval(expires_at=NOW))
    store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": "a"}, NOW)  # at expiry: ok
    waiting(store, approval(run_id="run-2", expires_at=NOW), run_id="run-2")
    error = refused(store, DecisionExpired, run_id="run-2", now=NOW + 0.5)
    assert isinstance(error, DecisionExpired) and error.expires_at == NOW
    assert (error.run_id, error.wait_id) == ("run-2", "deploy:1")


def test_deciding_a_wait_the_run_marked_expired_is_refused(store: Store) -> None:
    waiting(store, approval(expires_at=NOW - 10))
    assert store.acquire_lease(T, "run-1", "w1", LEASE, time.time())
    store.put_waits(T, "run-1", "w1", [approval(expires_at=NOW - 10, status="expired",
                                               decided_at=NOW - 5, consumed=True)])
    store.finish_run(T, "run-1", "w1", "waiting")
    refused(store, DecisionExpired, now=NOW - 20)


def test_deciding_a_pending_wait_of_a_finished_run_is_refused(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [approval()])
    store.finish_run(T, "run-1", "w1", "failed", error={"type": "Boom"})
    error = refused(store, RunFinished)
    assert "run 'run-1' is already failed" in str(error)


def test_decide_wait_refuses_a_status_that_is_not_an_outcome(store: Store) -> None:
    waiting(store, approval())
    for status in ("pending", "stale", "cancelled", "maybe"):
        refused(store, ValueError, status=status)


def test_a_decision_that_is_not_json_is_refused(store: Store) -> None:
    waiting(store, approval())
    before = snapshot(store)
    with pytest.raises(StoreError, match="not JSON"):
        store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": object()}, NOW)
    assert snapshot(store) == before


def test_threads_deciding_one_wait_exactly_one_wins(store: Store) -> None:
    waiting(store, approval())
    outcomes: list[str] = []

    def decide(who: str) -> None:
        try:
            store.decide_wait(T, "run-1", "deploy:1", "approved", {"by": who}, NOW)
            outcomes.append(who)
        except AlreadyDecided:
            outcomes.append("refused")

    workers = [threading.Thread(target=decide, args=(f"u{i}",)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    winners = [who for who in outcomes if who != "refused"]
    assert len(winners) == 1 and outcomes.count("refused") == 7
    assert store.list_waits(T)[0].decision == {"by": winners[0]}


# --- events ---------------------------------------------------------------------------------

def test_events_sent_before_and_after_the_wait_each_reach_the_run_once(store: Store) -> None:
    new_run(store)
    assert store.send_event(T, "run-1", "go", {"n": 1}, 100.0) == 1  # before anyone waits
    assert store.take_event(T, "run-1", "w1", "go", "call#1", 110.0) == EventRecord(
        1, "go", {"n": 1}, 100.0, "call#1", 110.0)
    assert store.take_event(T, "run-1", "w1", "go", "call#2", 120.0) is None
    store.put_waits(T, "run-1", "w1", [event_wait(wait_id="go:2")])
    store.finish_run(T, "run-1", "w1", "waiting")
    assert store.send_event(T, "run-1", "go", {"n": 2}, 200.0) == 2  # after
    assert store.acquire_lease(T, "run-1", "w1", LEASE, time.time())
    taken = store.take_event(T, "run-1", "w1", "go", "call#2", 210.0)
    assert taken == EventRecord(2, "go", {"n": 2}, 200.0, "call#2", 210.0)
    assert store.take_event(T, "run-1", "w1", "go", "call#3", 220.0) is None
    assert [(e.seq, e.consumed_by) for e in store.list_events(T, "run-1")] == [
        (1, "call#1"), (2, "call#2")]


def test_take_event_takes_the_oldest_of_its_name(store: Store) -> None:
    new_run(store)
    for seq, name in enumerate(["a", "b", "a", "b"], 1):
        store.send_event(T, "run-1", name, seq, float(seq))
    taken = [store.take_event(T, "run-1", "w1", name, key, 10.0)
             for name, key in [("b", "k1"), ("a", "k2"), ("b", "k3"), ("a", "k4"), ("a", "k5")]]
    assert [e.payload if e else None for e in taken] == [2, 1, 4, 3, None]


def test_take_event_is_idempotent_for_the_same_key(store: Store) -> None:
    new_run(store)
    store.send_event(T, "run-1", "go", "first", 1.0)
    store.send_event(T, "run-1", "go", "second", 2.0)
    first = store.take_event(T, "run-1", "w1", "go", "call#1", 5.0)
    assert first is not None and first.payload == "first"
    assert store.take_event(T, "run-1", "w1", "go", "call#1", 9.0) == first  # replay
    assert store.take_event(T, "run-1", "w1", "other", "call#1", 9.0) == first
    second = store.take_event(T, "run-1", "w1", "go", "call#2", 9.0)
    assert second is not None and second.payload == "second"


def test_take_event_is_fenced_by_the_lease(store: Store) -> None:
    new_run(store)
    store.send_event(T, "run-1", "go", 1, 1.0)
    assert store.acquire_lease(T, "run-1", "w2", LEASE, time.time(), take_over_from="w1")
    with pytest.raises(LeaseLost):
        store.take_event(T, "run-1", "w1", "go", "call#1", 5.0)
    store.finish_run(T, "run-1", "w2", "waiting")
    with pytest.raises(LeaseLost):
        store.take_event(T, "run-1", "w2", "go", "call#1", 5.0)
    with pytest.raises(LeaseLost):
        store.take_event(T, "nope", "w2", "go", "call#1", 5.0)
    assert store.list_events(T, "run-1") == [EventRecord(1, "go", 1, 1.0)]


def test_send_event_wakes_a_run_waiting_for_that_name_only(store: Store) -> None:
    waiting(store, event_wait("go"), wake_at=NOW + 3600.0)  # the event wait's timeout
    store.send_event(T, "run-1", "other", None, NOW)
    assert the_run(store).wake_at == NOW + 3600.0
    store.send_event(T, "run-1", "go", None, NOW)
    assert the_run(store).wake_at == NOW


def test_send_event_to_a_running_run_keeps_it_without_a_wake_up(store: Store) -> None:
    new_run(store)
    store.put_waits(T, "run-1", "w1", [event_wait("go")])
    store.send_event(T, "run-1", "go", {"x": 1}, NOW)
    assert the_run(store).wake_at is None
    store.finish_run(T, "run-1", "w1", "waiting")  # the worker took no event before it arrived
    assert the_run(store).wake_at is not None
    assert [r.run_id for r in store.due_runs(time.time())] == ["run-1"]


def test_send_event_to_an_unknown_or_finished_run_is_refused(store: Store) -> None:
    with pytest.raises(RunNotFound):
        store.send_event(T, "nope", "go", None, NOW)
    assert store.list_events(T, "nope") == []
    new_run(store)
    store.finish_run(T, "run-1", "w1", "completed", outputs=1)
    before = snapshot(store)
    with pytest.raises(RunFinished, match="completed") as error:
        store.send_event(T, "run-1", "go", None, NOW)
    assert error.value.run_id == "run-1"
    assert snapshot(store) == before


def test_an_event_payload_that_is_not_json_is_refused(store: Store) -> None:
    new_run(store)
    with pytest.raises(StoreError, match="not JSON"):
        store.send_event(T, "run-1", "go", {"x": math.inf}, NOW)
    assert store.list_events(T, "run-1") == []


# --- cancel_run -----------------------------------------------------------------------------

def test_cancel_a_waiting_run(store: Store) -> None:
    waiting(store, approval(), event_wait(), wake_at=NOW)
    store.decide_wait(T, "run-1", "go:1", "received", None, NOW, kinds=("event",))
    cancelled = store.cancel_run(T, "run-1", "no longer needed", NOW + 1)
    assert cancelled == the_run(store)
    assert (cancelled.status, cancelled.error, cancelled.wake_at, cancelled.updated_at) == (
        "cancelled", {"type": "Cancelled", "message": "no longer needed"}, None, NOW + 1)
    assert store.due_runs(NOW + 1e9) == []
    pending, received = store.list_waits(T, "run-1")
    assert (pending.status, pending.decision, pending.decided_at) == (
        "cancelled", {"reason": "no longer needed"}, NOW + 1)
    assert received.status == "received"
    error = refused(store, AlreadyDecided)
    assert "was already cancelled at" in str(error)
    with pytest.raises(RunFinished):
        store.send_event(T, "run-1", "go", None, NOW)
    assert not store.acquire_lease(T, "run-1", "w1", LEASE, time.time())


def test_cancel_a_leased_run_stops_its_worker_at_the_next_fenced_write(store: Store) -> None:
    new_run(store)
    cancelled = store.cancel_run(T, "run-1", "stop", NOW)
    assert (cancelled.status, cancelled.lease_owner, cancelled.lease_expires_at) == (
        "cancelled", None, None)
    with pytest.raises(LeaseLost):
        store.append_journal(T, "run-1", "w1", [entry("late")])
    with pytest.raises(LeaseLost):
        store.put_waits(T, "run-1", "w1", [approval()])
    with pytest.raises(LeaseLost):
        store.take_event(T, "run-1", "w1", "go", "k", NOW)
    with pytest.raises(LeaseLost):
        store.finish_run(T, "run-1", "w1", "completed", outputs=1)
    assert not store.renew_lease(T, "run-1", "w1", LEASE, NOW)
    assert snapshot(store) == (cancelled, [], [], [])


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_a_finished_run_is_refused(store: Store, status: str) -> None:
    new_run(store)
    store.finish_run(T, "run-1", "w1", status, outputs=1)  # type: ignore[arg-type]
    before = snapshot(store)
    with pytest.raises(RunFinished, match=status):
        store.cancel_run(T, "run-1", "too late", NOW)
    assert snapshot(store) == before


def test_cancel_an_unknown_run_is_refused(store: Store) -> None:
    with pytest.raises(RunNotFound):
        store.cancel_run(T, "nope", "why", NOW)


# --- waits and events across tenants --------------------------------------------------------

def test_a_tenant_can_neither_see_decide_nor_signal_another_tenants_waits(store: Store) -> None:
    waiting(store, approval(tenant="a"), replace(event_wait(), tenant_id="a"), tenant="a")
    store.send_event("a", "run-1", "go", "a's payload", NOW)
    a_before = snapshot(store, tenant="a")

    assert store.list_waits("b") == [] and store.list_waits("b", "run-1") == []
    assert store.list_events("b", "run-1") == []
    with pytest.raises(RunNotFound) as error:
        store.decide_wait("b", "run-1", "deploy:1", "approved", {"by": "b"}, NOW)
    assert error.value.tenant_id == "b"
    with pytest.raises(RunNotFound):
        store.send_event("b", "run-1", "go", "b's payload", NOW)
    with pytest.raises(RunNotFound):
        store.cancel_run("b", "run-1", "hostile", NOW)
    with pytest.raises(LeaseLost):
        store.put_waits("b", "run-1", "w1", [approval(tenant="b")])
    with pytest.raises(LeaseLost):
        store.take_event("b", "run-1", "w1", "go", "k", NOW)
    assert snapshot(store, tenant="a") == a_before


def test_the_same_wait_and_run_ids_in_two_tenants_are_independent(store: Store) -> None:
    waiting(store, approval(tenant="a"), tenant="a")
    waiting(store, approval(tenant="b"), tenant="b")
    store.decide_wait("a", "run-1", "deploy:1", "approved", {"by": "a"}, NOW)
    (b_wait,) = store.list_waits("b")
    assert b_wait.status == "pending"
    assert the_run(store, tenant="b").wake_at is None
    assert store.send_event("b", "run-1", "go", None, NOW) == 1
    assert store.send_event("a", "run-1", "go", None, NOW) == 1
    assert [(r.tenant_id, r.run_id) for r in store.due_runs(NOW)] == [("a", "run-1")]


# --- the run queue: submit, claim, wait ----------------------------------------------------

def submit(store: Store, run_id: str, tenant: str = T, at: float = 0.0) -> RunRecord:
    record, created = store.submit_run(
        RunRecord(tenant, run_id, "plan-1", "running", {"n": 1}, created_at=at),
        plan(tenant))
    assert created
    return record


def claimed_ids(store: Store, owner: str = "w9", **options: Any) -> list[str]:
    """Claim until nothing is runnable, passing each claim's tenant on; the run ids."""
    found, after = [], ""
    while (run := store.claim_run(owner, LEASE, time.time(), after_tenant=after,
                                  **options)) is not None:
        found.append(run.run_id)
        after = run.tenant_id
    return found


def test_submit_run_stores_a_queued_run_without_a_lease_once(store: Store) -> None:
    before = time.time()
    record = submit(store, "q-1")
    assert (record.status, record.lease_owner, record.inputs) == ("queued", None, {"n": 1})
    assert record.wake_at == record.created_at and before <= record.created_at <= time.time()
    again, created = store.submit_run(RunRecord(T, "q-1", "plan-1", "running", {"n": 2}),
                                      plan())
    assert (again, created) == (record, False)
    assert store.get_plan(T, "plan-1") is not None


def test_claim_run_starts_a_queued_run_under_a_lease(store: Store) -> None:
    submit(store, "q-1")
    now = time.time()
    run = store.claim_run("w9", LEASE, now)
    assert run is not None
    assert (run.run_id, run.status, run.lease_owner, run.lease_expires_at) == (
        "q-1", "running", "w9", now + LEASE)
    assert store.claim_run("w8", LEASE, now) is None
    store.append_journal(T, "q-1", "w9", [JournalEntry("a", "result", 1)])  # fenced by it


def test_claim_run_takes_due_and_orphaned_runs_before_queued_ones(store: Store) -> None:
    submit(store, "queued", at=1.0)
    waiting(store, run_id="due", wake_at=5.0)
    waiting(store, run_id="later", wake_at=time.time() + 3600)
    new_run(store, "orphan", created_at=1.0, updated_at=1.0)  # its lease expired long ago
    new_run(store, "alive")
    assert sorted(claimed_ids(store)[:2]) == ["due", "orphan"]
    assert the_run(store, "queued").status == "running"
    assert the_run(store, "due").status == "running"  # leased: it executes now
    assert the_run(store, "later").lease_owner is None
    assert the_run(store, "alive").lease_owner == "w1"


def test_claims_take_tenants_in_turn_whatever_their_backlog(store: Store) -> None:
    for i in range(4):
        submit(store, f"a-{i}", tenant="a", at=1.0 + i)
    submit(store, "b-0", tenant="b", at=10.0)
    submit(store, "c-0", tenant="c", at=11.0)
    assert claimed_ids(store) == ["a-0", "b-0", "c-0", "a-1", "a-2", "a-3"]


def test_claim_run_of_one_tenant_only(store: Store) -> None:
    submit(store, "a-0", tenant="a")
    submit(store, "b-0", tenant="b")
    assert claimed_ids(store, tenant_id="b") == ["b-0"]


def test_a_tenant_at_its_cap_is_passed_over_until_a_run_ends(store: Store) -> None:
    for i in range(3):
        submit(store, f"a-{i}", tenant="a", at=1.0 + i)
    submit(store, "b-0", tenant="b", at=5.0)
    assert claimed_ids(store, tenant_cap=2) == ["a-0", "b-0", "a-1"]
    store.finish_run("a", "a-0", "w9", "completed")
    assert claimed_ids(store, tenant_cap=2) == ["a-2"]


def test_a_tenants_stored_max_concurrent_runs_caps_claims_the_lower_cap_wins(
        store: Store) -> None:
    store.put_policy("a", {"max_concurrent_runs": 1})
    store.put_policy("b", {"max_concurrent_runs": 5, "max_steps": 9})
    for i in range(3):
        submit(store, f"a-{i}", tenant="a", at=1.0 + i)
        submit(store, f"b-{i}", tenant="b", at=1.0 + i)
        submit(store, f"c-{i}", tenant="c", at=1.0 + i)
    # a: its policy's 1; b: the claimer's 2 (lower than its policy's 5); c: no policy, 2.
    assert claimed_ids(store, tenant_cap=2) == ["a-0", "b-0", "c-0", "b-1", "c-1"]
    store.finish_run("a", "a-0", "w9", "completed")
    assert claimed_ids(store) == ["a-1", "b-2", "c-2"]  # no claimer cap: a's own only


def test_a_stored_cap_alone_caps_claims_at_the_cap_and_one_past_it(store: Store) -> None:
    store.put_policy("a", {"max_concurrent_runs": 2})
    for i in range(3):
        submit(store, f"a-{i}", tenant="a", at=1.0 + i)
    submit(store, "b-0", tenant="b", at=9.0)
    assert claimed_ids(store) == ["a-0", "b-0", "a-1"]  # a-2 would be one past a's cap
    assert the_run(store, "a-2", tenant="a").status == "queued"


def test_claim_returns_the_run_with_its_plan_and_policy_and_whether_it_started_it(
        store: Store) -> None:
    store.put_policy(T, {"tools": ["note"]})
    submit(store, "q-1")
    new_run(store, "orphan", tenant="b", created_at=1.0, updated_at=1.0)  # lease expired
    now = time.time()
    orphan = store.claim("w9", LEASE, now)
    assert orphan is not None
    assert (orphan.run.run_id, orphan.run.lease_owner, orphan.plan, orphan.policy,
            orphan.started) == ("orphan", "w9", store.get_plan("b", "plan-1"), None, False)
    queued = store.claim("w9", LEASE, now)
    assert queued is not None
    assert (queued.run.run_id, queued.run.status, queued.plan, queued.policy,
            queued.started) == ("q-1", "running", store.get_plan(T, "plan-1"),
                                {"tools": ["note"]}, True)
    assert store.claim("w9", LEASE, now) is None


def test_create_run_under_a_cap_refuses_one_past_it_and_writes_nothing(
        store: Store) -> None:
    for i in range(2):
        store.create_run(RunRecord(T, f"r{i}", "plan-1", "running", {}), plan(T), "w1", LEASE,
                         cap=2)
    with pytest.raises(TooManyRuns, match="executes 2 runs, its policy's max_concurrent_runs"
                                          " is 2; nothing was started"):
        store.create_run(RunRecord(T, "r2", "plan-1", "running", {}), plan(T), "w1", LEASE,
                         cap=2)
    assert store.get_run(T, "r2") is None
    # An existing run is returned as without a cap: nothing new would start.
    record, created = store.create_run(RunRecord(T, "r1", "plan-1", "running", {}), plan(T),
                                       "w2", LEASE, cap=2)
    assert (record.run_id, record.lease_owner, created) == ("r1", "w1", False)
    store.finish_run(T, "r0", "w1", "completed")
    assert store.create_run(RunRecord(T, "r2", "plan-1", "running", {}), plan(T), "w1",
                            LEASE, cap=2)[1]


def test_an_expired_lease_counts_toward_the_cap_until_its_run_is_taken_over(
        store: Store) -> None:
    # Expired leases whose runs are not claimable yet (a backoff): their workers may still
    # be alive and renew them late, so no queued run starts past the cap.
    later = time.time() + 3600
    for i in range(2):
        new_run(store, f"held-{i}", tenant="a", created_at=1.0, updated_at=1.0, wake_at=later)
    submit(store, "a-2", tenant="a")
    assert claimed_ids(store, tenant_cap=2) == []
    assert the_run(store, "a-2", tenant="a").status == "queued"
    # Taking an expired lease over adds no run, so it needs no room.
    for i in range(2):
        new_run(store, f"orphan-{i}", tenant="b", created_at=1.0, updated_at=1.0)
    submit(store, "b-2", tenant="b")
    assert sorted(claimed_ids(store, tenant_id="b", tenant_cap=2)) == ["orphan-0", "orphan-1"]
    assert the_run(store, "b-2", tenant="b").status == "queued"


def test_concurrent_claims_never_take_one_run_twice(store: Store) -> None:
    for i in range(40):
        submit(store, f"q-{i}", tenant=f"t{i % 3}")
    taken: list[str] = []
    errors: list[BaseException] = []  # a claim that fails says why (it died unseen)

    def claimer(owner: str) -> None:
        try:
            taken.extend(claimed_ids(store, owner, tenant_cap=5))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A claim that skips rows another claim holds may find nothing for a moment; one more
    # pass alone takes what is left under the caps.
    taken.extend(claimed_ids(store, "w9", tenant_cap=5))
    assert errors == []
    assert len(taken) == len(set(taken)) == 15  # no run twice, 3 tenants x cap 5
    by_tenant = Counter(f"t{int(run_id[2:]) % 3}" for run_id in taken)
    assert by_tenant == {"t0": 5, "t1": 5, "t2": 5}


def test_next_wake_at_is_the_earliest_waiting_timer(store: Store) -> None:
    assert store.next_wake_at() is None
    waiting(store, run_id="r1", wake_at=500.0)
    waiting(store, run_id="r2", wake_at=200.0)
    assert store.next_wake_at() == 200.0


def test_wait_for_run_returns_once_another_thread_settles_it(store: Store) -> None:
    new_run(store)
    done = frozenset({"completed"})
    assert store.wait_for_run(T, "run-1", done, 0.05) is None
    finisher = threading.Timer(0.3, lambda: store.finish_run(T, "run-1", "w1", "completed",
                                                             outputs={"ok": 1}))
    finisher.start()
    run = store.wait_for_run(T, "run-1", done, 60.0)
    finisher.join()
    assert run is not None and (run.status, run.outputs) == ("completed", {"ok": 1})
    with pytest.raises(RunNotFound):
        store.wait_for_run(T, "nope", done, 1.0)


def test_acquiring_a_waiting_run_shows_it_running(store: Store) -> None:
    waiting(store, run_id="due", wake_at=5.0)
    assert store.acquire_lease(T, "due", "w2", LEASE, time.time())
    assert the_run(store, "due").status == "running"


def test_a_run_released_with_a_backoff_is_not_orphaned_before_it(store: Store) -> None:
    now = time.time()
    new_run(store, "later")
    store.finish_run(T, "later", "w1", "running", wake_at=now + 3600)
    new_run(store, "now")
    store.finish_run(T, "now", "w1", "running", wake_at=now - 1)
    assert [run.run_id for run in store.orphaned_runs(now)] == ["now"]
    assert sorted(run.run_id for run in store.orphaned_runs(now + 3601)) == ["later", "now"]
    assert store.claim_run("w2", LEASE, now).run_id == "now"  # type: ignore[union-attr]
    assert store.claim_run("w3", LEASE, now) is None
