"""bench/torture.py, the crash torture anyone can run: real forked workers SIGKILLed at
random points, resumed, and checked against the contracts (DESIGN.md §2: 1, 2, 4, 5).

The short runs (30 kills) are part of the default suite; `pytest -m slow` runs 200 kills
over a graph plan and over a code plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.demo import TOOLS
from bench.torture import JournalAtKill, Report, RunChecker, torture

PLANS = Path(__file__).resolve().parent.parent / "plans"


def tortured(plan: str, kills: int, tmp_path: Path, seed: int = 7) -> Report:
    report = torture(PLANS / plan, kills, tools=TOOLS, inputs={}, workdir=tmp_path, seed=seed,
                     call_seconds=0.004)
    print("\n".join(report.lines()))
    return report


def assert_contracts_held(report: Report, kills: int) -> None:
    assert report.violations == []
    assert report.kills == kills and report.runs >= 1
    assert report.kills_in_flight > 0 and report.reexecuted_in_flight > 0  # kills mid-call


@pytest.mark.parametrize("plan", ["ci_pipeline.json", "ci_pipeline.py"])
def test_thirty_random_kills_break_no_contract(plan: str, tmp_path: Path) -> None:
    assert_contracts_held(tortured(plan, 30, tmp_path), 30)


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["ci_pipeline.json", "ci_pipeline.py", "triage.py"])
def test_two_hundred_random_kills_break_no_contract(plan: str, tmp_path: Path) -> None:
    assert_contracts_held(tortured(plan, 200, tmp_path, seed=11), 200)


def start(key: str, attempt: int, idem: str | None = None) -> dict[str, object]:
    return {"event": "start", "key": key, "attempt": attempt, "idem": idem or f"k/{key}"}


def checked(*segments: tuple[JournalAtKill, list[dict[str, object]]]) -> list[str]:
    report = Report("plan", 3)
    checker = RunChecker("r", report)
    for before, events in segments:
        checker.segment(before, events)
    return report.violations


# The checker is not blind: each broken contract is reported.

def test_a_completed_call_that_runs_again_is_a_violation() -> None:
    journal = JournalAtKill(done={"a"}, attempts={"a": 1}, in_flight={})
    assert checked((journal, [start("a", 2)])) == ["r: completed call a executed again"]


def test_a_retry_with_another_idempotency_key_is_a_violation() -> None:
    first = JournalAtKill(done=set(), attempts={}, in_flight={})
    journal = JournalAtKill(done=set(), attempts={"a": 1}, in_flight={"a": 1})
    assert checked((first, [start("a", 1)]), (journal, [start("a", 2, idem="other")])) == [
        "r: call a ran again with another idempotency key"]


def test_a_retry_that_repeats_the_journaled_attempt_is_a_violation() -> None:
    journal = JournalAtKill(done=set(), attempts={"a": 2}, in_flight={"a": 2})
    assert checked((journal, [start("a", 2)])) == [
        "r: call a ran again as attempt 2, not after the journaled attempt 2"]


def test_a_call_started_without_its_intent_and_one_never_retried_are_violations() -> None:
    report = Report("plan", 3)
    checker = RunChecker("r", report)
    checker.killed(JournalAtKill(done=set(), attempts={"b": 1}, in_flight={"b": 1}),
                   [start("a", 1), start("b", 1)])
    checker.finished({"x": 1}, {"x": 2})
    assert report.violations == [
        "r: call a (attempt 1) started before its intent was journaled",
        "r: outputs {'x': 1} differ from the uncrashed run's {'x': 2}",
        "r: in-flight call b was never executed again"]
