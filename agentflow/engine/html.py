"""HTML views of runs for Jupyter: a status badge, outputs, the error, a step table, pending
approvals with their exact arguments, and the plan as a Mermaid graph.

Pure functions, state in, text out. Every value is escaped: outputs, errors and arguments
come from tools and models and may contain markup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from html import escape
from typing import Any

from agentflow.engine.results import Pending, RunResult, StepResult
from agentflow.plan.diagram import to_mermaid

STATUS_COLORS = {
    "completed": "#1a7f37", "succeeded": "#1a7f37", "approved": "#1a7f37",
    "failed": "#cf222e", "cancelled": "#cf222e", "rejected": "#cf222e", "expired": "#cf222e",
    "waiting": "#9a6700", "running": "#0969da", "skipped": "#6e7781", "pending": "#6e7781",
}
_TABLE = 'style="border-collapse:collapse;margin:4px 0"'
_CELL = 'style="padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #8884"'
_PRE = 'style="margin:0;white-space:pre-wrap;word-break:break-word"'


def render_run_html(result: RunResult, *, plan: Mapping[str, Any] | None = None,
                    show_pending: bool = True, max_chars: int = 2000) -> str:
    """A run as HTML: id and status, outputs, error, steps, pending waits and, given the
    run's pinned `plan` (`Engine.plan_of`), its graph. `max_chars` cuts the outputs."""
    parts = [f'<div class="agentflow-run"><div><b>run</b> <code>{escape(result.run_id)}</code>'
             f" {status_badge(result.status)}</div>"]
    if result.outputs is not None:
        parts.append(f"<div><b>outputs</b>{_pre(pretty_json(result.outputs, max_chars))}</div>")
    if result.error is not None:
        parts.append(f'<div style="color:{STATUS_COLORS["failed"]}"><b>error</b>'
                     f"{_pre(str(result.error))}</div>")
    if result.steps:
        parts.append(render_steps_html(result.steps))
    if show_pending and result.pending:
        parts.append(render_pending_html(result.pending))
    if plan is not None:
        parts.append(render_plan_html(plan))
    parts.append("</div>")
    return "".join(parts)


def render_steps_html(steps: Mapping[str, StepResult], *, max_chars: int = 200) -> str:
    """The step table: what the step called (and from which code-plan line), status,
    attempts, foreach items, start time, duration, output or error (cut; a tool's traceback
    folded under it)."""
    rows = []
    for sid, step in steps.items():
        if step.error is not None:
            what = f"{step.error_type or 'Error'}: {step.error}"
            shown = (f'<span style="color:{STATUS_COLORS["failed"]}">'
                     f"{escape(_cut(what, max_chars))}</span>")
            if step.traceback:
                shown += f"<details><summary>traceback</summary>{_pre(step.traceback)}</details>"
        elif step.output is not None:
            shown = f"<code>{escape(_cut(compact_json(step.output), max_chars))}</code>"
        else:
            shown = ""
        cells = [f"<code>{escape(sid)}</code>", escape(call_label(step)),
                 status_badge(step.status), str(step.attempts),
                 "" if step.items is None else str(step.items),
                 escape(clock(step.started_at)), escape(duration(step.started_at,
                                                                 step.finished_at)), shown]
        rows.append("<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in cells) + "</tr>")
    return _table(("step", "call", "status", "attempts", "items", "started", "took",
                   "output / error"), rows)


def call_label(step: StepResult) -> str:
    """What a step called and, in a code plan, from where: `classify_issue, line 20`."""
    if step.tool is None:
        return ""
    return step.tool if step.line is None else f"{step.tool}, line {step.line}"


def render_pending_html(pending: Sequence[Pending], *, now: float | None = None) -> str:
    """What a waiting run waits for; an approval shows its tool and exact (uncut) arguments."""
    rows = []
    for wait in pending:
        args = _pre(pretty_json(wait.args)) if wait.args is not None else ""
        cells = [f"<code>{escape(wait.id)}</code>", escape(wait.kind),
                 f"<code>{escape(wait.step_id or '-')}</code>",
                 f"<code>{escape(wait.tool or '-')}</code>", args,
                 escape(wait.prompt or ""), escape(_expiry(wait.expires_at, now))]
        rows.append("<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in cells) + "</tr>")
    title = "<div><b>pending</b></div>"
    return title + _table(("id", "kind", "step", "tool", "args", "prompt", "expires"), rows)


def render_approval_html(wait: Pending, *, now: float | None = None) -> str:
    """One approval on its own: prompt, step, tool, id, expiry and the exact arguments."""
    facts = [("step", wait.step_id or "-"), ("tool", wait.tool or "-"), ("id", wait.id),
             ("expires", _expiry(wait.expires_at, now))]
    listed = " · ".join(f"{name} <code>{escape(value)}</code>" for name, value in facts)
    args = _pre(pretty_json(wait.args)) if wait.args is not None else ""
    return (f'<div class="agentflow-approval"><div><b>{escape(wait.prompt or "Approve?")}</b>'
            f"</div><div>{listed}</div>{args}</div>")


def render_plan_html(plan: Mapping[str, Any]) -> str:
    """A graph plan as a `<pre class="mermaid">` block (drawn where Mermaid is loaded, else
    readable text); a code plan as its source."""
    if "steps" in plan:
        return (f'<div><b>plan</b> {escape(str(plan.get("name", "")))}'
                f'<pre class="mermaid">{escape(to_mermaid(plan))}</pre></div>')
    source = str(plan.get("source", ""))
    return (f'<details><summary><b>plan</b> {escape(str(plan.get("name") or ""))} '
            f"(code)</summary>{_pre(source)}</details>")


def status_badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#6e7781")
    return (f'<span class="agentflow-status" style="background:{color};color:#fff;'
            f'padding:1px 6px;border-radius:8px;font-size:0.85em">{escape(status)}</span>')


def pretty_json(value: Any, max_chars: int | None = None) -> str:
    """Indented JSON of `value` (not escaped), cut to `max_chars` when given."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if max_chars is None else _cut(text, max_chars)


def compact_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                          default=str, separators=(",", ":"))


def clock(timestamp: float | None) -> str:
    """Local time to the millisecond, with the date when it is not today."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp)
    shown = moment.strftime("%H:%M:%S.%f")[:-3]
    return shown if moment.date() == date.today() else f"{moment:%Y-%m-%d} {shown}"


def duration(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{end - start:.2f}s"


def relative(timestamp: float | None, now: float | None = None) -> str:
    """`in 3h`, `5m ago` ...; `-` for no time."""
    if not timestamp:
        return "-"
    delta = timestamp - (time.time() if now is None else now)
    seconds = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    else:
        amount = f"{int(seconds)}s"
    return f"in {amount}" if delta >= 0 else f"{amount} ago"


def _expiry(expires_at: float | None, now: float | None) -> str:
    return "-" if expires_at is None else f"{clock(expires_at)} ({relative(expires_at, now)})"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _pre(text: str) -> str:
    return f"<pre {_PRE}>{escape(text)}</pre>"


def _table(headers: Sequence[str], rows: list[str]) -> str:
    head = "".join(f"<th {_CELL}>{escape(h)}</th>" for h in headers)
    return f"<table {_TABLE}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
