"""The ASGI app of `agentflow serve`: the JSON API under /api, the console and the pages
of signed approval links.

Routes stay thin: they parse the request, call one engine function and return its result
as JSON. Errors are mapped to HTTP statuses in one place (`statuses.STATUS_OF`, here
`_api_error`), so
every route answers the same error with the same status. Every run route is scoped by the
tenant of the caller's token: another tenant's run is simply not found (404).
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agentflow.engine import Engine
from agentflow.engine.tokens import Role, authenticate, require_role
from agentflow.errors import AgentflowError, PlanMismatch, PlanValidationError, TenantMismatch
from agentflow.plan import compile_plan, plan_schema
from agentflow.plan.code import code_plan
from agentflow.sandbox.compiler import compile_code_plan
from agentflow.store import TokenRecord
from agentflow.tools import Tool, tool_registry
from agentflow.web import pages
from agentflow.web.statuses import status_of
from agentflow.web.views import (
    decode_cursor,
    encode_cursor,
    issues_view,
    journal_view,
    pending_view,
    run_detail,
    run_summary,
)
from agentflow.worker import Worker


def _api_error(request: Request, error: Exception) -> JSONResponse:
    body: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
    if isinstance(error, PlanValidationError):
        body["issues"] = issues_view(error)
    return JSONResponse(body, status_code=status_of(error))


class Approval(BaseModel):
    comment: str | None = None
    args: dict[str, Any] | None = Field(
        None, description="Edited arguments for the tool call (checked against its schema).")


class Rejection(BaseModel):
    reason: str | None = None


class Event(BaseModel):
    name: str = Field(min_length=1)
    payload: Any = None


class Cancellation(BaseModel):
    reason: str = "cancelled"


class PlanBody(BaseModel):
    plan: dict[str, Any] | None = Field(None, description="A JSON step-graph plan.")
    code: str | None = Field(None, description="A code plan's restricted-Python source.")
    name: str | None = Field(None, description="The code plan's name.")


class Submission(PlanBody):
    inputs: dict[str, Any] | None = None
    run_id: str | None = None
    tenant: str | None = Field(None, description="Must be the token's tenant if given.")


_PLAN_HASH = re.compile(r"[0-9a-f]{64}")


def _caller(request: Request, role: Role) -> TokenRecord:
    """The live token of the request's `Authorization: Bearer` header, if it has `role`."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    engine: Engine = request.app.state.engine
    record = authenticate(engine.store, value.strip() if scheme.lower() == "bearer" else None)
    require_role(record, role)
    return record


def _viewer(request: Request) -> TokenRecord:
    return _caller(request, "viewer")


def _approver(request: Request) -> TokenRecord:
    return _caller(request, "approver")


def _admin(request: Request) -> TokenRecord:
    return _caller(request, "admin")


Viewer = Annotated[TokenRecord, Depends(_viewer)]
Approver = Annotated[TokenRecord, Depends(_approver)]
Admin = Annotated[TokenRecord, Depends(_admin)]


def create_app(engine: Engine, *, tools: list[Tool] | None = None,
               worker_poll: float | None = 0.5) -> FastAPI:
    """The app on `engine`. With `worker_poll`, a `Worker` thread runs submitted runs and
    resumes due ones (a decided approval, an event, a timer) with `tools`, looking for work
    at least every that many seconds."""
    registry = tool_registry(tools)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if worker_poll:
            worker = Worker(engine, tools=list(registry.values()), poll=worker_poll)
            thread = threading.Thread(target=worker.run, args=(stop,), name="agentflow-worker",
                                      daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=60)

    app = FastAPI(title="agentflow", summary="Runs and approvals of agentflow plans.",
                  version="1", lifespan=lifespan)
    app.add_exception_handler(AgentflowError, _api_error)
    app.add_exception_handler(ValueError, _api_error)

    app.state.engine = engine

    @app.get("/api/runs", tags=["runs"])
    def list_runs(caller: Viewer, status: str | None = None, plan: str | None = None,
                  tenant: str | None = None, limit: int = 50,
                  cursor: str | None = None) -> dict[str, Any]:
        """The tenant's runs, newest first; `plan` is a plan's name or its full hash; pass
        `next_cursor` back as `cursor` for the next page."""
        if tenant is not None and tenant != caller.tenant_id:
            raise TenantMismatch(f"tenant {tenant!r} is not this token's tenant")
        if not 1 <= limit <= 500:
            raise ValueError(f"limit must be between 1 and 500, not {limit}")
        by_hash = plan is not None and _PLAN_HASH.fullmatch(plan) is not None
        runs = engine.list_runs(tenant=caller.tenant_id, status=status, limit=limit + 1,
                                plan_hash=plan if by_hash else None,
                                plan_name=None if by_hash else plan,
                                before=decode_cursor(cursor) if cursor else None)
        page = runs[:limit]
        return {"runs": [run_summary(run) for run in page],
                "next_cursor": encode_cursor(page[-1]) if len(runs) > limit else None}

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str, caller: Viewer) -> dict[str, Any]:
        """The run with its steps, pending waits, outputs and plan graph."""
        result = engine.get_run(run_id, tenant=caller.tenant_id)
        record = engine.store.get_run(caller.tenant_id, run_id)
        try:
            plan: dict[str, Any] | None = engine.plan_of(run_id, tenant=caller.tenant_id)
        except PlanMismatch:
            plan = None
        return run_detail(result, plan, record.inputs if record else {})

    @app.get("/api/runs/{run_id}/journal", tags=["runs"])
    def get_journal(run_id: str, caller: Viewer) -> list[dict[str, Any]]:
        """Every journal entry of the run, in order."""
        return journal_view(engine.journal(run_id, tenant=caller.tenant_id))

    @app.post("/api/runs/{run_id}/approvals/{pending_id}/approve", tags=["decisions"])
    def approve(run_id: str, pending_id: str, body: Approval,
                caller: Approver) -> dict[str, Any]:
        """Approve as the token's holder (its name), optionally with edited arguments."""
        return pending_view(engine.approve(run_id, pending_id, by=caller.name,
                                           comment=body.comment, args=body.args,
                                           tenant=caller.tenant_id))

    @app.post("/api/runs/{run_id}/approvals/{pending_id}/reject", tags=["decisions"])
    def reject(run_id: str, pending_id: str, body: Rejection,
               caller: Approver) -> dict[str, Any]:
        """Reject as the token's holder; `reason` is data later steps can read."""
        return pending_view(engine.reject(run_id, pending_id, by=caller.name,
                                          reason=body.reason, tenant=caller.tenant_id))

    @app.post("/api/runs/{run_id}/events", tags=["decisions"])
    def send_event(run_id: str, body: Event, caller: Approver) -> dict[str, Any]:
        """Deliver an event to the run; kept until a `wait_for_event` takes it."""
        seq = engine.send_event(run_id, body.name, body.payload, tenant=caller.tenant_id)
        return {"run_id": run_id, "name": body.name, "seq": seq}

    @app.post("/api/runs", tags=["runs"])
    def submit(body: Submission, caller: Admin) -> dict[str, Any]:
        """Validate a plan and queue its run for a worker (this server's, with --tools);
        the same `run_id` again changes nothing."""
        if body.tenant is not None and body.tenant != caller.tenant_id:
            raise TenantMismatch(f"tenant {body.tenant!r} is not this token's tenant")
        run_id = engine.submit(_plan(body), tools=list(registry.values()), inputs=body.inputs,
                               run_id=body.run_id, tenant=caller.tenant_id)
        return get_run(run_id, caller)

    @app.post("/api/runs/{run_id}/cancel", tags=["runs"])
    def cancel(run_id: str, body: Cancellation, caller: Admin) -> dict[str, Any]:
        """Stop the run for good."""
        engine.cancel(run_id, reason=body.reason, tenant=caller.tenant_id)
        return get_run(run_id, caller)

    @app.post("/api/plans/validate", tags=["plans"])
    def validate(body: PlanBody, caller: Viewer) -> dict[str, Any]:
        """Every issue of the plan against the server's tools (`valid` false, 200)."""
        plan = _plan(body)
        try:
            compiled = (compile_code_plan(plan, registry) if body.code is not None
                        else compile_plan(plan, registry))
        except PlanValidationError as error:
            return {"valid": False, "issues": issues_view(error)}
        return {"valid": True, "plan_hash": compiled.plan_hash, "issues": []}

    @app.get("/api/plans/schema", tags=["plans"])
    def schema(caller: Viewer) -> dict[str, Any]:
        """The JSON Schema of the plan format."""
        return plan_schema()

    pages.add_pages(app, engine)
    return app


def _plan(body: PlanBody) -> Any:
    if (body.plan is None) == (body.code is None):
        raise ValueError("give exactly one of 'plan' (a JSON step graph) and 'code' "
                         "(a code plan's source)")
    return body.plan if body.code is None else code_plan(body.code, body.name)

