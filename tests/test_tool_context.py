"""A tool's context parameter is found whether it is annotated `ToolContext` or
`ToolContext | None`: injected by the executor, never part of the argument schema."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from agentflow import Engine, ToolContext, tool


@tool
def optional_ctx(text: str, ctx: ToolContext | None = None) -> str:
    return f"{text} from {ctx.step_id if ctx else 'nowhere'}"


@tool
def old_style(text: str, ctx: Optional[ToolContext] = None) -> str:  # noqa: UP045
    return f"{text} attempt {ctx.attempt if ctx else 0}"


def test_an_optional_context_is_injected_and_not_in_the_schema(tmp_path: Path) -> None:
    for declared in (optional_ctx, old_style):
        assert declared.context_param == "ctx"
        assert set(declared.input_schema["properties"]) == {"text"}
    result = Engine(str(tmp_path / "runs.db"), tools=[optional_ctx, old_style]).execute({
        "format": "agentflow/v1", "steps": [
            {"id": "a", "tool": "optional_ctx", "args": {"text": "hi"}},
            {"id": "b", "tool": "old_style", "args": {"text": "hi"}}],
        "outputs": {"a": "${steps.a.output}", "b": "${steps.b.output}"}})
    assert result.outputs == {"a": "hi from a", "b": "hi attempt 1"}
