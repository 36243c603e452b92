"""Stand-ins for the demo tools plans/triage.py needs and agentflow.demo does not have yet,
with the signatures listed at the top of that plan. Deterministic: issue n is stale when n is
even. `CALLS` records every execution."""

from __future__ import annotations

from typing import Any

from agentflow.demo import notify
from agentflow.tools import Tool, tool

CALLS: list[tuple[str, Any]] = []


@tool(side_effects=False)
def list_issues(repo: str, label: str = "bug") -> list[dict[str, Any]]:
    CALLS.append(("list_issues", repo))
    return [{"number": n, "title": f"{label} {n}", "body": f"broken in {repo}",
             "days_inactive": 30 * (n % 2 == 0)} for n in (1, 2, 3, 4)]


@tool(side_effects=False)
def classify_issue(number: int, title: str, body: str, days_inactive: int) -> dict[str, Any]:
    CALLS.append(("classify_issue", number))
    return {"label": "crash" if number % 3 else "ui", "stale": days_inactive >= 30}


@tool
def label_issue(number: int, label: str) -> dict[str, Any]:
    CALLS.append(("label_issue", number))
    return {"number": number, "label": label}


@tool
def close_issue(number: int, comment: str) -> dict[str, Any]:
    CALLS.append(("close_issue", number))
    return {"number": number, "closed": True}


TOOLS: list[Tool] = [list_issues, classify_issue, label_issue, close_issue, notify]
