"""Every code block of the README runs, so the user's manual cannot rot.

Each Python block runs on its own, in a fresh namespace and a fresh directory holding a copy
of the repository's plans, as a reader pasting it into a new interpreter would; a block with
`<!-- continues -->` on the line above runs after the block before it, in its namespace and
directory, and one with `<!-- fragment -->` is not run;
JSON blocks must be valid plans for the demo tools; bash blocks run through the installed
`agentflow` entry point; the quickstart's test command must be the one CI runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.cli import reference as cli_reference
from agentflow.demo import TOOLS
from agentflow.llm import encode_strict_plan
from agentflow.plan import compile_plan
from agentflow.plan.schema_docs import END, START, reference_markdown
from tests.support.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
MARKED_PYTHON = re.findall(r"(?:<!-- (continues|fragment) -->\n)?```python\n(.*?)```", README,
                           flags=re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCKS if lang == language]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "plans", tmp_path / "plans")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    monkeypatch.delenv("AGENTFLOW_STORE", raising=False)
    return tmp_path


def test_the_plan_reference_is_generated_from_the_schema() -> None:
    section = README.split(START, 1)[1].split(END, 1)[0]
    assert section == "\n" + reference_markdown(), \
        "run: python -m agentflow.plan.schema_docs README.md"


def test_the_cli_reference_is_generated_from_the_commands() -> None:
    section = README.split(cli_reference.START, 1)[1].split(cli_reference.END, 1)[0]
    assert section == "\n" + cli_reference.reference_markdown(), \
        "run: python -m agentflow.cli.reference README.md"


# What the scripted model answers the README's plan_for example: a valid release plan.
RELEASE_PLAN = {
    "format": "agentflow/v1", "name": "release",
    "steps": [
        {"id": "checkout", "tool": "checkout", "args": {"ref": "main"}},
        {"id": "test", "tool": "run_tests", "foreach": "${steps.checkout.output.pythons}",
         "args": {"python": "${item}", "sha": "${steps.checkout.output.sha}"}},
        {"id": "build", "tool": "build", "args": {"sha": "${steps.checkout.output.sha}"},
         "after": ["test"]},
        {"id": "deploy", "tool": "deploy",
         "args": {"artifact": "${steps.build.output.artifact}", "environment": "staging"}},
    ],
}


def test_python_blocks_run(scratch: Path, openai_server: OpenAIServer,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    openai_server.script(json.dumps(encode_strict_plan(RELEASE_PLAN)))
    namespace: dict[str, object] = {}
    for number, (mark, body) in enumerate(MARKED_PYTHON, start=1):
        if mark == "fragment":
            continue
        if mark != "continues":  # a block of its own: a new reader in a new directory
            namespace = {"__name__": "readme"}
            fresh = scratch / f"block-{number}"
            shutil.copytree(ROOT / "plans", fresh / "plans")
            monkeypatch.chdir(fresh)
        exec(compile(body, f"README.md, python block {number}", "exec"), namespace)


def test_every_python_block_is_seen_with_its_mark() -> None:
    assert len(MARKED_PYTHON) == len(blocks("python"))


def test_json_blocks_are_valid_plans() -> None:
    tools = {t.name: t for t in TOOLS}
    for body in blocks("json"):
        compile_plan(json.loads(body), tools)


def test_quickstart_test_command_is_what_ci_runs() -> None:
    quickstart = blocks("bash")[:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert quickstart[1].strip() in ci
    assert "agentflow run plans/ci_pipeline.json --tools agentflow.demo" in quickstart[0]


def _agentflow(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command.split(">")[0])
    assert words[0] == "agentflow"
    done = subprocess.run([sys.executable, "-m", "agentflow.cli", *words[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if ">" in command:
        (cwd / command.split(">")[1].strip()).write_text(done.stdout, encoding="utf-8")
    return done


def test_quickstart_run_command_works(scratch: Path) -> None:
    command = blocks("bash")[0].split("&&")[-1].strip().removeprefix(".venv/bin/")
    done = _agentflow(command, scratch)
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout


def test_cli_block_runs(scratch: Path) -> None:
    from agentflow import Engine

    for line in blocks("bash")[2].strip().splitlines():
        if "PENDING_ID" in line:  # the id `agentflow run` printed for the waiting run
            [pending] = Engine("agentflow.db").get_run("rel-3").pending
            line = line.replace("deploy@approval:PENDING_ID", pending.id)
        done = _agentflow(line, scratch)
        expected = 3 if "release_with_approval" in line else 0  # 3: the run waits
        assert done.returncode == expected, (line, done.stdout, done.stderr)
    assert json.loads((scratch / "plan.schema.json").read_text())["title"]


def test_fleet_block_runs_on_the_test_store(scratch: Path, store_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker / submit / wait lines of the PostgreSQL section, on this pass's store (a
    SQLite file, or a schema of the test PostgreSQL server), with the worker in the
    background as the block starts it."""
    [fleet] = [body for body in blocks("sh") if "agentflow worker" in body]
    commands = [line.split("#")[0].strip() for line in fleet.splitlines()
                if line.startswith("agentflow ")]
    assert [command.split()[1] for command in commands] == ["worker", "submit", "wait"]
    monkeypatch.setenv("AGENTFLOW_STORE", store_url)
    worker_words = shlex.split(commands[0].removesuffix("&"))
    worker = subprocess.Popen([sys.executable, "-m", "agentflow.cli", *worker_words[1:],
                               "--concurrency", "2"], cwd=scratch,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        submitted = _agentflow(commands[1], scratch)
        assert (submitted.returncode, submitted.stdout) == (0, "ci-1\n"), submitted.stderr
        waited = _agentflow(commands[2], scratch)
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout == "run ci-1 completed\n"
    finally:
        worker.terminate()
        worker.wait(timeout=60)
