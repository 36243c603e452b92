"""The HTML the app serves: the console (static pages that call the JSON API) and the
pages of signed approval links (rendered here: the link itself is the credential, so they
need no token).

A link page shows exactly what will be decided; its form POSTs the decision back to the
same URL. Every refusal is a page that says why, with the HTTP status of that error.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from agentflow.engine import Engine
from agentflow.engine.html import render_approval_html
from agentflow.engine.links import LINK_PATH, check_link, decide_by_link
from agentflow.errors import AgentflowError, LinkRefused
from agentflow.web.statuses import status_of

STATIC = Path(str(files("agentflow.web") / "static"))
_REFUSED_TITLES = {"tampered": "This link was tampered with",
                   "expired": "This link has expired",
                   "changed": "The arguments changed since this link was made"}


def add_pages(app: FastAPI, engine: Engine) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def runs_page() -> FileResponse:
        return FileResponse(STATIC / "runs.html")

    @app.get("/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: str) -> FileResponse:
        return FileResponse(STATIC / "run.html")

    @app.get(LINK_PATH, include_in_schema=False)
    def open_link(request: Request) -> HTMLResponse:
        """What the link will decide, and the form that decides it."""
        try:
            link, pending = check_link(engine.store, request.query_params)
        except AgentflowError as error:
            return _refused(error)
        form = (f'<form method="post" action="{escape(str(request.url))}">'
                '<label>Comment or reason <input name="comment" id="comment"></label>'
                '<button name="decision" value="approve" id="approve">Approve</button>'
                '<button name="decision" value="reject" id="reject">Reject</button></form>')
        return _page("Decide an approval", (
            f"<p>Run <code>{escape(link.run)}</code> of tenant <code>{escape(link.tenant)}"
            f"</code> waits for <b>{escape(link.approver)}</b> to decide:</p>"
            f"{render_approval_html(pending)}{form}"))

    @app.post(LINK_PATH, include_in_schema=False)
    async def decide_link(request: Request) -> HTMLResponse:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        decision = form.get("decision")
        if decision not in ("approve", "reject"):
            return _page("Nothing decided", "<p>The form named no decision (approve or "
                         "reject).</p>", 422)
        try:
            decided = decide_by_link(engine, request.query_params,
                                     approve=decision == "approve",
                                     comment=form.get("comment") or None)
        except AgentflowError as error:
            return _refused(error)
        run_id = request.query_params.get("run", "")
        return _page(decided.status.capitalize(), (
            f'<p id="outcome"><b>{escape(decided.status)}</b>: <code>{escape(decided.id)}'
            f"</code> of run <code>{escape(run_id)}</code> is decided; the run continues on "
            "its own.</p>"))


def _refused(error: AgentflowError) -> HTMLResponse:
    reason = error.reason if isinstance(error, LinkRefused) else type(error).__name__
    title = _REFUSED_TITLES.get(reason, "This link cannot decide the approval")
    return _page(title, f'<p class="refused" id="refused" data-reason="{escape(reason)}">'
                        f"{escape(str(error))}</p><p>Nothing was decided.</p>",
                 status_of(error))


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        '<link rel="stylesheet" href="/static/console.css"></head>'
        f'<body class="link-page"><h1>{escape(title)}</h1>{body}</body></html>',
        status_code=status)
