"""`agentflow policy show|set`, `dry-run`, `migrate`, `fork`, and `validate` against a
tenant's registered plans (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import Result

from agentflow import Engine
from tests.support.cli import cli
from tests.test_cli_plans import GATED, ROOT, TOOLS

SUBPLAN = str(ROOT / "plans" / "release_with_subplan.json")
DEPLOY_SERVICE = str(ROOT / "plans" / "deploy_service.json")
CI = str(ROOT / "plans" / "ci_pipeline.json")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "runs.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTFLOW_STORE", path)
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    return path


def ok(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def test_policy_set_and_show_per_tenant(store: str) -> None:
    shown = json.loads(ok(cli("policy", "set", "--tenant", "acme", "--max-steps", "5",
                              "--requires-approval", "deploy", "--max-cost-usd", "2.5",
                              "--on-limit", "approval", "--json")).stdout)
    assert (shown["tenant"], shown["max_steps"], shown["requires_approval"],
            shown["budget"], shown["on_limit"]) == ("acme", 5, ["deploy"],
                                                    {"cost_usd": 2.5}, "approval")
    again = json.loads(ok(cli("policy", "show", "--tenant", "acme", "--json")).stdout)
    assert again == shown
    engine = Engine(store)
    assert engine.tenant("acme").current_policy().max_steps == 5
    engine.close()
    other = json.loads(ok(cli("policy", "show", "--tenant", "globex", "--json")).stdout)
    assert other["max_steps"] is None and other["requires_approval"] == []
    assert "max_steps: 5" in ok(cli("policy", "show", "--tenant", "acme")).stdout
    refused = ok(cli("policy", "set", "--tenant", "acme", "--on-limit", "later"), 1)
    assert refused.stderr.startswith("error: on_limit must be 'fail' or 'approval'")
    assert json.loads(ok(cli("policy", "show", "--tenant", "acme", "--json")).stdout) == shown


def test_validate_knows_the_tenants_registered_plans(store: str) -> None:
    unknown = ok(cli("validate", SUBPLAN, "--tools", "agentflow.demo", "--json"), 1)
    assert "unknown plan 'deploy_service'" in unknown.stdout  # no store yet: nothing known
    ok(cli("plans", "put", "deploy_service", DEPLOY_SERVICE, "--tools", "agentflow.demo"))
    valid = json.loads(ok(cli("validate", SUBPLAN, "--tools", "agentflow.demo",
                              "--json")).stdout)
    assert valid["valid"] and valid["steps"] == ["checkout", "build", "staging", "production"]
    assert json.loads(ok(cli("validate", SUBPLAN, "--json")).stdout)["valid"]  # structure
    elsewhere = ok(cli("validate", SUBPLAN, "--tools", "agentflow.demo", "--tenant", "acme",
                       "--json"), 1)
    assert "unknown plan 'deploy_service'" in elsewhere.stdout  # another tenant's registry
    ok(cli("policy", "set", "--max-steps", "1"))
    capped = ok(cli("validate", SUBPLAN, "--tools", "agentflow.demo", "--json"), 1)
    assert "max_steps=1" in capped.stdout
    missing = ok(cli("validate", SUBPLAN, "--store", str(Path(store).parent / "none.db")), 1)
    assert missing.stderr.startswith("error: no store at")


def test_run_by_name_and_submit_a_plan_with_sub_plans(store: str) -> None:
    ok(cli("plans", "put", "deploy_service", DEPLOY_SERVICE, "--tools", "agentflow.demo"))
    assert ok(cli("submit", SUBPLAN, "--tools", "agentflow.demo", "--run-id", "q1")
              ).stdout.strip() == "q1"
    ok(cli("plans", "put", "release", SUBPLAN, "--tools", "agentflow.demo"))
    waiting = json.loads(ok(cli("run", "release", "--tools", "agentflow.demo", "--run-id",
                                "rel", "--json"), 3).stdout)
    assert [p["prompt"] for p in waiting["pending"] if p["kind"] == "approval"] == [
        "Deploy dist/app-" + waiting["steps"]["build"]["output"]["artifact"][9:]
        + " to staging?"]


def test_dry_run_and_migrate_a_waiting_run(store: str, tmp_path: Path) -> None:
    first = json.loads(Path(GATED).read_text())
    first["steps"].insert(0, {"id": "hello", "tool": "notify", "args": {"text": "hi"}})
    first["steps"][1]["after"] = ["hello"]
    v1_file = tmp_path / "v1.json"
    v1_file.write_text(json.dumps(first))
    v1 = json.loads(ok(cli("plans", "put", "deploy", str(v1_file), "--tools", TOOLS,
                           "--json")).stdout)["version"]
    ok(cli("run", "deploy", "--tools", TOOLS, "--run-id", "d1"), 3)  # hello ran; deploy waits
    first["outputs"]["notice"] = "changed"
    same_calls = tmp_path / "v2.json"
    same_calls.write_text(json.dumps(first))
    report = json.loads(ok(cli("dry-run", str(same_calls), "--against", "d1", "--tools", TOOLS,
                               "--json")).stdout)
    assert report["matches"] and report["replayed"] == ["hello"] and report["waiting"]
    text = ok(cli("dry-run", str(same_calls), "--against", "d1", "--tools", TOOLS)).stdout
    assert f"  would wait for: {report['waiting'][0]}\n" in text  # one line, not wrapped
    first["steps"][0]["args"]["text"] = "bye"
    other_calls = tmp_path / "v3.json"
    other_calls.write_text(json.dumps(first))
    refused = ok(cli("dry-run", str(other_calls), "--against", "d1", "--tools", TOOLS), 1)
    assert "does not match" in refused.stdout and "first mismatch" in refused.stdout
    v2 = json.loads(ok(cli("plans", "put", "deploy", str(same_calls), "--tools", TOOLS,
                           "--json")).stdout)["version"]
    v3 = json.loads(ok(cli("plans", "put", "deploy", str(other_calls), "--tools", TOOLS,
                           "--json")).stdout)["version"]
    assert _plan_hash(store, "d1") == v1
    refused = ok(cli("migrate", "d1", "--to", v3[:10], "--tools", TOOLS), 1)
    assert "hello" in refused.stderr
    assert _plan_hash(store, "d1") == v1  # refused: nothing changed
    moved = ok(cli("migrate", "d1", "--to", v2[:10], "--tools", TOOLS))
    assert f"now runs version {v2[:12]}" in moved.stdout
    assert _plan_hash(store, "d1") == v2


def _plan_hash(store: str, run_id: str) -> str:
    engine = Engine(store)
    run = engine.store.get_run("default", run_id)
    engine.close()
    assert run is not None
    return run.plan_hash


def test_fork_with_an_edited_result(store: str) -> None:
    ok(cli("run", CI, "--tools", "agentflow.demo", "--run-id", "ci"), 0)
    forked = json.loads(ok(cli("fork", "ci", "--at-step", "build", "--run-id", "ci-2",
                               "--result", 'checkout={"sha": "abc", "ref": "main", '
                               '"pythons": ["3.12"]}', "--tools", "agentflow.demo",
                               "--json")).stdout)
    assert forked["run_id"] == "ci-2" and forked["status"] == "completed"
    assert forked["steps"]["checkout"]["output"]["sha"] == "abc"
    assert "abc" in json.dumps(forked["steps"]["build"]["output"])
    bad = ok(cli("fork", "ci", "--at-step", "build", "--result", "checkout"), 1)
    assert bad.stderr.startswith("error: --result 'checkout': expected NAME=VALUE")


def test_graph_with_tools_knows_the_tenants_registered_plans(store: str) -> None:
    code = str(ROOT / "plans" / "release_with_subplan.py")
    for plan in (code, SUBPLAN):
        refused = ok(cli("graph", plan, "--tools", "agentflow.demo"), 1)
        assert "unknown plan 'deploy_service'" in refused.stderr
    ok(cli("plans", "put", "deploy_service", DEPLOY_SERVICE, "--tools", "agentflow.demo"))
    drawn = ok(cli("graph", code, "--tools", "agentflow.demo")).stdout
    assert drawn.count("run_plan: deploy_service") == 2
    assert "staging" in ok(cli("graph", SUBPLAN, "--tools", "agentflow.demo")).stdout
