"""The plan-format reference as Markdown, generated from `plan_schema()` so the README's
reference can never drift from the models.

`python -m agentflow.plan.schema_docs README.md` rewrites the text between the markers
`<!-- plan-reference:start -->` and `<!-- plan-reference:end -->`; a test fails when the
README's copy differs from what this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agentflow.plan.schema import plan_schema
from agentflow.readme_sections import update_section

START = "<!-- plan-reference:start -->"
END = "<!-- plan-reference:end -->"
SECTIONS = (("Plan", None), ("Step", "Step"), ("RetryPolicy", "RetryPolicy"),
            ("ApprovalSpec", "ApprovalSpec"))


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        kinds = [_type_of(option) for option in schema["anyOf"] if option.get("type") != "null"]
        return " or ".join(dict.fromkeys(kinds))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    return str(kind)


def _row(name: str, schema: dict[str, Any], required: set[str]) -> str:
    default = "required" if name in required else (
        f"`{json.dumps(schema['default'])}`" if "default" in schema else "")
    text = " ".join(str(schema.get("description", "")).split()).replace("|", "\\|")
    return f"| `{name}` | {_type_of(schema)} | {default} | {text} |"


def reference_markdown() -> str:
    """One table per object of the format: field, type, default, meaning."""
    schema = plan_schema()
    definitions = schema.get("$defs", {})
    lines: list[str] = []
    for title, key in SECTIONS:
        node = schema if key is None else definitions[key]
        lines += [f"#### {title}", "", " ".join(str(node.get("description", "")).split()), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        required = set(node.get("required", []))
        lines += [_row(name, field, required) for name, field in node["properties"].items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update(path: Path) -> bool:
    """Rewrite the reference between the markers in `path`; True if the file changed."""
    return update_section(path, START, END, reference_markdown())


if __name__ == "__main__":
    for name in sys.argv[1:] or ["README.md"]:
        print(f"{name}: {'updated' if update(Path(name)) else 'up to date'}")
