"""Attacks on identities (issue 9, finding 12, and beyond): tenant and run ids built to
collide (`acme/r1` + `c1` against `acme` + `r1/c1`), ids with `/`, NUL, newlines or lone
surrogates, 10 MB ids, and one tenant reaching for another's run by its id.

A bad id is refused before anything is stored, the same way on every store; ids that
merely look alike never share a run, a journal or an idempotency key.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentflow import Engine, code_plan
from agentflow.errors import AgentflowError, RunNotFound
from tests.attacks.harness import calls, cases

PLAN = code_plan("approve('go?')\nreturn side_effect(label='x')")

LOOKALIKES = {  # pairs of (tenant, run id) that a naive "tenant/run/position" key confuses
    "slash-in-tenant-or-run": [("acme/r1", "c1"), ("acme", "r1/c1")],
    "colon-in-tenant-or-run": [("acme:r1", "c1"), ("acme", "r1:c1")],
    "same-run-in-two-tenants": [("acme", "r1"), ("globex", "r1")],
    "tenant-named-default": [("default", "r1"), ("Default", "r1")],
    "dots": [("acme", "../r1"), ("acme/..", "r1")],
}


@pytest.mark.parametrize("pairs", cases(LOOKALIKES))
def test_lookalike_ids_never_share_a_run_or_a_key(engine: Engine,
                                                  pairs: list[tuple[str, str]]) -> None:
    keys = []
    for tenant, run_id in pairs:
        calls.clear()
        waiting = engine.execute(PLAN, tenant=tenant, run_id=run_id)
        assert waiting.status == "waiting" and waiting.tenant_id == tenant
        engine.approve(run_id, waiting.pending[0].id, by="alice", tenant=tenant)
        assert engine.resume(run_id, tenant=tenant).outputs == "x"
        keys.extend(calls.keys)
    assert len(keys) == len(set(keys)) == len(pairs)
    for tenant, run_id in pairs:
        assert [run.run_id for run in engine.list_runs(tenant=tenant)] == [run_id]


BAD_IDS: dict[str, dict[str, Any]] = {
    "run-id-with-nul": {"run_id": "a\x00b"},
    "run-id-with-newline": {"run_id": "a\nb"},
    "run-id-with-lone-surrogate": {"run_id": "\ud800"},
    "run-id-of-10-mb": {"run_id": "r" * (10 << 20)},
    "run-id-past-its-limit": {"run_id": "r" * 201},
    "run-id-blank": {"run_id": "  "},
    "run-id-not-text": {"run_id": 5},
    "run-id-with-a-trailing-space": {"run_id": "r1 "},
    "tenant-with-nul": {"tenant": "a\x00b"},
    "tenant-with-escape": {"tenant": "a\x1b[2Jb"},
    "tenant-with-lone-surrogate": {"tenant": "\udfff"},
    "tenant-of-10-mb": {"tenant": "t" * (10 << 20)},
    "tenant-empty": {"tenant": ""},
    "tenant-none": {"tenant": None},
    "tenant-default-with-a-trailing-space": {"tenant": "default "},
    "tenant-with-a-leading-space": {"tenant": " acme"},
}


@pytest.mark.parametrize("ids", cases(BAD_IDS))
def test_a_bad_id_is_refused_before_anything_is_stored(engine: Engine,
                                                       ids: dict[str, Any]) -> None:
    calls.clear()
    with pytest.raises(ValueError) as refused:
        engine.execute(PLAN, **ids)
    assert len(str(refused.value)) < 500
    with pytest.raises(ValueError):
        engine.submit(PLAN, **ids)
    assert not calls.keys and not engine.list_runs()


def test_the_longest_id_works(engine: Engine) -> None:
    result = engine.execute(PLAN, tenant="t" * 200, run_id="r" * 200)
    assert result.status == "waiting" and result.run_id == "r" * 200


REACHES = {
    "get": lambda engine, run: engine.get_run(run.run_id, tenant="mallory"),
    "resume": lambda engine, run: engine.resume(run.run_id, tenant="mallory"),
    "approve": lambda engine, run: engine.approve(run.run_id, run.pending[0].id, by="mallory",
                                                  tenant="mallory"),
    "reject": lambda engine, run: engine.reject(run.run_id, run.pending[0].id, by="mallory",
                                                tenant="mallory"),
    "cancel": lambda engine, run: engine.cancel(run.run_id, tenant="mallory"),
    "journal": lambda engine, run: engine.journal(run.run_id, tenant="mallory"),
    "execute-same-id": lambda engine, run: engine.execute(
        code_plan("return side_effect(label='theirs')"), run_id=run.run_id,
        tenant="mallory").outputs == "theirs" or RunNotFound(run.run_id),
}


@pytest.mark.parametrize("reach", cases(REACHES))
def test_another_tenant_cannot_reach_a_run_by_its_id(engine: Engine, reach: Any) -> None:
    victim = engine.execute(PLAN, tenant="acme", run_id="victim")
    try:
        outcome = reach(engine, victim)
    except AgentflowError as error:
        assert isinstance(error, RunNotFound), error
    else:  # only a run of mallory's own, under the same id
        assert outcome is True
    after = engine.get_run("victim", tenant="acme")
    assert after.status == "waiting" and after.pending[0].status == "pending"
    assert calls.labels["x"] == 0
