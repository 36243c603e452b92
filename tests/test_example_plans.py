"""Every plan in plans/ validates and runs to completion with the demo tools, through the
`agentflow` command as a reader would use it: `plans put` for the sub-plan the release plans
run, `validate`, `run`, then `approve --resume` for each approval the run waits for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import cli

PLANS = Path(__file__).resolve().parent.parent / "plans"
DEMO = ("--tools", "agentflow.demo")
INPUTS = {"deploy_service.json": ("--input", "artifact=dist/app.tar.gz",
                                  "--input", "environment=staging")}
"""The inputs a plan requires (the others have defaults for every input)."""


def test_every_example_plan_is_covered() -> None:
    assert sorted(p.name for p in PLANS.iterdir()) == sorted(
        ["ci_pipeline.json", "ci_pipeline.py", "computed_release.json", "deploy_service.json",
         "release_with_approval.json", "release_with_subplan.json",
         "release_with_subplan.py", "research.json", "triage.py"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(p.name for p in PLANS.iterdir()))
def test_an_example_plan_validates_and_runs_with_the_demo_tools(name: str, store: str) -> None:
    registered = cli("plans", "put", "deploy_service", str(PLANS / "deploy_service.json"), *DEMO)
    assert registered.exit_code == 0, registered.output
    plan = str(PLANS / name)
    checked = cli("validate", plan, *DEMO)
    assert (checked.exit_code, checked.stdout.split(":")[0]) == (0, "valid"), checked.output
    started = cli("run", plan, *DEMO, *INPUTS.get(name, ()), "--run-id", "example")
    assert started.exit_code in (0, 3), started.output  # completed, or waiting
    if name.startswith("release_with_subplan"):  # its child's end is no event to send
        assert "its child run example/" in started.stdout, started.stdout
        assert "send-event" not in started.stdout
    approvals = 0
    while (run := json.loads(cli("show", "example", "--json").stdout))["status"] == "waiting":
        # what it waits for: approvals (a child run's shown on its parent) and its children
        waits = [wait for wait in run["pending"] if wait["kind"] == "approval"]
        assert waits, run["pending"]
        for wait in waits:  # approve them, as `run` printed how to
            approvals += 1
            decided = cli("approve", "example", wait["id"], "--by", "reader", "--resume",
                          *DEMO)
            assert decided.exit_code in (0, 3), decided.output
        assert approvals <= 4, "more approvals than any example asks for"
    assert run["status"] == "completed", run
