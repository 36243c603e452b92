"""The CLI reference as Markdown, generated from the commands themselves so the README's
copy can never drift from `--help`.

`python -m agentflow.cli.reference README.md` rewrites the text between the markers
`<!-- cli-reference:start -->` and `<!-- cli-reference:end -->`; a test fails when the
README's copy differs from what this module generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from agentflow.cli.commands import app
from agentflow.readme_sections import update_section

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def _option(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{str(param.name).upper()}`"
    return ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])


def reference_markdown() -> str:
    """One section per command (and per subcommand of a group such as `tokens`): what it
    does (its docstring) and its arguments."""
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    lines: list[str] = []
    for name, command in _flatten(commands, "agentflow"):
        lines += [f"#### `{name}`", ""]
        lines += [" ".join(paragraph.split()) + "\n"
                  for paragraph in (command.help or "").split("\n\n")]
        rows = [f"| {_option(param)} | "
                f"{' '.join((getattr(param, 'help', None) or '').split())} |"
                for param in command.params if param.name != "help"]
        if rows:
            lines += ["| argument / option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


def _flatten(commands: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """(full name, command) for each command, a group followed by its subcommands."""
    found: list[tuple[str, Any]] = []
    for name in sorted(commands):
        found.append((f"{prefix} {name}", commands[name]))
        found += _flatten(getattr(commands[name], "commands", {}), f"{prefix} {name}")
    return found


def update(path: Path) -> bool:
    """Rewrite the reference between the markers in `path`; True if the file changed."""
    return update_section(path, START, END, reference_markdown())


if __name__ == "__main__":
    for name in sys.argv[1:] or ["README.md"]:
        print(f"{name}: {'updated' if update(Path(name)) else 'up to date'}")
