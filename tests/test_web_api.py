"""The HTTP API over a real socket, against a real `agentflow serve` process: every
endpoint, every error status, and the roles of tokens.

Runs are started in this process on the same SQLite file (max_inline_wait=0, so they wait);
the server's own worker resumes them once decided, as it would in production.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentflow.engine.tokens import create_token
from agentflow.plan import plan_schema
from agentflow.store.base import WaitRecord
from tests.support.web_server import WebServer, call, require, wait_for, web_server
from tests.support.web_tools import EVENT_PLAN, FAILING_PLAN, PAYMENT_PLAN, expiring_plan

require("fastapi", "uvicorn")
TENANT = "acme"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with web_server(tmp_path_factory.mktemp("web")) as running:
        yield running


# -- reading -------------------------------------------------------------------------------


def test_get_a_run_with_its_steps_pending_approval_and_graph(server: WebServer) -> None:
    pending = server.start("read-1")
    run = server.run("read-1")
    assert (run["status"], run["plan_name"], run["inputs"]) == (
        "waiting", "payment", {"account": "acme", "amount": 50})
    assert [(s["id"], s["status"]) for s in run["steps"]] == [("pay", "waiting"),
                                                                 ("note", "pending")]
    [wait] = run["pending"]
    assert (wait["id"], wait["tool"], wait["args"], wait["prompt"]) == (
        pending, "transfer", {"account": "acme", "amount": 50}, "Pay 50 to acme?")
    assert [n["id"] for n in run["graph"]["nodes"]] == ["pay", "note"]
    assert run["graph"]["edges"] == [["pay", "note"]]
    status, journal = server.call("GET", "/api/runs/read-1/journal", "viewer")
    assert status == 200
    assert [(e["key"], e["kind"]) for e in journal] == [("pay@approval", "wait")]


def test_a_failed_step_shows_its_error_and_traceback(server: WebServer) -> None:
    result = server.engine.tenant(TENANT).execute(FAILING_PLAN, inputs={"account": "x-9"},
                                                  run_id="fail-1")
    assert result.status == "failed"
    run = server.run("fail-1")
    [step] = run["steps"]
    assert (step["status"], step["error_type"], step["error"]) == (
        "failed", "ValueError", "account 'x-9' is closed")
    assert "raise ValueError" in step["traceback"] and "web_tools.py" in step["traceback"]
    assert (run["error"]["step_id"], run["error"]["type"]) == ("check", "ValueError")


def test_list_runs_with_filters_and_cursor_pages(server: WebServer) -> None:
    for index in range(5):
        server.start(f"page-{index}", inputs={"account": f"a{index}", "amount": index})
    status, body = server.call("GET", "/api/runs?status=waiting&limit=2", "viewer")
    assert status == 200 and len(body["runs"]) == 2
    seen = [run["run_id"] for run in body["runs"]]
    while body["next_cursor"]:
        status, body = server.call(
            "GET", f"/api/runs?status=waiting&limit=2&cursor={body['next_cursor']}", "viewer")
        assert status == 200
        seen += [run["run_id"] for run in body["runs"]]
    assert {f"page-{i}" for i in range(5)} <= set(seen)
    assert len(seen) == len(set(seen))  # no run on two pages
    everything = server.engine.list_runs(tenant=TENANT, status="waiting", limit=1000)
    assert seen == [run.run_id for run in everything]  # newest first, as the store orders
    plan_hash = everything[0].plan_hash
    status, body = server.call("GET", f"/api/runs?plan={plan_hash}&limit=500", "viewer")
    assert {run["plan_hash"] for run in body["runs"]} == {plan_hash}
    status, body = server.call("GET", "/api/runs?plan=payment&status=waiting&limit=500",
                               "viewer")
    assert [run["run_id"] for run in body["runs"]] == [
        run.run_id for run in everything if run.plan_name == "payment"]
    assert {f"page-{i}" for i in range(5)} <= {run["run_id"] for run in body["runs"]}
    assert server.call("GET", "/api/runs?plan=no_such_plan", "viewer") == (
        200, {"runs": [], "next_cursor": None})
    status, body = server.call("GET", "/api/runs?status=completed&plan=" + "0" * 64, "viewer")
    assert (status, body["runs"]) == (200, [])
    status, body = server.call("GET", f"/api/runs?tenant={TENANT}&limit=1", "viewer")
    assert status == 200 and len(body["runs"]) == 1


def test_bad_list_parameters_are_422(server: WebServer) -> None:
    assert server.call("GET", "/api/runs?cursor=garbage", "viewer")[0] == 422
    assert server.call("GET", "/api/runs?limit=0", "viewer")[0] == 422
    assert server.call("GET", "/api/runs?limit=501", "viewer")[0] == 422


# -- deciding ------------------------------------------------------------------------------


def test_approve_with_edited_arguments_and_the_server_resumes_the_run(server: WebServer) -> None:
    pending = server.start("edit-1")
    status, body = server.call("POST", f"/api/runs/edit-1/approvals/{pending}/approve",
                               "alice", {"comment": "less", "args": {"account": "acme",
                                                                     "amount": 40}})
    assert status == 200, body
    assert (body["status"], body["decision"]["by"]) == ("approved", "alice")
    run = server.finished("edit-1")
    assert run["status"] == "completed"
    assert run["outputs"]["paid"] == {"account": "acme", "amount": 40, "receipt": "tx-acme-40"}


def test_reject_with_a_reason(server: WebServer) -> None:
    pending = server.start("reject-1")
    status, body = server.call("POST", f"/api/runs/reject-1/approvals/{pending}/reject",
                               "bob", {"reason": "wrong account"})
    assert (status, body["status"], body["decision"]["reason"]) == (
        200, "rejected", "wrong account")
    run = server.finished("reject-1")
    assert {s["id"]: s["status"] for s in run["steps"]}["pay"] == "rejected"
    assert run["outputs"]["note"] == "paid: rejected"


def test_decision_errors_have_their_statuses_and_change_nothing(server: WebServer) -> None:
    pending = server.start("err-1")
    base = "/api/runs/err-1/approvals"
    before = server.snapshot("err-1")
    cases = [
        ("alice", "/api/runs/nope/approvals/x/approve", {}, 404, "RunNotFound"),
        ("alice", f"{base}/pay@approval:00000000/approve", {}, 404, "PendingNotFound"),
        ("mallory", f"{base}/{pending}/approve", {}, 403, "NotAnApprover"),
        ("viewer", f"{base}/{pending}/approve", {}, 403, "AccessDenied"),
        ("alice", f"{base}/{pending}/approve", {"args": {"account": "acme", "amount": "x"}},
         422, "ToolArgumentsError"),
        ("alice", f"{base}/{pending}/approve", {"args": {"account": "acme"}}, 422,
         "ToolArgumentsError"),
        ("alice", f"{base}/{pending}/approve", {"args": [1]}, 422, None),
        ("nobody", f"{base}/{pending}/approve", {}, 401, "AccessDenied"),
        ("af_000000000000_" + "x" * 43, f"{base}/{pending}/approve", {}, 401, "AccessDenied"),
    ]
    for who, path, body, expected, error in cases:
        status, answer = server.call("POST", path, who, body)
        assert status == expected, (who, path, answer)
        if error is not None:
            assert answer["error"] == error and answer["message"], answer
    assert server.snapshot("err-1") == before
    assert server.call("POST", f"{base}/{pending}/approve", "alice", {})[0] == 200
    status, answer = server.call("POST", f"{base}/{pending}/reject", "bob", {})
    assert (status, answer["error"]) == (409, "AlreadyDecided")
    assert "already approved by alice" in answer["message"]


def test_a_stale_approval_is_409(server: WebServer) -> None:
    server.start("stale-1")
    store, run = server.engine.store, server.engine.store.get_run(TENANT, "stale-1")
    assert run is not None
    old = WaitRecord(tenant_id=TENANT, run_id="stale-1", wait_id="pay@approval:deadbeef",
                     key="pay@approval", kind="approval", plan_hash=run.plan_hash,
                     step_id="pay", args_hash="deadbeef" * 8)
    store.acquire_lease(TENANT, "stale-1", "test", 30, time.time())
    store.put_waits(TENANT, "stale-1", "test", [old])
    store.finish_run(TENANT, "stale-1", "test", "waiting")
    assert server.engine.tenant(TENANT).resume("stale-1").status == "waiting"
    status, answer = server.call(
        "POST", "/api/runs/stale-1/approvals/pay@approval:deadbeef/approve", "alice", {})
    assert (status, answer["error"]) == (409, "StaleDecision")


def test_an_expired_approval_is_410(server: WebServer) -> None:
    pending = server.start("expire-1", expiring_plan(0.5))
    time.sleep(0.6)
    status, answer = server.call("POST", f"/api/runs/expire-1/approvals/{pending}/approve",
                                 "alice", {})
    assert (status, answer["error"]) == (410, "DecisionExpired")


def test_send_an_event(server: WebServer) -> None:
    server.start("event-1", EVENT_PLAN, inputs={})
    status, body = server.call("POST", "/api/runs/event-1/events", "alice",
                               {"name": "payment.received", "payload": {"amount": 12}})
    assert (status, body["name"]) == (200, "payment.received")
    assert server.finished("event-1")["outputs"] == {"note": 'got {"amount":12}'}
    assert server.call("POST", "/api/runs/event-1/events", "alice",
                       {"name": "again"})[0] == 409  # a finished run takes no events
    assert server.call("POST", "/api/runs/nope/events", "alice", {"name": "x"})[0] == 404
    assert server.call("POST", "/api/runs/event-1/events", "alice", {"name": ""})[0] == 422
    assert server.call("POST", "/api/runs/event-1/events", "viewer", {"name": "x"})[0] == 403


# -- submitting, cancelling, validating ---------------------------------------------------


def test_submit_a_plan_then_cancel_the_run(server: WebServer) -> None:
    status, run = server.call("POST", "/api/runs", "admin", {
        "plan": PAYMENT_PLAN, "inputs": {"account": "zeta", "amount": 7}, "run_id": "sub-1"})
    assert (status, run["run_id"], run["plan_name"]) == (200, "sub-1", "payment")
    run = wait_for(lambda: (lambda now: now if now["status"] == "waiting" else None)(
        server.run("sub-1")), what="the server's worker to run sub-1 to its approval")
    assert run["pending"][0]["args"] == {"account": "zeta", "amount": 7}
    status, again = server.call("POST", "/api/runs", "admin", {
        "plan": PAYMENT_PLAN, "inputs": {"account": "zeta", "amount": 7}, "run_id": "sub-1"})
    assert (status, again["created_at"]) == (200, run["created_at"])  # the same run
    assert server.call("POST", "/api/runs", "admin", {
        "plan": PAYMENT_PLAN, "inputs": {"account": "zeta", "amount": 8},
        "run_id": "sub-1"})[0] == 409  # PlanMismatch: other inputs
    status, cancelled = server.call("POST", "/api/runs/sub-1/cancel", "admin",
                                    {"reason": "not needed"})
    assert (status, cancelled["status"], cancelled["error"]["message"]) == (
        200, "cancelled", "not needed")
    status, answer = server.call("POST", "/api/runs/sub-1/cancel", "admin", {})
    assert (status, answer["error"]) == (409, "RunFinished")
    assert server.call("POST", "/api/runs/nope/cancel", "admin", {})[0] == 404
    assert server.call("POST", "/api/runs/sub-1/cancel", "alice", {})[0] == 403


def test_submit_refuses_an_invalid_plan_or_inputs_with_every_issue(server: WebServer) -> None:
    bad = {"format": "agentflow/v1", "steps": [{"id": "a", "tool": "nope"},
                                               {"id": "b", "tool": "receipt", "args": {}}]}
    status, answer = server.call("POST", "/api/runs", "admin", {"plan": bad, "run_id": "bad-1"})
    assert (status, answer["error"]) == (422, "PlanValidationError")
    assert {issue["step"] for issue in answer["issues"]} == {"a", "b"}
    status, answer = server.call("POST", "/api/runs", "admin", {
        "plan": PAYMENT_PLAN, "inputs": {"account": 1}, "run_id": "bad-2"})
    assert status == 422 and answer["issues"]
    assert server.call("POST", "/api/runs", "admin", {})[0] == 422  # neither plan nor code
    assert server.engine.store.get_run(TENANT, "bad-1") is None
    assert server.engine.store.get_run(TENANT, "bad-2") is None


def test_validate_a_plan_lists_every_issue(server: WebServer) -> None:
    status, answer = server.call("POST", "/api/plans/validate", "viewer", {"plan": PAYMENT_PLAN})
    assert (status, answer["valid"], len(answer["plan_hash"])) == (200, True, 64)
    bad = {"format": "agentflow/v1", "steps": [{"id": "a", "tool": "nope"},
                                               {"id": "a", "tool": "receipt"}]}
    status, answer = server.call("POST", "/api/plans/validate", "viewer", {"plan": bad})
    assert (status, answer["valid"]) == (200, False)
    assert len(answer["issues"]) >= 2 and all(i["path"] and i["message"]
                                              for i in answer["issues"])
    status, answer = server.call("POST", "/api/plans/validate", "viewer",
                                 {"code": "return transfer(account='a', amount=1)"})
    assert (status, answer["valid"]) == (200, True)


def test_the_plan_schema_and_the_openapi_document(server: WebServer) -> None:
    assert server.call("GET", "/api/plans/schema", "viewer") == (200, plan_schema())
    status, document = call(server.base, "GET", "/openapi.json")
    assert status == 200
    assert set(document["paths"]) == {
        "/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/journal",
        "/api/runs/{run_id}/approvals/{pending_id}/approve",
        "/api/runs/{run_id}/approvals/{pending_id}/reject", "/api/runs/{run_id}/events",
        "/api/runs/{run_id}/cancel", "/api/plans/validate", "/api/plans/schema"}


def test_a_revoked_token_is_refused(server: WebServer) -> None:
    token, record = create_token(server.engine.store, tenant=TENANT, role="viewer",
                                 name="temp")
    assert call(server.base, "GET", "/api/runs", token)[0] == 200
    assert server.engine.store.revoke_token(record.token_id, time.time())
    status, answer = call(server.base, "GET", "/api/runs", token)
    assert status == 401 and "revoked" in answer["message"]
    assert call(server.base, "GET", "/api/runs")[0] == 401


# -- tenants -------------------------------------------------------------------------------


def test_another_tenants_token_gets_404_everywhere_and_changes_nothing(server: WebServer) -> None:
    pending = server.start("tenant-1")
    intruder, _ = create_token(server.engine.store, tenant="globex", role="admin",
                               name="alice")
    before = server.snapshot("tenant-1")
    decisions = f"/api/runs/tenant-1/approvals/{pending}"
    matrix: list[tuple[str, str, Any]] = [
        ("GET", "/api/runs/tenant-1", None),
        ("GET", "/api/runs/tenant-1/journal", None),
        ("GET", f"/api/runs?tenant={TENANT}", None),
        ("POST", f"{decisions}/approve", {"args": {"account": "evil", "amount": 1}}),
        ("POST", f"{decisions}/reject", {"reason": "x"}),
        ("POST", "/api/runs/tenant-1/events", {"name": "payment.received"}),
        ("POST", "/api/runs/tenant-1/cancel", {}),
        ("POST", "/api/runs", {"plan": PAYMENT_PLAN, "inputs": {"account": "a", "amount": 1},
                               "run_id": "tenant-1", "tenant": TENANT}),
    ]
    for method, path, body in matrix:
        status, answer = call(server.base, method, path, intruder, body)
        assert status == 404, (method, path, answer)
        assert answer["error"] in ("RunNotFound", "TenantMismatch"), answer
        assert "Pay 50" not in str(answer) and "transfer" not in str(answer)
    status, listing = call(server.base, "GET", "/api/runs", intruder)
    assert (status, listing["runs"]) == (200, [])
    assert server.snapshot("tenant-1") == before
    assert server.engine.store.list_runs("globex") == []
