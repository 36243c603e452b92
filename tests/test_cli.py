"""The `agentflow` command through its real entry point (typer's runner on `agentflow.cli.app`)
on a real SQLite store: every command, its output, its exit status and its failure exits."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import Result

from agentflow import Engine
from agentflow.cli import app
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CI = str(ROOT / "plans" / "ci_pipeline.json")
RELEASE = str(ROOT / "plans" / "release_with_approval.json")
GATED = str(ROOT / "tests" / "support" / "gated_deploy.json")
TOOLS = "tests.support.cli_tools"


def write_plan(tmp_path: Path, plan: dict[str, Any]) -> str:
    path = tmp_path / f"{plan['name']}.json"
    path.write_text(json.dumps(plan))
    return str(path)


def one_error_line(result: Result, *parts: str) -> None:
    """A user error: exit 1, nothing on stdout, one `error: ...` line on stderr."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0]
    assert "Traceback" not in result.output


def stored(store: str, run_id: str) -> Any:
    engine = Engine(store)
    try:
        return engine.get_run(run_id)
    finally:
        engine.close()


def pending_id(store: str, run_id: str) -> str:
    [pending] = stored(store, run_id).pending
    return str(pending.id)


def test_every_command_help_has_a_runnable_example() -> None:
    group = typer.main.get_command(app)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    assert names == ["approve", "cancel", "dry-run", "fork", "graph", "logs", "migrate",
                     "plans", "policy", "prune", "reject", "resume", "run", "runs", "schema",
                     "send-event", "serve", "show", "submit", "tokens", "validate", "wait",
                     "worker"]
    for name in names:
        result = cli(name, "--help")
        assert result.exit_code == 0
        assert re.search(rf"Example:\s+agentflow {name}\b", result.stdout), result.stdout


# -- validate, schema, graph ------------------------------------------------------------


def test_validate_a_valid_plan() -> None:
    result = cli("validate", CI, "--tools", "agentflow.demo")
    assert result.exit_code == 0
    assert "valid: ci_pipeline, 6 steps" in result.stdout
    data = json.loads(cli("validate", CI, "--tools", "agentflow.demo", "--json").stdout)
    assert data["valid"] is True
    assert data["steps"] == ["checkout", "lint", "test", "build", "deploy", "notify"]


def test_validate_lists_every_issue_and_exits_1(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {"name": "bad", "steps": [
        {"id": "a", "tool": "no_such_tool"},
        {"id": "b", "tool": "notify", "args": {"text": "${steps.nope.output}"}}]})
    result = cli("validate", plan, "--tools", TOOLS)
    assert result.exit_code == 1
    assert "2 issue(s)" in result.stdout
    assert "no_such_tool" in result.stdout and "nope" in result.stdout
    data = json.loads(cli("validate", plan, "--tools", TOOLS, "--json").stdout)
    assert data["valid"] is False
    assert [(issue["path"], issue["step"]) for issue in data["issues"]] == [
        ("$.steps[0].tool", "a"), ("$.steps[1].args.text", "b")]


def test_validate_user_errors_are_one_line(tmp_path: Path) -> None:
    one_error_line(cli("validate", CI, "--tools", "no.such.module"),
                   "cannot import tool module 'no.such.module'")
    one_error_line(cli("validate", str(tmp_path / "missing.json")), "no plan file at")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    one_error_line(cli("validate", str(broken)), "not valid JSON")


def test_schema_prints_the_plan_json_schema() -> None:
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "steps" in schema["properties"]


def mermaid_structure(text: str) -> tuple[str, set[str], set[tuple[str, str]]]:
    """(header, node ids, edges) of Mermaid flowchart text; fails on any other line."""
    header, *lines = text.strip().splitlines()
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    for line in lines:
        if node := re.fullmatch(r"    ([A-Za-z_][A-Za-z0-9_]*)(\[\"|\{\{\"|\(\[\"|\[\[\").*"
                                r"(\"\]|\"\}\}|\"\]\)|\"\]\])", line):
            nodes.add(node.group(1))
        elif edge := re.fullmatch(r"    (\w+) --> (\w+)", line):
            edges.add((edge.group(1), edge.group(2)))
        else:
            assert re.fullmatch(r"    (classDef|class) .+", line), line
    return header, nodes, edges


def test_graph_prints_mermaid_with_every_step_and_dependency() -> None:
    result = cli("graph", CI)
    assert result.exit_code == 0
    header, nodes, edges = mermaid_structure(result.stdout)
    assert header == "flowchart TD"
    assert nodes == {"checkout", "lint", "test", "build", "deploy", "notify"}
    assert edges == {("checkout", "lint"), ("checkout", "test"), ("checkout", "build"),
                     ("lint", "build"), ("test", "build"), ("lint", "deploy"),
                     ("build", "deploy"), ("checkout", "notify"), ("deploy", "notify")}
    assert cli("graph", CI, "--tools", "agentflow.demo").stdout == result.stdout


def test_graph_dot_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "ci.dot"
    result = cli("graph", RELEASE, "--format", "dot", "--output", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    text = out.read_text()
    assert text.startswith('digraph "release_with_approval" {')
    assert '"build" -> "deploy";' in text and "shape=box" in text


def test_graph_svg_needs_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    one_error_line(cli("graph", CI, "--format", "svg"), "install graphviz",
                   "--format mermaid")


def test_graph_svg_through_the_dot_program(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "dot"
    fake.write_text('#!/bin/sh\n[ "$1" = "-Tsvg" ] || exit 3\n'
                    'grep -c -- "->" | sed "s|.*|<svg edges=\\"&\\"/>|"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "ci.svg"
    assert cli("graph", CI, "-f", "svg", "-o", str(out)).exit_code == 0
    assert out.read_text().strip() == '<svg edges="9"/>'
    one_error_line(cli("graph", CI, "-f", "png"), "dot -Tpng failed")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graph_svg_with_graphviz() -> None:
    result = cli("graph", RELEASE, "--format", "svg")
    assert result.exit_code == 0
    assert "<svg" in result.stdout
    for step in ("checkout", "test", "build", "deploy", "notify"):
        assert f"<title>{step}</title>" in result.stdout


def test_graph_of_an_invalid_plan_is_one_error_line(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {"name": "bad", "steps": [{"id": "a", "tool": 3}]})
    one_error_line(cli("graph", plan), "plan is invalid", "$.steps[0].tool")


# -- run, resume -------------------------------------------------------------------------


def test_run_ci_pipeline_shows_progress_and_a_summary(store: str) -> None:
    result = cli("run", CI, "--tools", "agentflow.demo", "--run-id", "ci-1",
                 "--input", "ref=v2")
    assert result.exit_code == 0, result.output
    table = result.stdout.split("run ci-1 completed")[0]
    for step in ("checkout", "lint", "test", "build", "deploy", "notify"):
        assert re.search(rf"^{step}\s+succeeded", table, re.MULTILINE), table
    assert re.search(r"^test\s+succeeded\s+5\s+4\s+1\s", table, re.MULTILINE), table
    assert re.search(r"^sha\s+\"[0-9a-f]{12}\"", result.stdout, re.MULTILINE)
    run = stored(store, "ci-1")
    assert run.status == "completed" and run.outputs["url"].startswith("https://staging.")


def test_run_json_and_inputs_file(store: str, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"ref": "v3", "deploy": False}))
    result = cli("run", CI, "--tools", "agentflow.demo", "--inputs", str(inputs), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["status"] == "completed"
    assert data["steps"]["deploy"]["status"] == "skipped"
    assert stored(store, data["run_id"]).status == "completed"


def test_run_user_errors_are_one_line(store: str, tmp_path: Path) -> None:
    demo = ("--tools", "agentflow.demo")
    one_error_line(cli("run", CI, *demo, "--input", "novalue"), "--input 'novalue'")
    one_error_line(cli("run", CI, *demo, "--input", "environment=qa"), "inputs", "qa")
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    one_error_line(cli("run", CI, *demo, "--inputs", str(listed)), "must be a JSON object")
    one_error_line(cli("run", CI), "plan is invalid", "checkout", "with --tools MODULE")
    one_error_line(cli("run", CI, *demo, "--store", "mysql://x"), "unknown store URL")
    assert cli("run", CI, *demo, "--interactive", "--json").exit_code == 1
    assert Engine(store).list_runs() == []


def test_a_failed_run_exits_1_with_its_error(store: str, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {"name": "boom", "steps": [
        {"id": "boom", "tool": "explode", "args": {"message": "disk full"}}]})
    result = cli("run", plan, "--tools", TOOLS, "--run-id", "b1")
    assert result.exit_code == 1
    assert "run b1 failed" in result.stdout
    assert "error: step 'boom': RuntimeError: disk full" in result.stdout
    assert stored(store, "b1").status == "failed"


def test_a_waiting_run_exits_3_and_prints_the_exact_approve_command(store: str) -> None:
    result = cli("run", GATED, "--tools", TOOLS, "--run-id", "g1")
    assert result.exit_code == 3, result.output
    assert "run g1 waiting" in result.stdout
    assert 'args: {"target":"prod","replicas":1}' in result.stdout
    command = next(line.split("approve: ", 1)[1] for line in result.stdout.splitlines()
                   if line.strip().startswith("approve: "))
    words = shlex.split(command)
    assert words[:3] == ["agentflow", "approve", "g1"]
    assert words[3] == pending_id(store, "g1")
    words[words.index("NAME")] = "alice"
    approved = cli(*words[1:])
    assert approved.exit_code == 0, approved.output
    run = stored(store, "g1")
    assert run.status == "completed"
    assert run.outputs == {"deployed": {"target": "prod", "replicas": 1},
                           "notice": "deploy succeeded"}


def test_resume(store: str) -> None:
    assert cli("run", GATED, "--tools", TOOLS, "--run-id", "g2").exit_code == 3
    assert cli("approve", "g2", pending_id(store, "g2"), "--by", "ann").exit_code == 0
    result = cli("resume", "g2", "--tools", TOOLS)
    assert result.exit_code == 0, result.output
    assert "run g2 completed" in result.stdout
    again = cli("resume", "g2", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "completed"
    one_error_line(cli("resume", "nope"), "no run 'nope'")


# -- decisions, events, cancel -------------------------------------------------------------


def test_approve_with_edited_arguments(store: str) -> None:
    cli("run", GATED, "--tools", TOOLS, "--run-id", "g3")
    wait = pending_id(store, "g3")
    result = cli("approve", "g3", wait, "--by", "ann", "--comment", "smaller",
                 "--args", '{"target": "canary", "replicas": 2}')
    assert result.exit_code == 0
    assert f"approved {wait} (step deploy) of run g3" in result.stdout
    assert f"agentflow resume g3 --store {store} --tools MODULE" not in result.stdout
    assert "agentflow resume g3 --tools MODULE" in result.stdout
    [decided] = Engine(store).store.list_waits("default", "g3")
    assert decided.status == "approved"
    assert decided.decision == {"by": "ann", "comment": "smaller",
                                "args": {"target": "canary", "replicas": 2}}


def test_refused_decisions_are_one_line_and_change_nothing(store: str) -> None:
    cli("run", GATED, "--tools", TOOLS, "--run-id", "g4")
    wait = pending_id(store, "g4")
    one_error_line(cli("approve", "g4", wait, "--by", "ann", "--args", "{oops"),
                   "--args: not valid JSON")
    one_error_line(cli("approve", "g4", wait, "--by", "ann", "--args", '{"target": 7}'),
                   "args.target: 7 is not of type 'string'")
    one_error_line(cli("approve", "g4", "deploy:nope", "--by", "ann"), "has no approval")
    one_error_line(cli("approve", "nope", wait, "--by", "ann"), "no run 'nope'")
    assert cli("approve", "g4", wait).exit_code == 2  # --by is required
    assert pending_id(store, "g4") == wait
    assert cli("reject", "g4", wait, "--by", "bob").exit_code == 0
    one_error_line(cli("reject", "g4", wait, "--by", "bob"), "already rejected by bob")


def test_reject_and_resume(store: str) -> None:
    cli("run", GATED, "--tools", TOOLS, "--run-id", "g5")
    wait = pending_id(store, "g5")
    result = cli("reject", "g5", wait, "--by", "bob", "--reason", "freeze week", "--resume",
                 "--tools", TOOLS)
    assert result.exit_code == 0, result.output
    assert "run g5 completed" in result.stdout
    run = stored(store, "g5")
    assert run.steps["deploy"].status == "rejected"
    assert run.outputs["notice"] == "deploy rejected"
    [decided] = Engine(store).store.list_waits("default", "g5")
    assert decided.decision == {"by": "bob", "reason": "freeze week"}


def test_send_event(store: str, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {"name": "evented", "steps": [
        {"id": "paid", "wait_for_event": "payment.received"},
        {"id": "notify", "tool": "notify", "args": {"text": "paid ${steps.paid.output.amount}"}}],
        "outputs": {"notice": "${steps.notify.output}"}})
    waiting = cli("run", plan, "--tools", TOOLS, "--run-id", "e1")
    assert waiting.exit_code == 3
    assert "agentflow send-event e1 payment.received --payload '{}' --resume --tools " \
           f"{TOOLS}" in waiting.stdout
    one_error_line(cli("send-event", "e1", "payment.received", "--payload", "{x"),
                   "--payload: not valid JSON")
    result = cli("send-event", "e1", "payment.received", "--payload", '{"amount": 12}',
                 "--resume", "--tools", TOOLS)
    assert result.exit_code == 0, result.output
    assert "sent event 'payment.received' (#1) to run e1" in result.stdout
    assert stored(store, "e1").outputs == {"notice": "paid 12"}
    one_error_line(cli("send-event", "e1", "late"), "already completed")


def test_cancel(store: str) -> None:
    cli("run", GATED, "--tools", TOOLS, "--run-id", "g6")
    result = cli("cancel", "g6", "--reason", "superseded")
    assert result.exit_code == 0
    assert "run g6 cancelled" in result.stdout
    run = stored(store, "g6")
    assert (run.status, str(run.error)) == ("cancelled", "Cancelled: superseded")
    one_error_line(cli("cancel", "g6"), "already cancelled")
    assert cli("resume", "g6").exit_code == 1  # a cancelled run's status
    one_error_line(cli("cancel", "nope"), "no run 'nope'")


# -- worker ------------------------------------------------------------------------------


def test_worker_once_resumes_a_due_run(store: str) -> None:
    cli("run", GATED, "--tools", TOOLS, "--run-id", "w1")
    cli("run", GATED, "--tools", TOOLS, "--run-id", "w2")
    assert cli("worker", "--once", "--tools", TOOLS).stdout == ""  # nothing due yet
    cli("approve", "w1", pending_id(store, "w1"), "--by", "ann")
    result = cli("worker", "--once", "--tools", TOOLS)
    assert result.exit_code == 0
    assert result.stdout.strip() == "run w1 completed"
    assert stored(store, "w1").status == "completed"
    assert stored(store, "w2").status == "waiting"


def test_worker_max_runs(store: str) -> None:
    for run_id in ("m1", "m2"):
        cli("run", GATED, "--tools", TOOLS, "--run-id", run_id)
        cli("reject", run_id, pending_id(store, run_id), "--by", "bob")
    result = cli("worker", "--max-runs", "1", "--poll", "0.01", "--tools", TOOLS)
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    statuses = sorted(stored(store, run_id).status for run_id in ("m1", "m2"))
    assert statuses == ["completed", "waiting"]


def test_worker_without_the_tools_module_is_one_line(store: str) -> None:
    one_error_line(cli("worker", "--once", "--tools", "tests.support.cli_tools:nothing"),
                   "has no attribute 'nothing'")


def test_a_tools_module_without_tools_says_what_it_holds(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bare_tools.py").write_text("x = 1\n")
    (tmp_path / "plain_tools.py").write_text("def f() -> None: ...\nTOOLS = [f]\n")
    monkeypatch.chdir(tmp_path)
    bare = cli("validate", CI, "--tools", "bare_tools")
    assert bare.stderr == (
        "error: 'bare_tools' does not name agentflow tools: module 'bare_tools' "
        f"({tmp_path / 'bare_tools.py'}) has none; decorate its functions with @tool, or "
        "list them in TOOLS = [...]\n")
    plain = cli("validate", CI, "--tools", "plain_tools")
    assert plain.stderr == ("error: 'plain_tools' does not name agentflow tools: it holds "
                            "function values; wrap functions with @tool (or Tool(fn)) first\n")
    assert (bare.exit_code, plain.exit_code) == (1, 1)


# -- runs, show, logs ------------------------------------------------------------------------


@pytest.fixture
def three_runs(store: str) -> str:
    assert cli("run", CI, "--tools", "agentflow.demo", "--run-id", "c1").exit_code == 0
    assert cli("run", GATED, "--tools", TOOLS, "--run-id", "g1").exit_code == 3
    assert cli("run", GATED, "--tools", TOOLS, "--run-id", "g2").exit_code == 3
    return store


def test_runs_lists_and_filters(three_runs: str) -> None:
    result = cli("runs")
    assert result.exit_code == 0
    rows = [line.split("│")[1:4] for line in result.stdout.splitlines() if "│" in line]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["g2", "gated_deploy", "waiting"], ["g1", "gated_deploy", "waiting"],
        ["c1", "ci_pipeline", "completed"]]
    assert "ago" in result.stdout

    def ids(*args: str) -> list[str]:
        return [run["run_id"] for run in json.loads(cli("runs", "--json", *args).stdout)]

    assert ids("--status", "completed") == ["c1"]
    assert ids("--plan", "gated_deploy") == ["g2", "g1"]
    assert ids("--plan", "gated_deploy", "--limit", "1") == ["g2"]
    plan_hash = stored(three_runs, "c1").plan_hash
    assert ids("--plan", plan_hash[:8]) == ["c1"]
    assert ids("--plan", plan_hash) == ["c1"]
    assert ids("--plan", "nothing") == []
    assert cli("runs", "--plan", "nothing").stdout.strip() == "no runs"
    [c1] = json.loads(cli("runs", "--json", "--status", "completed").stdout)
    assert (c1["plan"], c1["plan_hash"], c1["error"]) == ("ci_pipeline", plan_hash, None)
    assert cli("runs", "--status", "bogus").exit_code == 2


def test_show(three_runs: str) -> None:
    result = cli("show", "g1")
    assert result.exit_code == 0
    assert "run g1  waiting" in result.stdout
    assert re.search(r"│ deploy\s+│ [^│]*│ waiting", result.stdout)
    wait = pending_id(three_runs, "g1")
    assert wait in result.stdout and "Deploy to prod?" in result.stdout
    data = json.loads(cli("show", "g1", "--json").stdout)
    assert data["status"] == "waiting"
    assert data["pending"][0] | {"expires_at": None} == {
        "id": wait, "kind": "approval", "step_id": "deploy", "tool": "deploy",
        "args": {"target": "prod", "replicas": 1}, "prompt": "Deploy to prod?",
        "expires_at": None, "status": "pending", "decision": None}
    shown = cli("show", "c1")
    assert re.search(r"│ test\s+│ run_tests\s+│ succeeded │ 5\s+│ 4\s+│", shown.stdout), \
        shown.stdout
    # at 80 columns (the runner's) the start times give way to the results
    assert "result / error" in shown.stdout and "started" not in shown.stdout
    assert re.search(r'│ checkout .*│ \{"sha":', shown.stdout), shown.stdout
    one_error_line(cli("show", "nope"), "no run 'nope'")


def test_logs(three_runs: str) -> None:
    result = cli("logs", "c1")
    assert result.exit_code == 0
    assert re.search(r"│ checkout\s+│ intent", result.stdout)
    lines = cli("logs", "c1", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[0] | {"at": 0, "args_hash": None} == {
        "key": "checkout", "kind": "intent", "data": {"args": {"ref": "main"}}, "attempt": 1,
        "tool": "checkout", "args_hash": None, "at": 0, "seq": 1}
    assert {"intent", "result", "error"} <= {event["kind"] for event in events}
    one_error_line(cli("logs", "nope"), "no run 'nope'")


def test_store_option_overrides_the_environment(store: str, tmp_path: Path) -> None:
    other = str(tmp_path / "other.db")
    assert cli("run", CI, "--tools", "agentflow.demo", "--run-id", "x",
               "--store", other).exit_code == 0
    assert json.loads(cli("runs", "--json", "--store", other).stdout)[0]["run_id"] == "x"
    one_error_line(cli("runs", "--json"), "no store at", store)  # the environment's one


def test_a_worker_without_tools_warns_that_it_runs_only_tool_free_plans(store: str) -> None:
    bare = cli("worker", "--once")
    assert (bare.exit_code, bare.stdout) == (0, "")
    assert bare.stderr.startswith("warning: no --tools given: this worker runs only plans "
                                  "that call no tool"), bare.stderr
    assert cli("worker", "--once", "--tools", TOOLS).stderr == ""
