"""What `execute_plan` accepts (issue 2): plan as dict, JSON string, .json path (str and
Path) or Plan model; store as a path, a `sqlite:///` URL, `AGENTFLOW_STORE` or the
./agentflow.db default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentflow import Plan, PlanValidationError, execute_plan, get_run, tool
from tests.support.store_rows import row_counts


@tool
def greet(name: str) -> str:
    return f"hello {name}"


PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "greeting",
    "inputs": {"type": "object", "properties": {"who": {"type": "string"}},
               "required": ["who"]},
    "steps": [{"id": "hi", "tool": "greet", "args": {"name": "${inputs.who}"}}],
    "outputs": {"text": "${steps.hi.output}"},
}


def plan_forms(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "greeting.json"
    path.write_text(json.dumps(PLAN), encoding="utf-8")
    return {"dict": PLAN, "json-string": json.dumps(PLAN), "str-path": str(path),
            "pathlib": path, "model": Plan.model_validate(PLAN)}


@pytest.mark.parametrize("form", ["dict", "json-string", "str-path", "pathlib", "model"])
def test_plan_forms_run_the_same_plan(tmp_path: Path, form: str) -> None:
    db = str(tmp_path / "runs.db")
    result = execute_plan(plan_forms(tmp_path)[form], tools=[greet], inputs={"who": "ada"},
                          run_id=form, store=db)
    assert (result.status, result.outputs) == ("completed", {"text": "hello ada"})
    reference = execute_plan(PLAN, tools=[greet], inputs={"who": "ada"}, run_id="ref", store=db)
    assert result.plan_hash == reference.plan_hash


def test_same_plan_in_another_form_resumes_the_run_instead_of_conflicting(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "runs.db")
    forms = plan_forms(tmp_path)
    first = execute_plan(forms["dict"], tools=[greet], inputs={"who": "x"}, run_id="r",
                         store=db)
    for form in ("json-string", "str-path", "pathlib", "model"):
        assert execute_plan(forms[form], tools=[greet], inputs={"who": "x"}, run_id="r",
                            store=db) == first


def test_missing_plan_file_is_a_validation_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with pytest.raises(PlanValidationError, match=r"nowhere\.json"):
        execute_plan(str(tmp_path / "nowhere.json"), tools=[greet], store=str(db))
    assert row_counts(db) == {"runs": 0, "plans": 0, "journal": 0}


def test_plan_file_with_broken_json_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"steps": [', encoding="utf-8")
    with pytest.raises(PlanValidationError, match="not valid JSON"):
        execute_plan(path, tools=[greet], store=str(tmp_path / "runs.db"))


def test_overlong_path_like_string_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(PlanValidationError):
        execute_plan("x" * 300 + ".json", tools=[greet], store=str(tmp_path / "runs.db"))


# -- stores -------------------------------------------------------------------------------


def test_store_as_absolute_sqlite_url(tmp_path: Path) -> None:
    db = tmp_path / "url.db"
    result = execute_plan(PLAN, tools=[greet], inputs={"who": "u"}, run_id="u",
                          store=f"sqlite:///{db}")
    assert result.status == "completed"
    assert row_counts(db)["runs"] == 1
    assert get_run("u", store=str(db)).outputs == {"text": "hello u"}


def test_store_as_relative_sqlite_url_and_pathlib_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    execute_plan(PLAN, tools=[greet], inputs={"who": "r"}, run_id="rel",
                 store="sqlite:///sub.db")
    assert row_counts(tmp_path / "sub.db")["runs"] == 1
    assert get_run("rel", store=tmp_path / "sub.db").outputs == {"text": "hello r"}  # type: ignore[arg-type]


def test_agentflow_store_env_sets_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTFLOW_STORE", "sqlite:///from-env.db")
    result = execute_plan(PLAN, tools=[greet], inputs={"who": "e"}, run_id="env")
    assert result.status == "completed"
    assert row_counts(tmp_path / "from-env.db")["runs"] == 1
    assert not (tmp_path / "agentflow.db").exists()
    assert get_run("env").outputs == {"text": "hello e"}


def test_default_store_is_agentflow_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTFLOW_STORE", raising=False)
    execute_plan(PLAN, tools=[greet], inputs={"who": "d"}, run_id="default")
    assert row_counts(tmp_path / "agentflow.db")["runs"] == 1
    assert get_run("default", store=str(tmp_path / "agentflow.db")).status == "completed"
