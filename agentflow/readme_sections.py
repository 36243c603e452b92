"""Generated sections of a Markdown file: text kept between two marker comments.

The plan-format and CLI references in the README are written by code (from the plan schema
and from the commands), so they cannot drift; this rewrites one such section in place.
"""

from __future__ import annotations

from pathlib import Path


def section(text: str, start: str, end: str) -> str:
    """The text between the markers (empty if they are missing)."""
    return text.partition(start)[2].partition(end)[0]


def update_section(path: Path, start: str, end: str, body: str) -> bool:
    """Put `body` between the markers in `path`; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found_start or not found_end:
        raise SystemExit(f"{path}: markers {start} ... {end} not found")
    new = f"{head}{start}\n{body}{end}{tail}"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True
