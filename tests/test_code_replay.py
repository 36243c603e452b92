"""Code plans run durably: replay from the journal, the hash pin, waits, approvals, limits.

Every resume re-runs the program from the top and answers each call from the journal by its
position (DESIGN.md §2 contract 5, §8). `executed` records every real tool execution, so each
test can tell a replayed call from a re-executed one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    AlreadyDecided,
    Engine,
    NotAnApprover,
    PendingNotFound,
    PlanMismatch,
    RunError,
    RunResult,
    SandboxLimits,
    code_plan,
    tool,
)
from agentflow.executors.journal import args_hash

executed: list[tuple[str, Any]] = []


@tool
def echo(x: int) -> int:
    executed.append(("echo", x))
    return x


@tool
def slow(i: int) -> int:
    """Call 0 takes 0.1 s, so in a concurrent fresh run thunk 1 of RACE finishes first."""
    executed.append(("slow", i))
    if i == 0:
        time.sleep(0.1)
    return i


@tool
def mark(label: str) -> str:
    executed.append(("mark", label))
    return label


@tool
def boom(x: int) -> int:
    executed.append(("boom", x))
    raise ValueError(f"bad {x}")


@tool(requires_approval=True)
def deploy(env: str) -> str:
    executed.append(("deploy", env))
    return f"deployed {env}"


TOOLS = [echo, slow, mark, boom, deploy]

# Thunks of a parallel() block append to a shared list as they finish: an order that is not
# journaled. Run with two threads, slow(i=0) sleeps, so done == [1, 0]; replayed with
# max_concurrency=1 the thunks run one after the other, so done == [0, 1]. `{tail}` branches
# on done[0]: on replay its call at position c2 has other arguments, or is another kind.
RACE = '''
done = []

def work(i):
    slow(i=i)
    done.append(i)

parallel([lambda i=i: work(i) for i in range(2)])
{tail}
approve("continue?")
return done
'''


@pytest.fixture(autouse=True)
def _reset() -> None:
    executed.clear()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(str(tmp_path / "runs.db"), tools=TOOLS, max_inline_wait=0.0)


def error_of(result: RunResult) -> RunError:
    assert result.error is not None, f"run ended {result.status}: {result.outputs}"
    return result.error


def snapshot(engine: Engine, run_id: str) -> Any:
    store = engine.store
    return (store.get_run("default", run_id), store.list_waits("default", run_id),
            store.read_journal("default", run_id))


def approve_and_resume(engine: Engine, run_id: str, **decision: Any) -> RunResult:
    [pending] = engine.get_run(run_id).pending
    engine.approve(run_id, pending.id, by="alice", **decision)
    return engine.resume(run_id)


def approve_and_replay_sequentially(engine: Engine, run_id: str) -> RunResult:
    [pending] = engine.get_run(run_id).pending
    engine.approve(run_id, pending.id, by="alice")
    return engine.resume(run_id, max_concurrency=1)


def reject_and_resume(engine: Engine, run_id: str) -> RunResult:
    [pending] = engine.get_run(run_id).pending
    engine.reject(run_id, pending.id, by="bob", reason="not now")
    return engine.resume(run_id)


# -- the hash pin and non-determinism ------------------------------------------------------


def test_a_changed_plan_is_refused_by_the_hash_pin_and_changes_nothing(engine: Engine) -> None:
    source = 'echo(x=1)\nif approve("go?"):\n    echo(x=2)\n'
    assert engine.execute(code_plan(source), run_id="r1").status == "waiting"
    before = snapshot(engine, "r1")
    with pytest.raises(PlanMismatch, match="r1"):
        engine.execute(code_plan(source.replace("x=2", "x=3")), run_id="r1")
    assert snapshot(engine, "r1") == before
    assert executed == [("echo", 1)]


def test_control_flow_that_differs_on_replay_fails_the_run_and_runs_nothing(
    engine: Engine,
) -> None:
    first = engine.execute(code_plan(RACE.format(tail="echo(x=done[0])")), run_id="r1",
                           max_concurrency=2)
    assert first.status == "waiting"
    assert sorted(executed) == [("echo", 1), ("slow", 0), ("slow", 1)]
    intents = [e for e in engine.journal("r1") if e.kind == "intent"]

    result = approve_and_replay_sequentially(engine, "r1")

    assert (result.status, error_of(result).type) == ("failed", "NonDeterminismError")
    assert error_of(result).message == (
        f"run 'r1': call at c2 differs from the journal: recorded echo(args hash "
        f"{args_hash({'x': 1})[:12]}, args {{'x': 1}}), replayed echo(args hash "
        f"{args_hash({'x': 0})[:12]}, args {{'x': 0}})")
    assert sorted(executed) == [("echo", 1), ("slow", 0), ("slow", 1)]
    assert [e for e in engine.journal("r1") if e.kind == "intent"] == intents


def test_plan_code_cannot_catch_a_non_determinism(engine: Engine) -> None:
    tail = "try:\n    echo(x=done[0])\nexcept Exception:\n    echo(x=99)"
    plan = code_plan(RACE.format(tail=tail))
    assert engine.execute(plan, run_id="r1", max_concurrency=2).status == "waiting"
    result = approve_and_replay_sequentially(engine, "r1")
    assert (result.status, error_of(result).type) == ("failed", "NonDeterminismError")
    assert ("echo", 99) not in executed


def test_a_failed_run_names_the_failing_call_position(engine: Engine) -> None:
    result = engine.execute(code_plan("x = echo(x=1)\nboom(x=x)\n"), run_id="r1")
    assert (result.status, error_of(result).step_id) == ("failed", "c2")


@pytest.mark.parametrize("builtin", ["now()", "approve('other?')", "sleep(seconds=0)",
                                     "wait_for_event('go')"])
def test_a_built_in_replayed_where_a_tool_call_was_journaled_is_a_non_determinism(
    engine: Engine, builtin: str,
) -> None:
    tail = f"if done[0] == 1:\n    echo(x=3)\nelse:\n    {builtin}"
    plan = code_plan(RACE.format(tail=tail))
    assert engine.execute(plan, run_id="r1", max_concurrency=2).status == "waiting"
    result = approve_and_replay_sequentially(engine, "r1")
    assert (result.status, error_of(result).type) == ("failed", "NonDeterminismError")
    assert "call at c2" in error_of(result).message


@pytest.mark.parametrize("builtin", ["now()", "sleep(seconds=0)", "approve('other?')"])
def test_a_tool_call_replayed_where_a_built_in_was_journaled_is_a_non_determinism(
    engine: Engine, builtin: str,
) -> None:
    tail = f"if done[0] == 1:\n    {builtin}\nelse:\n    echo(x=3)"
    plan = code_plan(RACE.format(tail=tail))
    assert engine.execute(plan, run_id="r1", max_concurrency=2).status == "waiting"
    result = approve_and_replay_sequentially(engine, "r1")
    assert (result.status, error_of(result).type) == ("failed", "NonDeterminismError")
    assert ("echo", 3) not in executed


def test_a_tool_whose_answer_shape_changed_is_replayed_from_the_journal(
    tmp_path: Path,
) -> None:
    @tool(name="fetch")
    def fetch_v1(n: int) -> dict[str, int]:
        return {"count": n}

    @tool(name="fetch")
    def fetch_v2(n: int) -> list[int]:
        return [n]

    engine = Engine(str(tmp_path / "runs.db"), max_inline_wait=0.0)
    plan = code_plan('first = fetch(n=3)\napprove("go?")\nreturn [first, fetch(n=4)]')
    assert engine.execute(plan, tools=[fetch_v1], run_id="r1").status == "waiting"
    [pending] = engine.get_run("r1").pending
    engine.approve("r1", pending.id, by="alice")
    result = engine.resume("r1", tools=[fetch_v2])
    assert (result.status, result.outputs) == ("completed", [{"count": 3}, [4]])


def test_now_read_twice_gets_the_same_values_on_replay(engine: Engine) -> None:
    plan = code_plan('''
a = now()
b = now()
if b >= a:
    mark(label=f"{a}/{b}")
approve("go?")
return [a, b]
''')
    assert engine.execute(plan, run_id="r1").status == "waiting"
    recorded = {e.key: e.data for e in engine.journal("r1") if e.tool == "now"}
    time.sleep(0.01)
    result = approve_and_resume(engine, "r1")
    assert (result.status, result.outputs) == ("completed", [recorded["c1"], recorded["c2"]])
    assert executed == [("mark", f"{recorded['c1']}/{recorded['c2']}")]


# -- waits -----------------------------------------------------------------------------------


def test_an_event_sent_after_the_wait_continues_the_run(engine: Engine) -> None:
    waiting = engine.execute(code_plan('return wait_for_event("ready")'), run_id="r1")
    assert [(p.kind, p.prompt) for p in waiting.pending] == [("event", "ready")]
    engine.send_event("r1", "ready", {"v": 1})
    assert engine.resume("r1").outputs == {"v": 1}


def test_an_event_sent_before_the_wait_is_delivered(engine: Engine) -> None:
    plan = code_plan('approve("start?")\nreturn wait_for_event("ready")')
    assert engine.execute(plan, run_id="r1").status == "waiting"
    engine.send_event("r1", "ready", 5)
    result = approve_and_resume(engine, "r1")
    assert (result.status, result.outputs) == ("completed", 5)


def test_an_event_timeout_is_a_catchable_tool_error(engine: Engine) -> None:
    plan = code_plan('''
try:
    return wait_for_event("ready", timeout=0.5)
except ToolCallError as error:
    return error.error_type
''')
    assert engine.execute(plan, run_id="r1").status == "waiting"
    time.sleep(0.6)
    assert engine.resume("r1").outputs == "StepTimeout"


TIMEOUT_THEN_APPROVE = code_plan('''
try:
    got = wait_for_event("ready", timeout=0.5)
except ToolCallError:
    got = "timed out"
echo(x=1 if got == "timed out" else 2)
approve("go?")
return got
''')


def wait_until_the_event_timed_out(engine: Engine) -> RunResult:
    assert engine.execute(TIMEOUT_THEN_APPROVE, run_id="r1").status == "waiting"
    time.sleep(0.6)
    return engine.resume("r1")


def test_an_event_after_the_timeout_does_not_change_the_replay(engine: Engine) -> None:
    waiting = wait_until_the_event_timed_out(engine)
    engine.send_event("r1", "ready", "late")
    [approval] = [p for p in waiting.pending if p.kind == "approval"]
    engine.approve("r1", approval.id, by="alice")
    result = engine.resume("r1")
    assert (result.status, result.outputs) == ("completed", "timed out")


def test_a_timed_out_event_is_no_longer_pending(engine: Engine) -> None:
    waiting = wait_until_the_event_timed_out(engine)
    assert [p.kind for p in waiting.pending] == ["approval"]


def test_a_long_sleep_leaves_the_run_waiting_on_a_timer(engine: Engine) -> None:
    plan = code_plan("echo(x=1)\nsleep(hours=1)\nreturn echo(x=2)")
    before = time.time()
    result = engine.execute(plan, run_id="r1")
    assert (result.status, [p.kind for p in result.pending]) == ("waiting", ["timer"])
    run = engine.store.get_run("default", "r1")
    assert run is not None and run.wake_at is not None
    assert before + 3600 <= run.wake_at <= time.time() + 3600
    assert engine.resume("r1").status == "waiting"
    assert executed == [("echo", 1)]


def test_a_due_sleep_continues_the_run(engine: Engine) -> None:
    plan = code_plan("echo(x=1)\nsleep(seconds=0.5)\nreturn echo(x=2)")
    assert engine.execute(plan, run_id="r1").status == "waiting"
    time.sleep(0.6)
    [result] = engine.run_due()
    assert (result.status, result.outputs) == ("completed", 2)
    assert executed == [("echo", 1), ("echo", 2)]


def test_a_short_sleep_is_sat_out_in_process(tmp_path: Path) -> None:
    engine = Engine(str(tmp_path / "runs.db"), tools=TOOLS, max_inline_wait=1.0)
    result = engine.execute(code_plan("sleep(seconds=0.5)\nreturn echo(x=2)"), run_id="r1")
    assert (result.status, result.outputs) == ("completed", 2)


# -- approvals -------------------------------------------------------------------------------

SHIP = code_plan('''
if approve("Ship v2?", version="v2"):
    echo(x=2)
    return "shipped"
return "held"
''')


def test_an_approval_waits_with_the_same_pending_record_as_json_plans(engine: Engine) -> None:
    result = engine.execute(SHIP, run_id="r1")
    [pending] = result.pending
    assert (result.status, pending.kind, pending.step_id, pending.prompt, pending.args,
            pending.tool, pending.status) == (
        "waiting", "approval", "c1", "Ship v2?", {"version": "v2"}, None, "pending")
    assert engine.get_run("r1").pending == [pending]


def test_a_waiting_approval_shows_as_a_waiting_step(engine: Engine) -> None:
    assert engine.execute(SHIP, run_id="r1").steps["c1"].status == "waiting"


def test_approve_returns_true_when_approved(engine: Engine) -> None:
    engine.execute(SHIP, run_id="r1")
    assert approve_and_resume(engine, "r1").outputs == "shipped"
    assert executed == [("echo", 2)]


def test_approve_returns_false_when_rejected(engine: Engine) -> None:
    engine.execute(SHIP, run_id="r1")
    result = reject_and_resume(engine, "r1")
    assert (result.status, result.outputs) == ("completed", "held")
    assert executed == []


def test_an_expired_approval_returns_false(engine: Engine) -> None:
    plan = code_plan('return approve("Ship?", expires_in=0.5)')
    assert engine.execute(plan, run_id="r1").status == "waiting"
    time.sleep(0.6)
    assert engine.resume("r1").outputs is False


def test_a_second_decision_is_refused_and_changes_nothing(engine: Engine) -> None:
    [pending] = engine.execute(SHIP, run_id="r1").pending
    decided = engine.approve("r1", pending.id, by="alice", comment="ok")
    assert (decided.status, decided.decision) == (
        "approved", {"by": "alice", "comment": "ok", "args": None})
    before = snapshot(engine, "r1")
    with pytest.raises(AlreadyDecided, match="approved by alice"):
        engine.reject("r1", pending.id, by="bob")
    with pytest.raises(PendingNotFound):
        engine.approve("r1", "c9:00000000", by="alice")
    assert snapshot(engine, "r1") == before


def test_only_the_named_approvers_may_decide(engine: Engine) -> None:
    plan = code_plan('return approve("Ship?", approvers=["alice"])')
    [pending] = engine.execute(plan, run_id="r1").pending
    with pytest.raises(NotAnApprover):
        engine.approve("r1", pending.id, by="mallory")
    engine.approve("r1", pending.id, by="alice")
    assert engine.resume("r1").outputs is True


def test_a_policy_gated_tool_waits_for_approval_then_runs_once(engine: Engine) -> None:
    result = engine.execute(code_plan('return deploy(env="prod")'), run_id="r1")
    [pending] = result.pending
    assert (pending.kind, pending.tool, pending.args) == ("approval", "deploy", {"env": "prod"})
    assert executed == []
    assert approve_and_resume(engine, "r1").outputs == "deployed prod"
    assert engine.resume("r1").outputs == "deployed prod"
    assert executed == [("deploy", "prod")]


def test_a_rejected_gated_tool_raises_a_catchable_tool_error(engine: Engine) -> None:
    plan = code_plan('''
try:
    return deploy(env="prod")
except ToolCallError as error:
    return [error.tool, error.error_type]
''')
    engine.execute(plan, run_id="r1")
    assert reject_and_resume(engine, "r1").outputs == ["deploy", "ApprovalRejected"]
    assert executed == []


def test_a_rejected_gated_tool_fails_the_run_when_not_caught(engine: Engine) -> None:
    engine.execute(code_plan('return deploy(env="prod")'), run_id="r1")
    result = reject_and_resume(engine, "r1")
    assert (result.status, error_of(result).type) == ("failed", "ToolCallError")
    assert "rejected by bob: not now" in error_of(result).message


def test_a_gated_tool_approved_with_edited_arguments_runs_the_edited_call(
    engine: Engine,
) -> None:
    engine.execute(code_plan('return deploy(env="prod")'), run_id="r1")
    result = approve_and_resume(engine, "r1", args={"env": "staging"})
    assert (result.outputs, executed) == ("deployed staging", [("deploy", "staging")])


# -- tool errors -----------------------------------------------------------------------------


def test_a_tool_error_is_a_catchable_tool_call_error(engine: Engine) -> None:
    plan = code_plan('''
try:
    boom(x=1)
except ToolCallError as error:
    return [error.tool, error.message, error.error_type]
''')
    assert engine.execute(plan, run_id="r1").outputs == ["boom", "bad 1", "ValueError"]


def test_an_uncaught_tool_error_fails_the_run_with_that_error(engine: Engine) -> None:
    result = engine.execute(code_plan("x = echo(x=1)\nboom(x=x)\necho(x=3)\n"), run_id="r1")
    assert (result.status, error_of(result).type, error_of(result).message) == (
        "failed", "ToolCallError", "tool 'boom' (call 'c2') failed: bad 1")
    assert engine.resume("r1").status == "failed"
    assert executed == [("echo", 1), ("boom", 1)]


# -- limits ----------------------------------------------------------------------------------

LOOP = "n = 0\nfor i in range(1000):\n    n += 1\nreturn n\n"


def test_the_operation_budget_fails_the_run_with_a_sandbox_violation(engine: Engine) -> None:
    result = engine.execute(code_plan(LOOP), run_id="r1",
                            limits=SandboxLimits(max_operations=100))
    assert (result.status, error_of(result).type) == ("failed", "SandboxViolation")
    assert "SandboxLimits.max_operations" in error_of(result).message


def test_the_limits_are_kept_across_a_resume(engine: Engine) -> None:
    plan = code_plan('approve("go?")\n' + LOOP)
    waiting = engine.execute(plan, run_id="r1", limits=SandboxLimits(max_operations=100))
    assert waiting.status == "waiting"
    result = approve_and_resume(engine, "r1")
    assert (result.status, error_of(result).type) == ("failed", "SandboxViolation")


def test_the_time_limit_fails_the_run_with_a_sandbox_violation(engine: Engine) -> None:
    plan = code_plan("n = 0\nwhile True:\n    n += 1\n")
    result = engine.execute(plan, run_id="r1", limits=SandboxLimits(max_seconds=0.2))
    assert (result.status, error_of(result).type) == ("failed", "SandboxViolation")
    assert "SandboxLimits.max_seconds" in error_of(result).message


def test_the_engine_keeps_working_after_a_limit(engine: Engine) -> None:
    engine.execute(code_plan(LOOP), run_id="r1", limits=SandboxLimits(max_operations=100))
    result = engine.execute(code_plan("return echo(x=4)"), run_id="r2")
    assert (result.status, result.outputs) == ("completed", 4)
    assert engine.execute(code_plan(LOOP), run_id="r3").outputs == 1000
