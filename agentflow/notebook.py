"""Runs in Jupyter: a handle that re-attaches to a run by id, and an approval panel.

    handle = agentflow.notebook.run("release-7", store="sqlite:///runs.db", tools=TOOLS)
    handle                                   # renders as HTML: status, steps, waits, graph
    agentflow.notebook.approval_panel(handle, by="alice")   # Approve / Reject / Edit buttons

A handle holds only the run id, the engine (its store) and the tools, so after a kernel
restart `run(run_id, ...)` gives the same view; every read goes to the store. Needs
`ipywidgets` (`pip install 'agentflow[notebook]'`).
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from html import escape
from typing import Any

try:
    import ipywidgets as widgets
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError("agentflow.notebook needs ipywidgets: "
                      "pip install 'agentflow[notebook]'") from missing

from agentflow.engine.api import engine_for
from agentflow.engine.engine import DEFAULT_TENANT, Engine, ToolsArg
from agentflow.engine.html import STATUS_COLORS, render_approval_html, render_run_html
from agentflow.engine.results import Pending, RunResult, origin_of
from agentflow.errors import AgentflowError
from agentflow.store import Store
from agentflow.tools import Tool

__all__ = ["ApprovalCard", "ApprovalPanel", "RunHandle", "approval_panel", "run"]


class RunHandle:
    """A run by id on an engine's store, with the tools that resume it. Holds no state of
    the run: `result` and the HTML view read the store each time."""

    def __init__(self, run_id: str, engine: Engine, tools: ToolsArg = None,
                 tenant: str = DEFAULT_TENANT) -> None:
        self.run_id = run_id
        self.engine = engine
        self.tools: list[Tool | Callable[..., Any]] | None = \
            None if tools is None else list(tools)
        self.tenant = tenant

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, {self.engine!r}, tenant={self.tenant!r})"

    @property
    def result(self) -> RunResult:
        """The run's current state, from the store."""
        return self.engine.get_run(self.run_id, tenant=self.tenant)

    def refresh(self, wait: float = 0.0) -> RunResult:
        """The current state; with `wait`, poll up to that many seconds while the run is
        still "running" (executed elsewhere, e.g. by a worker)."""
        deadline = time.monotonic() + wait
        result = self.result
        while result.status == "running" and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            result = self.result
        return result

    def resume(self) -> RunResult:
        """Continue the run with the handle's tools; completed calls are not run again."""
        return self.engine.resume(self.run_id, tools=self.tools, tenant=self.tenant)

    def approve(self, pending_id: str, by: str, comment: str | None = None,
                args: dict[str, Any] | None = None, *, resume: bool = True) -> RunResult:
        """Approve a pending approval (with `args`: edited arguments), then resume."""
        self.engine.approve(self.run_id, pending_id, by=by, comment=comment, args=args,
                            tenant=self.tenant)
        return self.resume() if resume else self.result

    def reject(self, pending_id: str, by: str, reason: str | None = None, *,
               resume: bool = True) -> RunResult:
        """Reject a pending approval, then resume (later steps can read the reason)."""
        self.engine.reject(self.run_id, pending_id, by=by, reason=reason, tenant=self.tenant)
        return self.resume() if resume else self.result

    def plan(self) -> dict[str, Any]:
        """The plan the run is pinned to, as JSON data."""
        return self.engine.plan_of(self.run_id, tenant=self.tenant)

    def _repr_html_(self) -> str:
        return render_run_html(self.result, plan=self.plan())


def run(run_id: str, store: str | Store | Engine | None = None, tools: ToolsArg = None,
        tenant: str = DEFAULT_TENANT) -> RunHandle:
    """A handle on an existing run (`RunNotFound` if there is none), e.g. after a kernel
    restart. `store` is a store URL or path, a `Store`, an `Engine`, or None for the default
    store (AGENTFLOW_STORE, else ./agentflow.db)."""
    handle = RunHandle(run_id, _engine(store), tools, tenant)
    handle.engine.get_run(run_id, tenant=tenant)
    return handle


class ApprovalCard:
    """One pending approval: its exact arguments and the Approve / Reject / Edit controls.
    The handlers are plain methods (`approve`, `reject`, `edit`, `save`)."""

    def __init__(self, panel: ApprovalPanel, pending: Pending) -> None:
        self.panel = panel
        self.pending = pending
        self.approve_button = widgets.Button(description="Approve", button_style="success",
                                             icon="check")
        self.reject_button = widgets.Button(description="Reject", button_style="danger",
                                            icon="times")
        self.edit_button = widgets.Button(description="Edit", icon="edit")
        self.reason = widgets.Text(placeholder="reason (for Reject)")
        args_text = json.dumps(pending.args or {}, indent=2)
        self.editor = widgets.Textarea(value=args_text, rows=min(20, args_text.count("\n") + 1),
                                       layout=widgets.Layout(width="100%"))
        self.save_button = widgets.Button(description="Save & approve",
                                          button_style="success")
        self.edit_box = widgets.VBox([self.editor, self.save_button],
                                     layout=widgets.Layout(display="none"))
        self.message = widgets.HTML("")
        self.approve_button.on_click(lambda _: self.approve())
        self.reject_button.on_click(lambda _: self.reject())
        self.edit_button.on_click(lambda _: self.edit())
        self.save_button.on_click(lambda _: self.save())
        self.box = widgets.VBox(
            [widgets.HTML(render_approval_html(pending)),
             widgets.HBox([self.approve_button, self.reject_button, self.reason,
                           self.edit_button]),
             self.edit_box, self.message],
            layout=widgets.Layout(border="1px solid #8886", padding="4px", margin="4px 0"))

    @property
    def buttons(self) -> list[widgets.Button]:
        return [self.approve_button, self.reject_button, self.edit_button, self.save_button]

    def approve(self) -> None:
        handle = self.panel.handle
        self._decide(lambda: handle.engine.approve(handle.run_id, self.pending.id,
                                                   by=self.panel.by, tenant=handle.tenant))

    def reject(self) -> None:
        handle = self.panel.handle
        reason = self.reason.value.strip() or None
        self._decide(lambda: handle.engine.reject(handle.run_id, self.pending.id,
                                                  by=self.panel.by, reason=reason,
                                                  tenant=handle.tenant))

    def edit(self) -> None:
        """Show (or hide) the arguments editor."""
        hidden = self.edit_box.layout.display == "none"
        self.edit_box.layout.display = "" if hidden else "none"

    def save(self) -> None:
        """Approve with the edited arguments; invalid JSON or arguments the tool's schema
        refuses are shown here and change nothing."""
        try:
            args = json.loads(self.editor.value)
        except ValueError as error:
            self.show_error(f"invalid JSON: {error}")
            return
        handle = self.panel.handle
        self._decide(lambda: handle.engine.approve(handle.run_id, self.pending.id,
                                                   by=self.panel.by, args=args,
                                                   tenant=handle.tenant))

    def show_error(self, text: str) -> None:
        self.message.value = _error_html(text)

    def _decide(self, decision: Callable[[], Pending]) -> None:
        for button in self.buttons:
            button.disabled = True
        try:
            decision()
        except AgentflowError as error:
            self.show_error(str(error))
            for button in self.buttons:
                button.disabled = False
            return
        self.panel.resume()


class ApprovalPanel(widgets.VBox):  # type: ignore[misc]
    """The run's state and one `ApprovalCard` per pending approval (`cards`, by id). A
    decision resumes the run and the panel re-renders from the store."""

    def __init__(self, handle: RunHandle, by: str) -> None:
        super().__init__()
        self.handle = handle
        self.by = by
        self.cards: dict[str, ApprovalCard] = {}
        self.message = widgets.HTML("")
        self.render()

    def resume(self) -> None:
        """Continue the run after a decision; a failure to resume is shown in the panel."""
        try:
            self.handle.resume()
        except AgentflowError as error:
            self.render(f"the decision was recorded, but resuming failed: {error}")
            return
        self.render()

    def render(self, error: str | None = None) -> None:
        """Rebuild from the store's current state."""
        result = self.handle.result
        self.cards = {wait.id: ApprovalCard(self, wait) for wait in result.pending
                      if wait.kind == "approval"}
        self.message.value = _error_html(error) if error else ""
        children: list[widgets.Widget] = [
            widgets.HTML(render_run_html(result, show_pending=False)), self.message]
        if not self.cards:
            children.append(widgets.HTML("<i>No pending approvals.</i>"))
        children.extend(card.box for card in self.cards.values())
        self.children = tuple(children)


def approval_panel(run_or_handle: RunHandle | RunResult | str, by: str | None = None,
                   tools: ToolsArg = None, store: str | Store | Engine | None = None
                   ) -> ApprovalPanel:
    """A widget listing the run's pending approvals with Approve / Reject / Edit buttons;
    a decision is made as `by` (default: the OS user) and the run resumed with `tools`.

    A `RunHandle` brings its own store and tools, and so does a `RunResult` that an engine
    returned (`execute_plan`, `resume`, `Engine.execute`, ...): its engine and the tools it
    ran with. Given a run id, `store` is the store the run lives in (default:
    AGENTFLOW_STORE, else ./agentflow.db). `store=` and `tools=` override either."""
    if isinstance(run_or_handle, RunHandle):
        handle = RunHandle(run_or_handle.run_id,
                           run_or_handle.engine if store is None else _engine(store),
                           run_or_handle.tools if tools is None else tools,
                           run_or_handle.tenant)
    elif isinstance(run_or_handle, RunResult):
        engine, ran_with = origin_of(run_or_handle) or (None, None)
        handle = run(run_or_handle.run_id, store if engine is None or store is not None
                     else engine, ran_with if tools is None else tools,
                     tenant=run_or_handle.tenant_id)
    else:
        handle = run(run_or_handle, store, tools)
    return ApprovalPanel(handle, by or getpass.getuser())


def _engine(store: str | Store | Engine | None) -> Engine:
    return store if isinstance(store, Engine) else engine_for(store)


def _error_html(text: str) -> str:
    return f'<pre style="color:{STATUS_COLORS["failed"]};white-space:pre-wrap">{escape(text)}</pre>'
