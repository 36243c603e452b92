"""Crash torture: run any plan, SIGKILL it at random points N times, and check the contracts.

    python bench/torture.py plans/ci_pipeline.json --kills 1000
    python bench/torture.py plans/ci_pipeline.py --kills 1000 --tools agentflow.demo

The plan (a JSON graph or a code plan) first runs once uncrashed, for its outputs and its
number of calls. Then runs of it are started in forked worker processes (each in its own
process group, so isolates die with it) and killed with SIGKILL: after a random number of
tool calls have started and a random part of a call (or before the first call), and resumed
by the next worker, until the run completes; then the next run starts, until N kills have
landed. Approvals a run waits for are granted, timers are waited out. Every tool call writes
a `start` and an `end` line (call key, idempotency key, attempt) to a side file, and after
each kill the journal is read. The contracts checked (DESIGN.md §2):

- a call with a committed result at a kill never starts again (contract 1);
- a call started again is one in flight at a kill: a later attempt than any the journal
  holds, with the same idempotency key as before; every in-flight call is started again (2);
- a call never starts before its intent is in the journal (so a kill cannot lose it);
- each run ends with the outputs of the uncrashed run (4, and 5 for code plans).

Killing a run also kills its lease holder, so the next worker takes the run over at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import Engine, ToolContext
from agentflow.store import open_store
from agentflow.tools import Tool, tools_from_module

SIDE_FILE_VARIABLE = "CRASH_SIDE_FILE"


# -- the side file: what tools did, written by the tools themselves ---------------------------

def log_call(event: str, ctx: ToolContext) -> None:
    """Append a start or end line for this call to the side file ($CRASH_SIDE_FILE)."""
    line = json.dumps({"event": event, "key": ctx.call_key, "idem": ctx.idempotency_key,
                       "attempt": ctx.attempt, "pid": os.getpid()})
    with open(os.environ[SIDE_FILE_VARIABLE], "a", encoding="utf-8") as side:
        side.write(line + "\n")


def side_events(side: Path) -> list[dict[str, Any]]:
    """The start/end lines the tools wrote (a line cut short by a kill is skipped)."""
    if not side.exists():
        return []
    lines = side.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def logged(tool: Tool) -> Tool:
    """`tool`, writing a start line before it works and an end line after."""
    context_param = tool.context_param or "torture_ctx"
    passes_context = tool.context_param is not None

    def split(kwargs: dict[str, Any]) -> tuple[ToolContext, dict[str, Any]]:
        ctx = kwargs[context_param] if passes_context else kwargs.pop(context_param)
        return ctx, kwargs

    if tool.is_async:
        async def run_async(**kwargs: Any) -> Any:
            ctx, kwargs = split(kwargs)
            log_call("start", ctx)
            value = await tool.fn(**kwargs)
            log_call("end", ctx)
            return value
        body: Callable[..., Any] = run_async
    else:
        def run(**kwargs: Any) -> Any:
            ctx, kwargs = split(kwargs)
            log_call("start", ctx)
            value = tool.fn(**kwargs)
            log_call("end", ctx)
            return value
        body = run
    functools.update_wrapper(body, tool.fn)
    return dataclasses.replace(tool, fn=body, context_param=context_param)


# -- one worker: a forked process that runs (or resumes) the run -------------------------------

@dataclass
class Setup:
    plan: Path
    tools: list[Tool]
    inputs: dict[str, Any]
    store: str


def fork_worker(setup: Setup, run_id: str, side: Path, outcome: Path) -> int:
    """Fork a process (its own process group) that runs `run_id` to its end or its first wait
    and writes {status, outputs, pending} to `outcome`; its pid."""
    pid = os.fork()
    if pid:
        os.setpgid(pid, pid)  # here too, so that a kill right after the fork finds the group
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        os.environ[SIDE_FILE_VARIABLE] = str(side)
        engine = Engine(setup.store)
        result = engine.execute(str(setup.plan), tools=setup.tools, inputs=setup.inputs,
                                run_id=run_id)
        summary = {"status": result.status, "outputs": result.outputs,
                   "error": str(result.error) if result.error else None,
                   "pending": [[p.id, p.kind, p.expires_at] for p in result.pending]}
        engine.close()
        outcome.write_text(json.dumps(summary), encoding="utf-8")
        code = 0
    except BaseException as error:  # the child must never return into the harness
        outcome.write_text(json.dumps({"status": "crashed", "error": repr(error)}))
    finally:
        os._exit(code)


def read_outcome(outcome: Path) -> dict[str, Any]:
    """What a worker that ended on its own wrote; a worker that failed is an error."""
    result: dict[str, Any] = json.loads(outcome.read_text(encoding="utf-8"))
    outcome.unlink()
    if result["status"] == "crashed":
        raise RuntimeError(f"the worker failed: {result['error']}")
    return result


def settle_waits(setup: Setup, run_id: str, result: dict[str, Any]) -> None:
    """Grant every approval the run waits for and sit out its timers."""
    engine = Engine(setup.store)
    try:
        for pending_id, kind, expires_at in result["pending"]:
            if kind == "approval":
                engine.approve(run_id, pending_id, by="torture")
            elif kind == "timer":
                time.sleep(max(0.0, (expires_at or 0.0) - time.time()))
            else:
                raise RuntimeError(f"run {run_id} waits for an {kind}: torture cannot send it")
    finally:
        engine.close()


# -- the contracts ----------------------------------------------------------------------------

@dataclass
class JournalAtKill:
    """What the journal held when a worker was killed."""

    done: set[str]
    attempts: dict[str, int]  # highest attempt journaled (intent or outcome) per call key
    in_flight: dict[str, int]  # intent without an outcome: call key -> its attempt

    @classmethod
    def read(cls, store: str, run_id: str) -> JournalAtKill:
        reader = open_store(store)
        try:
            journal = reader.read_journal("default", run_id)
        finally:
            reader.close()
        done = {e.key for e in journal if e.kind == "result"}
        ended = {(e.key, e.attempt) for e in journal if e.kind in ("result", "error")}
        attempts: dict[str, int] = {}
        in_flight: dict[str, int] = {}
        for entry in journal:
            if entry.kind in ("intent", "error", "result"):
                attempts[entry.key] = max(attempts.get(entry.key, 0), entry.attempt)
            if entry.kind == "intent" and (entry.key, entry.attempt) not in ended:
                in_flight[entry.key] = entry.attempt
        return cls(done, attempts, {k: a for k, a in in_flight.items() if k not in done})


@dataclass
class Report:
    plan: str
    calls_per_run: int
    kills: int = 0
    runs: int = 0
    kills_in_flight: int = 0
    kills_between_calls: int = 0
    kills_before_first_call: int = 0
    reexecuted_in_flight: int = 0
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"torture {self.plan}: {self.kills} kills over {self.runs} completed runs "
            f"({self.calls_per_run} calls per uncrashed run)",
            f"  kills with a call in flight: {self.kills_in_flight}; between calls: "
            f"{self.kills_between_calls}; before the run's first call: "
            f"{self.kills_before_first_call}",
            f"  in-flight calls executed again (same idempotency key, later attempt): "
            f"{self.reexecuted_in_flight}",
            f"  completed calls executed again: "
            f"{sum('completed call' in v for v in self.violations)}",
            f"  runs whose outputs differ from the uncrashed run: "
            f"{sum('outputs' in v for v in self.violations)} of {self.runs}",
            f"  contract violations: {len(self.violations)}",
            *(f"  VIOLATION {v}" for v in self.violations[:20]),
        ]


class RunChecker:
    """The contracts over one run, segment by segment (one worker each)."""

    def __init__(self, run_id: str, report: Report) -> None:
        self.run_id = run_id
        self.report = report
        self.idem: dict[str, str] = {}
        self.owed: dict[str, int] = {}  # in flight at a kill, not yet started again

    def violation(self, text: str) -> None:
        self.report.violations.append(f"{self.run_id}: {text}")

    def segment(self, before: JournalAtKill, events: list[dict[str, Any]]) -> None:
        """Check the calls a worker started against the journal it started from."""
        for event in events:
            if event["event"] != "start":
                continue
            key, attempt = event["key"], event["attempt"]
            if event["idem"] != self.idem.setdefault(key, event["idem"]):
                self.violation(f"call {key} ran again with another idempotency key")
            if key in before.done:
                self.violation(f"completed call {key} executed again")
            elif key in before.attempts and attempt <= before.attempts[key]:
                self.violation(f"call {key} ran again as attempt {attempt}, not after the "
                               f"journaled attempt {before.attempts[key]}")
            if key in self.owed:
                del self.owed[key]
                self.report.reexecuted_in_flight += 1

    def killed(self, at_kill: JournalAtKill, events: list[dict[str, Any]]) -> None:
        """After a kill: every call started had its intent journaled first, and the calls
        in flight are owed a new attempt."""
        for event in events:
            if event["event"] == "start" and \
                    at_kill.attempts.get(event["key"], 0) < event["attempt"]:
                self.violation(f"call {event['key']} (attempt {event['attempt']}) started "
                               "before its intent was journaled")
        self.owed.update(at_kill.in_flight)

    def finished(self, outputs: Any, expected: Any) -> None:
        if outputs != expected:
            self.violation(f"outputs {outputs!r} differ from the uncrashed run's {expected!r}")
        for key in self.owed:
            self.violation(f"in-flight call {key} was never executed again")


class SideFile:
    """A side file read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = ""

    def new_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as side:
            side.seek(self.offset)
            text = side.read()
        self.offset += len(text.encode())
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        return [json.loads(line) for line in lines if line.endswith("}")]


# -- the torture loop -------------------------------------------------------------------------

def uncrashed(setup: Setup, workdir: Path) -> tuple[Any, int]:
    """The outputs of an uncrashed run and how many calls it started."""
    side, run_id = workdir / "baseline.side", "baseline"
    while True:
        pid = fork_worker(setup, run_id, side, workdir / "outcome")
        os.waitpid(pid, 0)
        result = read_outcome(workdir / "outcome")
        if result["status"] != "waiting":
            break
        settle_waits(setup, run_id, result)
    if result["status"] != "completed":
        raise RuntimeError(f"the uncrashed run ended {result['status']}: {result['error']}")
    starts = [e for e in side_events(side) if e["event"] == "start"]
    return result["outputs"], len(starts)


def torture(plan: Path, kills: int, *, tools: list[Tool], inputs: dict[str, Any],
            workdir: Path, seed: int, call_seconds: float) -> Report:
    """Kill runs of `plan` `kills` times and check the contracts; the report."""
    rng = random.Random(seed)
    os.environ["AGENTFLOW_DEMO_DELAY"] = str(call_seconds)
    setup = Setup(plan, [logged(t) for t in tools], inputs, str(workdir / "runs.db"))
    expected, calls = uncrashed(setup, workdir)
    report = Report(str(plan), calls)
    outcome = workdir / "outcome"
    while report.kills < kills:
        run_id = f"run-{report.runs + 1}"
        side = SideFile(workdir / f"{run_id}.side")
        checker = RunChecker(run_id, report)
        started = 0
        while True:
            before = JournalAtKill.read(setup.store, run_id)
            target = rng.randint(0, max(1, calls - started)) if report.kills < kills else -1
            pid = fork_worker(setup, run_id, side.path, outcome)
            events, ended = killed_at(pid, side, target, rng, call_seconds)
            started += sum(e["event"] == "start" for e in events)
            checker.segment(before, events)
            if not ended:
                outcome.unlink(missing_ok=True)  # it may have finished just before the kill
                at_kill = JournalAtKill.read(setup.store, run_id)
                count_kill(report, at_kill, started)
                checker.killed(at_kill, events)
                continue
            result = read_outcome(outcome)
            if result["status"] == "waiting":
                settle_waits(setup, run_id, result)
                continue
            checker.finished(result["outputs"], expected)
            report.runs += 1
            break
    return report


def killed_at(pid: int, side: SideFile, target: int, rng: random.Random,
              call_seconds: float) -> tuple[list[dict[str, Any]], bool]:
    """Wait for `target` new call starts (0: none; -1: the end) and SIGKILL the worker's
    process group a random part of a call later. The side events seen, and whether the
    worker ended on its own; the worker is reaped either way."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while target < 0 or sum(e["event"] == "start" for e in events) < target:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return events + side.new_events(), True
        if time.monotonic() > deadline:
            raise RuntimeError("the worker made no progress for two minutes")
        events += side.new_events()
        time.sleep(0.0005)
    time.sleep(rng.uniform(0, 1.5 * call_seconds) if target else rng.uniform(0, 0.05))
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return events + side.new_events(), False


def count_kill(report: Report, at_kill: JournalAtKill, started: int) -> None:
    report.kills += 1
    if at_kill.in_flight:
        report.kills_in_flight += 1
    elif started:
        report.kills_between_calls += 1
    else:
        report.kills_before_first_call += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path, help="a plan file: .json or .py")
    parser.add_argument("--kills", type=int, default=100,
                        help="SIGKILLs to land before checking (default: 100)")
    parser.add_argument("--tools", default="agentflow.demo", help="a module with TOOLS")
    parser.add_argument("--inputs", default="{}", help="the run's inputs, as JSON")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the random choice of where each kill lands")
    parser.add_argument("--call-seconds", type=float, default=0.004,
                        help="how long each demo tool call takes (AGENTFLOW_DEMO_DELAY)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torture-") as workdir:
        started = time.monotonic()
        report = torture(options.plan, options.kills, tools=tools_from_module(options.tools),
                         inputs=json.loads(options.inputs), workdir=Path(workdir),
                         seed=options.seed, call_seconds=options.call_seconds)
    print("\n".join(report.lines()))
    print(f"  seed {options.seed}, {options.call_seconds * 1e3:g} ms per call, "
          f"{time.monotonic() - started:.0f} s")
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
