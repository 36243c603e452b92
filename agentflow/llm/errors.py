"""Errors of the LLM layer, in the `AgentflowError` tree."""

from __future__ import annotations

from agentflow.errors import AgentflowError, ValidationIssue


class PlanningFailed(AgentflowError):
    """The model did not produce a valid plan within the repair rounds.

    `issues` are the validation issues of the last answer, `responses` the raw content of
    every answer in order (the first, then one per repair round).
    """

    def __init__(self, issues: list[ValidationIssue], responses: list[str]) -> None:
        self.issues = list(issues)
        self.responses = list(responses)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"no valid plan after {len(self.responses)} answer(s); the last one "
                         f"has {len(self.issues)} issue(s):\n{lines}")


class LLMResponseError(AgentflowError):
    """The model's answer cannot be used: not JSON, not matching the requested schema, empty,
    refused, or a malformed response body. `content` is the raw answer (None if there was
    none). A step's retry policy does not retry it by default: asking again rarely helps."""

    def __init__(self, message: str, content: str | None = None) -> None:
        self.content = content
        super().__init__(message)
