"""The `Store` contract for what tenants as a platform keep: plan versions, policies,
charges, leased-run counts and pruning. One suite, run on every backend of
tests/test_store_contract.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow.errors import PlanInUse, PlanNotFound
from agentflow.store import JournalEntry, RunRecord, Store, StoredPlan, WaitRecord
from tests.test_store_contract import BACKENDS

T = "acme"


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def plan(plan_hash: str, tenant: str = T) -> StoredPlan:
    return StoredPlan(tenant, plan_hash, "graph", f'{{"v":"{plan_hash}"}}', 0.0)


def start(store: Store, run_id: str, plan_hash: str, status: str = "running") -> None:
    store.create_run(RunRecord(T, run_id, plan_hash, "running", {}, plan_name="release"),
                     plan(plan_hash), "w1", 30.0)
    store.append_journal(T, run_id, "w1", [JournalEntry("a", "result", 1)])
    store.put_waits(T, run_id, "w1", [WaitRecord(T, run_id, "ok:1", "ok", "approval",
                                                 plan_hash)])
    store.put_charge(T, run_id, "a", 1, 10, 0.5)
    if status != "running":
        store.finish_run(T, run_id, "w1", status)  # type: ignore[arg-type]


def test_versions_are_numbered_and_the_newest_is_current(store: Store) -> None:
    assert store.put_plan_version(T, "release", plan("h1"))
    assert not store.put_plan_version(T, "release", plan("h1"))  # already current
    assert store.put_plan_version(T, "release", plan("h2"))
    assert store.current_plan_version(T, "release") == "h2"
    assert store.put_plan_version(T, "release", plan("h1"))  # an old one, current again
    assert [h for h, _ in store.plan_versions(T, "release")] == ["h1", "h2"]
    assert store.has_plan_version(T, "release", "h2")
    assert [(p.name, p.version, p.versions) for p in store.plan_names(T)] == [
        ("release", "h1", 2)]
    assert store.plan_versions("globex", "release") == [] and store.plan_names("globex") == []
    assert store.current_plan_version("globex", "release") is None
    with pytest.raises(ValueError, match="tenant"):
        store.put_plan_version(T, "release", plan("h3", tenant="globex"))


def test_a_version_in_use_by_an_unfinished_run_is_not_deleted(store: Store) -> None:
    store.put_plan_version(T, "release", plan("h1"))
    start(store, "r1", "h1", status="waiting")
    with pytest.raises(PlanInUse, match="r1"):
        store.delete_plan_version(T, "release", "h1")
    assert store.has_plan_version(T, "release", "h1")
    with pytest.raises(PlanNotFound):
        store.delete_plan_version("globex", "release", "h1")
    store.cancel_run(T, "r1", "done", time.time())
    store.delete_plan_version(T, "release", "h1")
    assert store.plan_versions(T, "release") == []
    assert store.get_plan(T, "h1") is not None  # the finished run still refers to it


def test_policies_charges_and_leased_runs(store: Store) -> None:
    assert store.get_policy(T) is None
    store.put_policy(T, {"max_steps": 3})
    store.put_policy(T, {"max_steps": 4})
    assert store.get_policy(T) == {"max_steps": 4} and store.get_policy("globex") is None
    start(store, "r1", "h1")
    store.put_charge(T, "r1", "a", 1, 25, 1.25)  # the attempt's running total, again
    store.put_charge(T, "r1", "b", 1, 5, 0.25)
    assert store.charged(T, "r1") == (30, 1.5) and store.charged("globex", "r1") == (0, 0.0)
    assert store.count_leased(T) == 1 and store.count_leased("globex") == 0
    store.finish_run(T, "r1", "w1", "waiting")
    assert store.count_leased(T) == 0


def test_prune_deletes_finished_runs_with_their_rows_in_batches(store: Store) -> None:
    for n in range(3):
        start(store, f"done-{n}", "h1", status="completed")
    start(store, "waiting", "h1", status="waiting")
    start(store, "failed", "h2", status="failed")
    later = time.time() + 1
    with pytest.raises(ValueError, match="finished runs"):
        store.prune_runs(later, ["waiting"])
    assert sorted(store.prune_runs(later, ["completed"], dry_run=True)) == [
        (T, "done-0"), (T, "done-1"), (T, "done-2")]
    assert store.get_run(T, "done-0") is not None
    assert len(store.prune_runs(later, ["completed"], limit=2)) == 2
    assert len(store.prune_runs(later, ["completed"], limit=2)) == 1
    assert store.prune_runs(later, ["completed", "failed"], tenant_id="globex") == []
    assert store.prune_runs(later, ["failed"]) == [(T, "failed")]
    for run_id in ("done-0", "done-1", "done-2", "failed"):
        assert store.get_run(T, run_id) is None
        assert store.read_journal(T, run_id) == [] and store.list_waits(T, run_id) == []
        assert store.charged(T, run_id) == (0, 0.0)
    assert store.get_plan(T, "h2") is None  # no run refers to it any more
    assert store.get_plan(T, "h1") is not None  # the waiting run does
    assert store.get_run(T, "waiting") is not None
    assert store.prune_runs(time.time() - 3600, ["cancelled"]) == []
