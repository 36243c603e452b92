"""What a new user tripped on (issue 15), through the real `agentflow` entry point: code
plans, tools beside the plan, tracebacks, code-plan lines, stores that do not exist, the
live table, and the small inconsistencies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import Result

import agentflow
from agentflow import Engine, code_plan, execute_plan
from agentflow.demo import TOOLS as DEMO_TOOLS
from tests.support import cli_tools
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parent.parent
TRIAGE = str(ROOT / "plans" / "triage.py")
CI = str(ROOT / "plans" / "ci_pipeline.json")
GATED = str(ROOT / "tests" / "support" / "gated_deploy.json")
TOOLS = "tests.support.cli_tools"


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.output
    return line


# -- 1. code plans -----------------------------------------------------------------------


def test_validate_run_and_graph_take_code_plans(store: str) -> None:
    valid = cli("validate", TRIAGE, "--tools", "agentflow.demo")
    assert valid.exit_code == 0, valid.output
    assert "valid: triage, code plan" in valid.stdout
    ran = cli("run", TRIAGE, "--tools", "agentflow.demo", "--run-id", "t1")
    assert ran.exit_code == 3, ran.output  # waits for the approval to close stale issues
    assert "approve: agentflow approve t1 c" in ran.stdout
    drawn = cli("graph", TRIAGE)
    assert drawn.exit_code == 0, drawn.output
    labels = re.findall(r'\["(\w+)<br/>line (\d+)"\]|\{\{"(\w+)<br/>line (\d+)"\}\}',
                        drawn.stdout)
    sites = [(tool or gate, int(line or gate_line)) for tool, line, gate, gate_line in labels]
    source = Path(TRIAGE).read_text().splitlines()
    assert [name for name, _ in sites] == ["list_issues", "classify_issue", "label_issue",
                                           "approve", "close_issue", "notify"]
    for name, line in sites:
        assert f"{name}(" in source[line - 1]
    assert len(re.findall(r" --> ", drawn.stdout)) == len(sites) - 1


def test_graph_of_a_code_plan_with_tools_validates_it(tmp_path: Path) -> None:
    plan = tmp_path / "bad.py"
    plan.write_text("notify(text=1, extra=2)\n")
    line = error_line(cli("graph", str(plan), "--tools", TOOLS))
    assert "$.source:1:" in line and "extra" in line


# -- 2. a tools module beside the plan -----------------------------------------------------


def test_tools_module_in_the_current_directory(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mytools_beside.py").write_text(
        "from agentflow import tool\n\n@tool\ndef shout(text: str) -> str:\n"
        "    return text.upper()\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"name": "p", "steps": [
        {"id": "a", "tool": "shout", "args": {"text": "hi"}}]}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path
                                      if entry not in ("", os.getcwd())])
    result = cli("validate", "plan.json", "--tools", "mytools_beside")
    assert result.exit_code == 0, result.output
    assert "valid: p, 1 steps" in result.stdout


# -- 3. tracebacks ---------------------------------------------------------------------------


def test_a_failed_tool_keeps_a_bounded_traceback_without_locals(store: str,
                                                                tmp_path: Path) -> None:
    plan = tmp_path / "fails.json"
    plan.write_text(json.dumps({"name": "fails", "steps": [
        {"id": "boom", "tool": "explode", "args": {"message": "disk full"}}]}))
    assert cli("run", str(plan), "--tools", TOOLS, "--run-id", "f1").exit_code == 1
    result = Engine(store).get_run("f1")
    step = result.steps["boom"]
    assert step.error == "disk full" and step.error_type == "RuntimeError"
    assert step.traceback is not None
    assert step.traceback.startswith("Traceback (most recent call last):")
    assert 'cli_tools.py", line' in step.traceback
    assert "raise RuntimeError(message)" in step.traceback
    assert result.error is not None and result.error.traceback == step.traceback
    shown = cli("show", "f1")
    assert "traceback of step boom (RuntimeError)" in shown.stdout
    assert "raise RuntimeError(message)" in shown.stdout
    assert "raise RuntimeError(message)" in cli("logs", "f1").stdout
    [error] = [json.loads(line) for line in cli("logs", "f1", "--json").stdout.splitlines()
               if json.loads(line)["kind"] == "error"]
    assert error["data"]["traceback"] == step.traceback
    assert json.loads(cli("show", "f1", "--json").stdout)["steps"]["boom"]["traceback"] \
        == step.traceback


def test_tracebacks_hold_no_local_values_and_are_bounded(tmp_path: Path) -> None:
    @agentflow.tool
    def leaky(depth: int) -> int:
        api_key = "sk-do-not-journal-me"

        def down(level: int) -> int:
            if level == 0:
                raise ValueError(f"bottom reached ({len(api_key)} chars of key)")
            return down(level - 1)

        return down(depth)

    result = execute_plan({"name": "deep", "steps": [
        {"id": "a", "tool": "leaky", "args": {"depth": 200}}]}, tools=[leaky],
        store=str(tmp_path / "runs.db"))
    trace = result.steps["a"].traceback
    assert trace is not None and "sk-do-not-journal-me" not in trace
    assert "ValueError: bottom reached (20 chars of key)" in trace
    assert trace.count('  File "') <= 20 and "in leaky" not in trace  # innermost 20 frames

    @agentflow.tool
    def wordy() -> int:
        raise ValueError("x" * 10_000)

    result = execute_plan({"name": "wordy", "steps": [{"id": "a", "tool": "wordy"}]},
                          tools=[wordy], store=str(tmp_path / "runs.db"))
    trace = result.steps["a"].traceback
    assert trace is not None and trace.startswith("...\n") and trace.endswith("x" * 100 + "\n")
    assert len(trace) == 4000 + len("...\n")


def test_the_notebook_view_shows_the_traceback(tmp_path: Path) -> None:
    from agentflow.engine.html import render_run_html

    result = execute_plan({"name": "f", "steps": [
        {"id": "boom", "tool": "explode", "args": {"message": "no <disk>"}}]},
        tools=cli_tools.TOOLS, store=str(tmp_path / "runs.db"))
    html = render_run_html(result)
    assert "<summary>traceback</summary>" in html
    assert "raise RuntimeError(message)" in html and "no &lt;disk&gt;" in html


# -- 4. code-plan steps name their call and line ----------------------------------------------


CODE = """\
first = notify(text="one")
when = now()
explode(message="at line three")
"""


def test_code_plan_steps_show_tool_and_line_and_the_failing_line(store: str,
                                                                 tmp_path: Path) -> None:
    plan = tmp_path / "lines.py"
    plan.write_text(CODE)
    assert cli("run", str(plan), "--tools", TOOLS, "--run-id", "k1").exit_code == 1
    result = Engine(store).get_run("k1")
    assert [(s.id, s.tool, s.line, s.status) for s in result.steps.values()] == [
        ("c1", "notify", 1, "succeeded"), ("c2", "now", 2, "succeeded"),
        ("c3", "explode", 3, "failed")]
    assert result.error is not None and result.error.line == 3
    shown = cli("show", "k1").stdout
    assert re.search(r"│ c1\s+│ notify, line 1\s+│ succeeded", shown), shown
    assert re.search(r"│ c3\s+│ explode, line 3\s+│ failed", shown), shown
    assert "(line 3)" in shown


def test_calls_inside_parallel_name_their_lines(tmp_path: Path) -> None:
    source = ("def one(n):\n    return notify(text=str(n))\n\n"
              "parallel([lambda n=n: one(n) for n in range(2)])\n")
    result = execute_plan(code_plan(source), tools=cli_tools.TOOLS,
                          store=str(tmp_path / "runs.db"))
    assert result.status == "completed"
    assert {(s.id, s.tool, s.line) for s in result.steps.values()} == {
        ("c1.0.c1", "notify", 2), ("c1.1.c1", "notify", 2)}


# -- 5. read commands never create a store -------------------------------------------------


def test_read_commands_refuse_a_store_that_does_not_exist(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    for command in (["runs"], ["show", "r"], ["logs", "r"], ["cancel", "r"],
                    ["approve", "r", "w", "--by", "a"], ["send-event", "r", "go"]):
        line = error_line(cli(*command, "--store", str(typo)))
        assert f"no store at {str(typo)!r}" in line, command
    assert not typo.exists()
    missing = tmp_path / "no-such-dir" / "runs.db"
    for command in (["runs"], ["run", CI, "--tools", "agentflow.demo"]):
        line = error_line(cli(*command, "--store", f"sqlite:///{missing}"))
        assert "does not exist" in line and f"mkdir -p {missing.parent}" in line
    assert not missing.parent.exists()


# -- 6. the live table ---------------------------------------------------------------------


def test_a_replayed_run_shows_its_steps_done_and_replayed(store: str) -> None:
    assert cli("run", CI, "--tools", "agentflow.demo", "--run-id", "r1").exit_code == 0
    again = cli("run", CI, "--tools", "agentflow.demo", "--run-id", "r1")
    assert again.exit_code == 0
    table = again.stdout.split("run r1 completed")[0]
    assert "pending" not in table
    for step in ("checkout", "lint", "test", "build", "deploy", "notify"):
        assert re.search(rf"^{step}\s+succeeded\s.*replayed", table, re.MULTILINE), table


def test_bad_inputs_print_no_table(store: str) -> None:
    result = cli("run", CI, "--tools", "agentflow.demo", "--input", "environment=moon")
    assert result.exit_code == 1
    assert result.stdout.strip() == "", result.stdout
    assert "environment" in result.stderr


def test_an_input_the_plan_does_not_declare_is_refused_before_the_run(store: str) -> None:
    """A mistyped --input name would be ignored and the run go on with the default ref."""
    typo = cli("run", CI, "--tools", "agentflow.demo", "--input", "reff=v2", "--run-id", "t")
    assert (typo.exit_code, typo.stdout) == (1, "")
    assert typo.stderr == (f"error: input 'reff': plan {CI!r} has no such input; did you mean "
                           "'ref'? its inputs: ref, environment, deploy\n")
    engine = Engine(store)
    assert engine.store.get_run("default", "t") is None  # nothing started
    engine.close()
    assert cli("run", CI, "--tools", "agentflow.demo", "--input", "ref=v2").exit_code == 0


def test_missing_inputs_say_how_to_give_them(store: str) -> None:
    missing = cli("run", str(ROOT / "plans" / "deploy_service.json"), "--tools",
                  "agentflow.demo")
    assert (missing.exit_code, missing.stdout) == (1, "")
    assert missing.stderr == (
        "error: the inputs are invalid: $.inputs.artifact: required input is missing; "
        "$.inputs.environment: required input is missing (give them with --input NAME=VALUE "
        "or --inputs FILE)\n")


# -- 7. the small inconsistencies ----------------------------------------------------------


def test_send_event_uses_the_plans_event_name_rule(store: str) -> None:
    engine = Engine(store, tools=cli_tools.TOOLS)
    engine.execute(GATED, run_id="e1")
    line = error_line(cli("send-event", "e1", "bad name!"))
    assert "invalid event name 'bad name!'" in line
    assert engine.store.list_events("default", "e1") == []
    assert cli("send-event", "e1", "good.name:1").exit_code == 0


def test_an_unknown_pending_id_lists_the_valid_ones(store: str) -> None:
    engine = Engine(store, tools=cli_tools.TOOLS)
    [pending] = engine.execute(GATED, run_id="p1").pending
    line = error_line(cli("approve", "p1", "deploy@nope", "--by", "ann"))
    assert "has no approval 'deploy@nope'" in line and f"pending: {pending.id}" in line
    engine.approve("p1", pending.id, by="ann")
    line = error_line(cli("reject", "p1", "deploy@nope", "--by", "ann"))
    assert "it has nothing pending" in line


def test_logs_into_a_closed_pipe_is_quiet(store: str) -> None:
    Engine(store, tools=DEMO_TOOLS).execute(CI, run_id="big")
    reader = subprocess.Popen(
        [sys.executable, "-m", "agentflow.cli", "logs", "big", "--json"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    assert json.loads(reader.stdout.readline())["seq"] == 1  # `head -1`, then hang up
    reader.stdout.close()
    assert reader.wait(timeout=60) == 0
    assert reader.stderr.read() == b""


def test_validate_without_tools_checks_structure_only(tmp_path: Path) -> None:
    result = cli("validate", CI)
    assert result.exit_code == 0, result.output
    assert "structure valid: ci_pipeline; tools were not checked" in result.stdout
    assert "checkout" in result.stdout  # the tools it would check
    data = json.loads(cli("validate", TRIAGE, "--json").stdout)
    assert data == {"valid": True, "name": "triage", "tools_checked": False,
                    "tools": ["classify_issue", "close_issue", "label_issue", "list_issues",
                              "notify"]}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"name": "b", "steps": [
        {"id": "a", "tool": "x", "after": ["nope"]}]}))
    result = cli("validate", str(broken))
    assert result.exit_code == 1 and "nope" in result.stdout and "1 issue(s)" in result.stdout


def test_approval_panel_of_a_result_needs_no_store_or_tools(tmp_path: Path) -> None:
    from agentflow.notebook import approval_panel

    engine = Engine(str(tmp_path / "elsewhere.db"))
    result = engine.execute(GATED, tools=cli_tools.TOOLS, run_id="n1")
    panel = approval_panel(result, by="ann")
    assert panel.handle.engine is engine
    (card,) = panel.cards.values()
    card.approve_button.click()
    assert engine.get_run("n1").status == "completed", panel.message.value


def test_version() -> None:
    from importlib.metadata import version

    assert agentflow.__version__ == version("agentflow")
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"agentflow {agentflow.__version__}\n"


def test_code_plans_use_the_same_event_name_rule(tmp_path: Path) -> None:
    result = execute_plan(code_plan("wait_for_event('bad name!')"), tools=cli_tools.TOOLS,
                          store=str(tmp_path / "runs.db"))
    assert result.status == "failed"
    assert "invalid event name 'bad name!'" in str(result.error)
    assert result.error is not None and result.error.line == 1
