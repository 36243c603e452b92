"""A tool may take any parameter name, also the ones pydantic reserves for itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentflow import ToolArgumentsError, code_plan, execute_plan, tool

RESERVED = ["model_config", "model_fields", "model_dump", "model_validate", "schema", "json",
            "dict", "copy", "validate", "construct", "fields", "_private"]


@tool
def configure(model_config: dict[str, Any], model_fields: list[str], model_dump: str,
              model_validate: bool, schema: str, json: int, dict: str, copy: str,
              validate: str, construct: str, fields: str, _private: int = 7) -> dict[str, Any]:
    """Echo every argument back."""
    return {"model_config": model_config, "model_fields": model_fields,
            "model_dump": model_dump, "model_validate": model_validate, "schema": schema,
            "json": json, "dict": dict, "copy": copy, "validate": validate,
            "construct": construct, "fields": fields, "_private": _private}


ARGS: dict[str, Any] = {"model_config": {"extra": "allow"}, "model_fields": ["a"],
                        "model_dump": "d", "model_validate": True, "schema": "s", "json": 3,
                        "dict": "x", "copy": "c", "validate": "v", "construct": "k",
                        "fields": "f"}


def test_every_reserved_name_is_in_the_schema() -> None:
    schema = configure.input_schema
    assert list(schema["properties"]) == RESERVED
    assert schema["required"] == RESERVED[:-1]
    assert schema["properties"]["model_config"]["type"] == "object"
    assert schema["properties"]["_private"]["default"] == 7


@pytest.mark.parametrize("name", RESERVED[:-1])
def test_a_reserved_name_is_validated_like_any_other(name: str) -> None:
    with pytest.raises(ToolArgumentsError, match=f"'{name}' is a required property"):
        configure.prepare_arguments({k: v for k, v in ARGS.items() if k != name}, "t")


def test_graph_and_code_plans_pass_reserved_names_through(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    graph = execute_plan({"name": "g", "steps": [{"id": "a", "tool": "configure",
                                                  "args": ARGS}]}, tools=[configure],
                         store=store)
    assert graph.steps["a"].output == {**ARGS, "_private": 7}
    source = "return configure(" + ", ".join(f"{k}={v!r}" for k, v in ARGS.items()) + ")"
    code = execute_plan(code_plan(source), tools=[configure], store=store)
    assert code.status == "completed", code.error
    assert code.outputs == {**ARGS, "_private": 7}
