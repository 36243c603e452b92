"""Tools for the CLI tests: a deploy with a schema to get wrong, a notifier, a failure."""

from __future__ import annotations

from agentflow import tool


@tool
def deploy(target: str, replicas: int = 1) -> dict[str, object]:
    """Deploy to `target` with `replicas` instances."""
    return {"target": target, "replicas": replicas}


@tool
def notify(text: str) -> str:
    """Post a message."""
    return text


@tool
def explode(message: str) -> str:
    """Always fail."""
    raise RuntimeError(message)


TOOLS = [deploy, notify, explode]
