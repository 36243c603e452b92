"""Jupyter: the notebooks run top to bottom, runs render as HTML, and the approval panel's
buttons decide and resume (clicked with `Button.click()`, checked in the store)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from agentflow import (
    Engine,
    RunNotFound,
    RunResult,
    StepResult,
    code_plan,
    execute_plan,
    tool,
)
from agentflow.demo import TOOLS
from agentflow.engine.html import render_run_html
from agentflow.notebook import ApprovalCard, ApprovalPanel, RunHandle, approval_panel, run
from agentflow.store import WaitRecord

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "plans" / "release_with_approval.json"


class _ThisPython(KernelSpecManager):
    """Every kernel name is this interpreter's ipykernel: no installed kernelspec needed."""

    def get_kernel_spec(self, kernel_name: str, *args: Any, **kwargs: Any) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                                "{connection_file}"],
                          display_name="agentflow test kernel", language="python")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["quickstart", "agent_planning"])
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's temporary files go here
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb",  # type: ignore[no-untyped-call]
                             as_version=4)
    kernel = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisPython())
    NotebookClient(notebook, km=kernel, timeout=90,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code"
               for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert 'class="agentflow-run"' in html
    assert html.count('<pre class="mermaid">flowchart TD') >= 1


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def waiting(store: str) -> RunResult:
    """A release run waiting for approval of its production deploy."""
    result = execute_plan(RELEASE, tools=TOOLS, inputs={"ref": "v2"}, run_id="rel-1",
                          store=store)
    assert result.status == "waiting" and len(result.pending) == 1
    return result


@pytest.fixture
def panel(store: str, waiting: RunResult) -> Iterator[ApprovalPanel]:
    yield approval_panel(run(waiting.run_id, store=store, tools=TOOLS), by="alice")


def card_of(panel: ApprovalPanel) -> ApprovalCard:
    (card,) = panel.cards.values()
    return card


def wait_row(store: str, run_id: str) -> WaitRecord:
    (row,) = Engine(store).store.list_waits("default", run_id)
    return row


def test_html_of_waiting_run_lists_its_pending_approval(store: str,
                                                        waiting: RunResult) -> None:
    pending = waiting.pending[0]
    html = run(waiting.run_id, store=store)._repr_html_()
    assert pending.id in html and "waiting" in html
    assert "<code>deploy</code>" in html
    assert "Deploy " in html and pending.prompt is not None and pending.prompt in html
    assert "&quot;environment&quot;: &quot;production&quot;" in html
    assert json.dumps(pending.args, indent=2).replace('"', "&quot;") in html
    assert '<pre class="mermaid">flowchart TD' in html and "checkout --&gt; test" in html
    assert render_run_html(waiting).count(pending.id) == 1


def test_html_escapes_tool_output_and_cuts_long_values() -> None:
    evil = "<script>alert(1)</script>"
    result = RunResult("r<1>", "failed", {"page": evil, "long": "x" * 5000}, None,
                       {"fetch": StepResult("fetch", "succeeded", output=evil, attempts=1),
                        "parse": StepResult("parse", "failed", error=evil,
                                            error_type="ValueError", attempts=2)})
    html = render_run_html(result, max_chars=500)
    assert "<script>" not in html and "r<1>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "ValueError: &lt;script&gt;" in html
    assert "more characters)" in html and "x" * 1000 not in html


def test_approve_button_approves_and_resumes(store: str, panel: ApprovalPanel) -> None:
    card = card_of(panel)
    card.approve_button.click()
    row = wait_row(store, "rel-1")
    assert row.status == "approved" and row.decision is not None
    assert row.decision["by"] == "alice" and row.decision["args"] is None
    result = panel.handle.result
    assert result.status == "completed" and result.steps["deploy"].status == "succeeded"
    assert panel.cards == {} and "completed" in panel.children[0].value


def test_reject_button_records_the_reason(store: str, panel: ApprovalPanel) -> None:
    card = card_of(panel)
    card.reason.value = "  freeze until Monday "
    card.reject_button.click()
    row = wait_row(store, "rel-1")
    assert row.status == "rejected" and row.decision is not None
    assert row.decision["reason"] == "freeze until Monday"
    result = panel.handle.result
    assert result.status != "waiting" and result.steps["deploy"].status == "rejected"
    assert panel.cards == {}


@pytest.mark.parametrize("text, error", [
    ('{"artifact": "a.tar.gz", ', "invalid JSON"),
    ('{"artifact": 7, "environment": "production"}', "7 is not of type 'string'"),
    ('["not", "an", "object"]', "must be a JSON object"),
])
def test_edit_with_bad_arguments_shows_the_error_and_changes_nothing(
        store: str, panel: ApprovalPanel, text: str, error: str) -> None:
    card = card_of(panel)
    assert card.edit_box.layout.display == "none"
    card.edit_button.click()
    assert card.edit_box.layout.display == ""
    card.editor.value = text
    card.save_button.click()
    assert error.replace("'", "&#x27;") in card.message.value
    assert wait_row(store, "rel-1").status == "pending"
    assert panel.handle.result.status == "waiting" and card_of(panel) is card
    assert not card.save_button.disabled


def test_edit_with_valid_arguments_approves_them_and_resumes(store: str,
                                                             panel: ApprovalPanel) -> None:
    card = card_of(panel)
    assert json.loads(card.editor.value) == card.pending.args
    edited = {**(card.pending.args or {}), "environment": "canary"}
    card.edit_button.click()
    card.editor.value = json.dumps(edited)
    card.save_button.click()
    row = wait_row(store, "rel-1")
    assert row.status == "approved" and row.decision is not None
    assert row.decision["args"] == edited
    result = panel.handle.result
    assert result.status == "completed"
    assert result.steps["deploy"].output["environment"] == "canary"
    assert result.outputs["url"].startswith("https://canary.")


def test_decision_on_a_decided_approval_is_shown_not_raised(store: str,
                                                            panel: ApprovalPanel) -> None:
    card = card_of(panel)
    Engine(store).reject("rel-1", card.pending.id, by="bob", reason="no")
    card.approve_button.click()
    assert "rejected" in card.message.value
    assert wait_row(store, "rel-1").status == "rejected"


def test_failed_resume_after_a_decision_is_shown_in_the_panel(store: str,
                                                              waiting: RunResult) -> None:
    panel = approval_panel(waiting, by="alice", store=store, tools=[])  # none to resume with
    card_of(panel).approve_button.click()
    assert wait_row(store, "rel-1").status == "approved"
    assert "resuming failed" in panel.message.value and "unknown tool" in panel.message.value
    assert panel.handle.result.status == "waiting"


def test_handle_reattaches_by_id_from_a_fresh_engine(tmp_path: Path, store: str,
                                                     waiting: RunResult) -> None:
    fresh = Engine(str(tmp_path / "runs.db"))
    handle = run("rel-1", store=fresh, tools=TOOLS)
    assert isinstance(handle, RunHandle) and handle.engine is fresh
    assert handle.result == fresh.get_run("rel-1")
    assert handle.result.pending == waiting.pending
    assert handle.refresh().status == "waiting"
    done = handle.approve(waiting.pending[0].id, by="carol", comment="ok")
    assert done.status == "completed" and done == Engine(store).get_run("rel-1")
    assert handle.resume() == done
    with pytest.raises(RunNotFound):
        run("no-such-run", store=fresh)


def test_panel_takes_a_run_id_or_a_result(store: str, waiting: RunResult) -> None:
    by_id = approval_panel("rel-1", by="alice", tools=TOOLS, store=store)
    by_result = approval_panel(waiting, by="alice", tools=TOOLS, store=store)
    assert list(by_id.cards) == list(by_result.cards) == [waiting.pending[0].id]
    handle_panel = approval_panel(by_id.handle)
    assert handle_panel.handle.tools == by_id.handle.tools and handle_panel.by


def test_html_of_a_code_plan_shows_its_source(store: str) -> None:
    source = 'if approve("Ship <b>it</b>?", size=3):\n    return {"shipped": True}\n'
    result = execute_plan(code_plan(source), run_id="code-1", store=store)
    assert result.status == "waiting"
    html = run("code-1", store=store)._repr_html_()
    assert "(code)</summary>" in html and 'class="mermaid"' not in html
    assert "Ship &lt;b&gt;it&lt;/b&gt;?" in html and "<b>it</b>" not in html
    assert "if approve(&quot;Ship" in html
    panel = approval_panel("code-1", by="alice", store=store)
    card_of(panel).approve_button.click()
    assert panel.handle.result.outputs == {"shipped": True} and panel.cards == {}


released = threading.Event()


@tool
def held() -> str:
    """Run until the test releases it (a minute at most: a safety net)."""
    released.wait(60)
    return "done"


def test_refresh_waits_while_the_run_executes_elsewhere(store: str) -> None:
    # The tool runs until the test has seen the run running: a 2 s sleep could end first
    # on a loaded machine.
    plan = {"format": "agentflow/v1", "name": "slow",
            "steps": [{"id": "nap", "tool": "held", "args": {}}],
            "outputs": {"nap": "${steps.nap.output}"}}
    released.clear()
    worker = threading.Thread(target=execute_plan, args=(plan,),
                              kwargs={"tools": [held], "run_id": "slow-1", "store": store})
    worker.start()
    engine = Engine(store)
    try:
        deadline = time.monotonic() + 60
        while engine.store.get_run("default", "slow-1") is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        handle = run("slow-1", store=engine)
        assert handle.refresh().status == "running"
    finally:
        released.set()
    assert handle.refresh(wait=60).outputs == {"nap": "done"}
    worker.join()
