"""`agentflow plans put|list|show`, `agentflow run NAME` and `agentflow prune` (issue 13)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agentflow import Engine
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CI = str(ROOT / "plans" / "ci_pipeline.json")
GATED = str(ROOT / "tests" / "support" / "gated_deploy.json")
TOOLS = "tests.support.cli_tools"


def test_put_list_show_and_run_a_plan_by_name(store: str) -> None:
    put = cli("plans", "put", "deploy", GATED, "--tools", TOOLS, "--json")
    assert put.exit_code == 0, put.output
    version = json.loads(put.stdout)["version"]
    listed = json.loads(cli("plans", "list", "--json").stdout)
    assert [(p["name"], p["version"], p["versions"]) for p in listed] == [
        ("deploy", version, 1)]
    shown = json.loads(cli("plans", "show", "deploy", "--json").stdout)
    assert shown["version"] == version
    assert shown["plan"]["name"] == "gated_deploy"
    assert [step["id"] for step in shown["plan"]["steps"]] == ["deploy", "notify"]
    assert cli("run", "deploy", "--tools", TOOLS, "--run-id", "d1").exit_code == 3
    engine = Engine(store)
    run = engine.store.get_run("default", "d1")
    assert run is not None and (run.plan_hash, run.plan_name) == (version, "deploy")
    engine.close()
    assert [r["run_id"] for r in json.loads(cli("runs", "--json", "--plan", "deploy").stdout)] \
        == ["d1"]
    text = cli("plans", "show", "deploy").stdout
    assert f"* {version[:12]}" in text


def test_unknown_names_and_versions_are_one_error_line(store: str) -> None:
    cli("plans", "put", "deploy", GATED, "--tools", TOOLS)
    for args, part in ((("run", "nothing", "--tools", TOOLS), "no plan 'nothing'"),
                       (("plans", "show", "deploy", "--version", "ffff"), "version ffff"),
                       (("plans", "put", "deploy", GATED), "unknown tool")):
        result = cli(*args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: ") and part in result.stderr
        assert "Traceback" not in result.output


def test_a_mistyped_plan_name_or_file_gets_the_close_match(store: str,
                                                          tmp_path: Path) -> None:
    """`run NAME` says it found neither a file nor a registered plan, and names the close
    one; a mistyped file path names the file beside it."""
    missing = cli("run", "deploi", "--tools", TOOLS, "--store", str(tmp_path / "none.db"))
    assert missing.stderr == ("error: no plan file at 'deploi', and no store at "
                              f"'{tmp_path / 'none.db'}' for a plan registered under that "
                              "name (`agentflow plans put`)\n")
    cli("plans", "put", "deploy", GATED, "--tools", TOOLS)
    cli("plans", "put", "audit", GATED, "--tools", TOOLS)
    typo = cli("run", "deploi", "--tools", TOOLS)
    assert typo.stderr == ("error: no plan file at 'deploi', and no plan 'deploi' for tenant "
                           "'default'; did you mean 'deploy'?\n")
    unlike = cli("run", "zzz", "--tools", TOOLS)
    assert unlike.stderr.endswith("no plan 'zzz' for tenant 'default'; its plans: audit, "
                                  "deploy\n")
    path = cli("run", CI.replace("ci_pipeline", "ci_pipline"), "--tools", "agentflow.demo")
    assert path.stderr == f"error: no plan file at {CI.replace('ci_pipeline', 'ci_pipline')!r};" \
        f" did you mean {CI!r}?\n"
    assert [missing.exit_code, typo.exit_code, unlike.exit_code, path.exit_code] == [1] * 4


def test_prune_deletes_old_finished_runs_only_and_dry_run_deletes_nothing(store: str) -> None:
    assert cli("run", CI, "--tools", "agentflow.demo", "--run-id", "old").exit_code == 0
    assert cli("run", GATED, "--tools", TOOLS, "--run-id", "waiting").exit_code == 3
    assert cli("run", CI, "--tools", "agentflow.demo", "--run-id", "new").exit_code == 0
    with sqlite3.connect(store) as db:  # two hours ago: no test is that slow, however loaded
        db.execute("UPDATE runs SET updated_at = updated_at - 7200 "
                   "WHERE run_id IN ('old', 'waiting')")
    db.close()
    dry = json.loads(cli("prune", "--older-than", "1h", "--dry-run", "--json").stdout)
    assert dry == {"dry_run": True, "runs": [{"tenant": "default", "run_id": "old"}]}
    engine = Engine(store)
    assert engine.store.get_run("default", "old") is not None
    assert cli("prune", "--older-than", "1h", "--status", "failed").stdout.strip() \
        == "deleted 0 runs"
    assert cli("prune", "--older-than", "1h").stdout.strip() == "deleted 1 run"
    assert engine.store.get_run("default", "old") is None
    assert engine.store.read_journal("default", "old") == []
    assert {r.run_id for r in engine.store.list_runs("default")} == {"waiting", "new"}
    engine.close()
    bad = cli("prune", "--older-than", "soon")
    assert bad.exit_code == 1 and "30d" in bad.stderr
    bad = cli("prune", "--older-than", "1d", "--status", "waiting")
    assert bad.exit_code == 1 and "finished runs" in bad.stderr
