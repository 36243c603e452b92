"""Demo tools for the example plans in `plans/`: deterministic, offline, a little slow.

They stand in for a real CI system and a real web search so the examples run anywhere
(`agentflow run plans/ci_pipeline.json --tools agentflow.demo`). Results are derived from
the arguments by hashing, so a resumed run sees the same values as an uninterrupted one.
`AGENTFLOW_DEMO_DELAY` (seconds, default 0.05) sets how long each call takes.
"""

from __future__ import annotations

import hashlib
import os
import time

from typing_extensions import TypedDict

from agentflow.tools import Tool, ToolContext, tool


def _pause() -> None:
    time.sleep(float(os.environ.get("AGENTFLOW_DEMO_DELAY", "0.05")))


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class Checkout(TypedDict):
    sha: str
    ref: str
    pythons: list[str]


class LintReport(TypedDict):
    ok: bool
    warnings: int


class TestReport(TypedDict):
    python: str
    passed: int
    failed: int


class Build(TypedDict):
    artifact: str
    size_bytes: int


class Deployment(TypedDict):
    url: str
    environment: str


class Issue(TypedDict):
    number: int
    title: str
    body: str
    days_inactive: int


class Verdict(TypedDict):
    label: str
    stale: bool


class SearchHit(TypedDict):
    url: str
    title: str


class Page(TypedDict):
    url: str
    text: str


class Summary(TypedDict):
    summary: str
    sources: int


@tool(side_effects=False)
def checkout(ref: str) -> Checkout:
    """Resolve a git ref to a commit and list the Python versions its test matrix needs."""
    _pause()
    return {"sha": _digest("sha", ref)[:12], "ref": ref,
            "pythons": ["3.10", "3.11", "3.12", "3.13"]}


@tool(side_effects=False)
def lint(sha: str) -> LintReport:
    """Run the linters on a commit."""
    _pause()
    return {"ok": True, "warnings": int(_digest("lint", sha)[:2], 16) % 5}


@tool(side_effects=False,
      retry={"max_attempts": 3, "initial_delay": 0.1, "retry_on": ["ConnectionError"]})
def run_tests(python: str, sha: str, ctx: ToolContext) -> TestReport:
    """Run the test suite on one Python version. Python 3.12 is flaky on its first attempt,
    to show retries (the tool's own retry policy, which a plan step may override)."""
    _pause()
    if python == "3.12" and ctx.attempt == 1:
        raise ConnectionError("test runner lost its connection (flaky on first attempt)")
    return {"python": python, "passed": 100 + int(_digest(python, sha)[:2], 16) % 50,
            "failed": 0}


@tool(side_effects=False)
def build(sha: str) -> Build:
    """Build the release artifact of a commit."""
    _pause()
    return {"artifact": f"dist/app-{sha}.tar.gz", "size_bytes": 1000 + int(_digest(sha)[:4], 16)}


@tool
def deploy(artifact: str, environment: str, ctx: ToolContext) -> Deployment:
    """Deploy an artifact. Real deploy tools pass ctx.idempotency_key to their API."""
    _pause()
    return {"url": f"https://{environment}.example.test/{_digest(artifact)[:8]}",
            "environment": environment}


@tool
def notify(text: str) -> dict[str, str]:
    """Post a message to the team channel."""
    _pause()
    return {"sent": text}


@tool(side_effects=False)
def web_search(query: str, limit: int = 3) -> list[SearchHit]:
    """Search the web (offline stand-in: deterministic hits)."""
    _pause()
    return [{"url": f"https://source{i}.example.test/{_digest(query, i)[:8]}",
             "title": f"{query.title()} - source {i}"} for i in range(1, limit + 1)]


@tool(side_effects=False)
def fetch_page(url: str) -> Page:
    """Fetch a page's text (offline stand-in)."""
    _pause()
    return {"url": url, "text": f"Findings from {url}: key fact {_digest(url)[:6]}."}


@tool(side_effects=False)
def summarize(question: str, pages: list[Page]) -> Summary:
    """Summarise pages into an answer (offline stand-in for an LLM call)."""
    _pause()
    facts = "; ".join(page["text"].split(": ", 1)[-1] for page in pages)
    return {"summary": f"{question} -> {facts}", "sources": len(pages)}


@tool(side_effects=False)
def list_issues(repo: str, label: str = "bug") -> list[Issue]:
    """List a repository's open issues with a label (offline stand-in: five issues)."""
    _pause()
    return [{"number": n, "title": f"{label}: {_digest(repo, n)[:6]}",
             "body": f"Reported against {repo}.", "days_inactive": 15 * (n % 3)}
            for n in range(1, 6)]


@tool(side_effects=False)
def classify_issue(number: int, title: str, body: str, days_inactive: int) -> Verdict:
    """Classify an issue and tell whether it is stale (inactive for 30 days or more)."""
    _pause()
    labels = ("crash", "ui", "docs")
    return {"label": labels[int(_digest(number, title)[:2], 16) % 3],
            "stale": days_inactive >= 30}


@tool
def label_issue(number: int, label: str) -> dict[str, str | int]:
    """Put a label on an issue."""
    _pause()
    return {"number": number, "label": label}


@tool
def close_issue(number: int, comment: str) -> dict[str, bool | int]:
    """Close an issue with a comment."""
    _pause()
    return {"number": number, "closed": True}


TOOLS: list[Tool] = [checkout, lint, run_tests, build, deploy, notify, web_search, fetch_page,
                     summarize, list_issues, classify_issue, label_issue, close_issue]
