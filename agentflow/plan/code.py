"""Code plans: short restricted-Python programs, as their authors wrote them.

`code_plan(source)` wraps a source string (or reads a `.py` file). Validating and compiling
one is the sandbox's job (`agentflow.sandbox.compile_code_plan`), because what a plan may
say is exactly what the sandbox can run safely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodePlan:
    """A restricted-Python plan as its author wrote it."""

    source: str
    name: str = "code_plan"


def code_plan(source_or_path: str | os.PathLike[str], name: str | None = None) -> CodePlan:
    """A code plan from source text, or from a `.py` file when given the path of one.

    A path-like object must name an existing file; a string is read as a path only when it
    is a single line ending in `.py` that names an existing file, otherwise it is the source.
    """
    text = os.fspath(source_or_path)
    path = Path(text)
    is_path = isinstance(source_or_path, os.PathLike) or (
        "\n" not in text and text.endswith(".py") and path.is_file())
    if not is_path:
        return CodePlan(source=text, name=name or "code_plan")
    return CodePlan(source=path.read_text(encoding="utf-8"), name=name or path.stem)
