"""Idempotency keys and approval wait ids name exactly one (tenant, run, position,
arguments): length-prefixed fields, full-width SHA-256 (issue 9, findings 3 and 12)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow import Engine, ToolContext, idempotency_key, tool
from agentflow.executors.identities import (
    approval_wait_id,
    encode_fields,
    key_for_hash,
    legacy_wait_id,
)
from agentflow.executors.journal import args_hash
from agentflow.store.base import JournalEntry, WaitRecord

names = st.text(max_size=12)  # any characters, separators included
json_args = st.dictionaries(st.sampled_from("ab/:"), st.integers() | st.text(max_size=4),
                            max_size=3)
identity = st.tuples(names, names, names, json_args)


def test_tenant_and_run_boundaries_are_not_ambiguous() -> None:
    assert idempotency_key("acme/r1", "c1", "c1", {}) != idempotency_key("acme", "r1/c1", "c1", {})
    assert idempotency_key("acme", "r1", "c1/c1", {}) != idempotency_key("acme/r1", "c1", "c1", {})
    hashed = args_hash({})
    assert approval_wait_id("acme/r1", "c1", "k", hashed) != \
        approval_wait_id("acme", "r1/c1", "k", hashed)


def test_keys_and_wait_ids_carry_full_width_hashes() -> None:
    key = idempotency_key("t", "r", "deploy", {"target": "staging"})
    assert key.startswith("af1-") and len(key) == 4 + 64
    wait_id = approval_wait_id("t", "r", "deploy@approval", args_hash({"target": "staging"}))
    assert wait_id.startswith("deploy@approval:") and len(wait_id.split(":")[-1]) == 64
    assert len(args_hash({"target": "staging"})) == 64


def test_keys_and_argument_hashes_are_the_same_in_every_version() -> None:
    """A run resumed by a newer version must give a call in flight the key its first
    attempt had: these values were computed by the first version of this encoding."""
    args = {"b": "é", "a": [1, 2.5, None]}
    assert args_hash(args) == "41a039b5a690a0e490a416507920c9993f5d12a59eb496d685026408ea22b407"
    assert idempotency_key("acme", "r1", "c1", {"amount": 5}) == \
        "af1-5f37ec2c93fa9204537f832f9c777282eb56e34117a0dc3d744e33a4db2ce26f"
    assert idempotency_key("t", "run é", "step[3]", args) == \
        "af1-757e31691b98a11ef01b82085204a4042b29d9a0500210edc4aaf3572c9fd376"


@settings(max_examples=300, deadline=None)
@given(identity, identity)
def test_distinct_identities_never_share_a_key_or_wait_id(
        first: tuple[str, str, str, dict[str, Any]],
        second: tuple[str, str, str, dict[str, Any]]) -> None:
    same = first[:3] == second[:3] and args_hash(first[3]) == args_hash(second[3])
    keys = [idempotency_key(*first), idempotency_key(*second)]
    waits = [approval_wait_id(*one[:3], args_hash(one[3])) for one in (first, second)]
    encodings = [encode_fields(*one[:3], args_hash(one[3])) for one in (first, second)]
    assert (keys[0] == keys[1]) == same
    assert (waits[0] == waits[1]) == same
    assert (encodings[0] == encodings[1]) == same  # injective before hashing, too


@settings(max_examples=300, deadline=None)
@given(st.lists(names, max_size=4), st.lists(names, max_size=4))
def test_the_field_encoding_is_injective(first: list[str], second: list[str]) -> None:
    assert (encode_fields(*first) == encode_fields(*second)) == (first == second)


def test_a_tool_sees_the_documented_key_and_tenants_never_share_one(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    @tool
    def pay(amount: int, ctx: ToolContext) -> int:
        seen.append((ctx.tenant_id, ctx.idempotency_key))
        return amount

    engine = Engine(str(tmp_path / "runs.db"))
    plan = {"steps": [{"id": "c1", "tool": "pay", "args": {"amount": 5}}]}
    engine.tenant("acme/r1").execute(plan, tools=[pay], run_id="c1")
    engine.tenant("acme").execute(plan, tools=[pay], run_id="r1/c1")
    assert seen == [("acme/r1", idempotency_key("acme/r1", "c1", "c1", {"amount": 5})),
                    ("acme", idempotency_key("acme", "r1/c1", "c1", {"amount": 5}))]
    assert seen[0][1] != seen[1][1]


def _legacy_in_flight_run(engine: Engine, run_id: str, plan: dict[str, Any],
                          args: dict[str, Any]) -> None:
    """A run as an older version left it at a crash: the intent of `pay` journaled with a
    128-bit argument hash, no outcome."""
    engine.tenant("acme").execute(plan, run_id=run_id, tools=[_blocked])
    store = engine.store
    assert store.acquire_lease("acme", run_id, "old", 30, time.time(), take_over_from=None)
    store.append_journal("acme", run_id, "old", [JournalEntry(
        key="pay", kind="intent", data={"args": args}, attempt=1, tool="pay",
        args_hash=args_hash(args)[:32])])
    store.finish_run("acme", run_id, "old", "running")


@tool(name="pay", requires_approval=True)
def _blocked(amount: int) -> int:
    return amount


def test_a_call_in_flight_under_the_old_key_format_keeps_its_key(tmp_path: Path) -> None:
    seen: list[str] = []

    @tool
    def pay(amount: int, ctx: ToolContext) -> int:
        seen.append(ctx.idempotency_key)
        return amount

    engine = Engine(str(tmp_path / "runs.db"), max_inline_wait=0.0)
    plan = {"steps": [{"id": "pay", "tool": "pay", "args": {"amount": 5}}],
            "outputs": {"paid": "${steps.pay.output}"}}
    _legacy_in_flight_run(engine, "old-run", plan, {"amount": 5})
    result = engine.tenant("acme").resume("old-run", tools=[pay])
    assert (result.status, result.outputs) == ("completed", {"paid": 5})
    assert seen == ["acme/old-run/pay"]  # what the first attempt was given then
    engine.tenant("acme").execute(plan, tools=[pay], run_id="new-run")
    assert seen[1] == key_for_hash("acme", "new-run", "pay", args_hash({"amount": 5}))


def test_an_approval_asked_for_under_the_old_wait_id_still_counts(tmp_path: Path) -> None:
    ran: list[int] = []

    @tool(requires_approval=True)
    def pay(amount: int) -> int:
        ran.append(amount)
        return amount

    engine = Engine(str(tmp_path / "runs.db"), max_inline_wait=0.0)
    acme = engine.tenant("acme", tools=[pay])
    plan = {"steps": [{"id": "pay", "tool": "pay", "args": {"amount": 5}}]}
    waiting = acme.execute(plan, run_id="r")
    [pending] = waiting.pending
    hashed = args_hash({"amount": 5})
    assert pending.id == approval_wait_id("acme", "r", "pay@approval", hashed)
    # rewrite the wait as an older version stored it: 32-bit id, 128-bit hash
    store = engine.store
    [wait] = store.list_waits("acme", "r")
    old = WaitRecord(**{**wait.__dict__, "wait_id": legacy_wait_id("pay@approval", hashed),
                        "args_hash": hashed[:32]})
    with store._transaction() as conn:  # type: ignore[attr-defined]
        conn.execute("DELETE FROM waits WHERE tenant_id = ? AND run_id = ?", ("acme", "r"))
    assert store.acquire_lease("acme", "r", "old", 30, time.time())
    store.put_waits("acme", "r", "old", [old])
    store.finish_run("acme", "r", "old", "waiting")
    acme.approve("r", old.wait_id, by="alice")
    assert acme.resume("r").status == "completed"
    assert ran == [5]


def test_an_approval_bound_to_other_arguments_never_runs_the_call(tmp_path: Path) -> None:
    """As if two argument sets shared a wait id (the 32-bit prefix of finding 3): the
    decision names its arguments in full, and the call checks them before it runs."""
    ran: list[str] = []

    @tool(requires_approval=True)
    def deploy(target: str) -> str:
        ran.append(target)
        return target

    engine = Engine(str(tmp_path / "runs.db"), tools=[deploy], max_inline_wait=0.0)
    plan = {"steps": [{"id": "go", "tool": "deploy", "args": {"target": "production"}}]}
    [pending] = engine.execute(plan, run_id="r").pending
    with engine.store._transaction() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE waits SET args = ? WHERE wait_id = ?",
                     ('{"target":"staging"}', pending.id))
    [shown] = engine.get_run("r").pending
    assert shown.args == {"target": "staging"}  # what the approver was shown and approved
    engine.approve("r", pending.id, by="alice")
    result = engine.resume("r")
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "NonDeterminismError"
    assert "{'target': 'staging'}" in result.error.message
    assert ran == []
