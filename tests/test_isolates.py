"""Isolates: code plans run in processes of their own, and the engine outlives whatever they do.

Looked at from outside through /proc (the isolates' fds, environment, directory, user and
limits), killed for real, and measured from the engine's own process: the beats of a
heartbeat thread while an isolate runs, and the engine's resident memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentflow import (
    Engine,
    RunResult,
    SandboxLimits,
    aexecute_plan,
    code_plan,
    execute_plan,
    resume,
    tool,
)
from agentflow.errors import IsolateCrashed, IsolateProtocolError
from agentflow.sandbox import IsolatePool, compile_code_plan, run_isolated
from agentflow.sandbox.channel import Channel
from agentflow.sandbox.pool import Isolate
from tests.support.isolates import (
    Heartbeat,
    limit_of,
    resident_bytes,
    running_isolate,
)

observed: dict[str, Any] = {}
executed: list[str] = []


@pytest.fixture
def engine(tmp_path: Path, pool: IsolatePool) -> Engine:
    observed.clear()
    executed.clear()
    return Engine(f"sqlite:///{tmp_path / 'runs.db'}", isolates=pool,
                  tools=[look, signal_isolate, count, isolate_threads])


@tool
def look() -> str:
    """Looks at the isolate that runs the plan calling it."""
    pid = running_isolate(observed["pool"])
    observed["pid"] = pid
    observed["fds"] = {fd: os.readlink(f"/proc/{pid}/fd/{fd}")
                       for fd in os.listdir(f"/proc/{pid}/fd")}
    observed["environ"] = Path(f"/proc/{pid}/environ").read_bytes()
    observed["cwd"] = os.listdir(f"/proc/{pid}/cwd")
    observed["uid"] = os.stat(f"/proc/{pid}").st_uid
    observed["limits"] = {name: limit_of(pid, name) for name in (
        "Max address space", "Max cpu time", "Max open files", "Max processes",
        "Max file size", "Max core file size")}
    return "seen"


@tool
def signal_isolate(number: int) -> str:
    """Sends a signal to the isolate running the calling plan (as a crash would come)."""
    os.kill(running_isolate(observed["pool"]), number)
    return "sent"


@tool
def isolate_threads() -> int:
    """How many threads the isolate running the calling plan has now."""
    return len(os.listdir(f"/proc/{running_isolate(observed['pool'])}/task"))


@tool
def count(label: str) -> str:
    executed.append(label)
    if "heartbeat" in observed:  # a test counts the engine's heartbeats from this call on
        observed["beats"] = observed["heartbeat"].beats
    return label


def test_a_code_plan_runs_in_an_isolate_that_holds_nothing_of_the_engine(
        engine: Engine, pool: IsolatePool) -> None:
    observed["pool"] = pool
    result = engine.execute(code_plan("return look()"))
    assert result.outputs == "seen"
    assert observed["pid"] != os.getpid()
    fds = observed["fds"]
    assert [fds.pop(fd) for fd in ("0", "1", "2")] == ["/dev/null"] * 3
    assert fds.pop("3").startswith("socket:")  # its channel
    assert set(fds.values()) <= {f"/proc/{observed['pid']}/statm"}  # its own memory gauge
    assert observed["environ"] == b""
    assert observed["cwd"] == []
    if os.geteuid() == 0:
        assert observed["uid"] not in (0, os.geteuid())  # a user of its own
    limits = observed["limits"]
    assert limits["Max address space"] != "unlimited"
    assert limits["Max cpu time"] == str(int(SandboxLimits().max_seconds) + 1)
    assert (limits["Max processes"], limits["Max file size"],
            limits["Max core file size"]) == ("0", "0", "0")
    assert int(limits["Max open files"]) <= 16
    assert _ends(observed["pid"])  # discarded after its one execution


def _ends(pid: int) -> bool:
    """Whether the process `pid` ends (or is a zombie) within 30 s."""
    for _ in range(3000):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def test_an_isolate_has_its_parallel_threads_and_no_more(
        engine: Engine, pool: IsolatePool) -> None:
    observed["pool"] = pool
    result = engine.execute(code_plan(
        "def middle():\n    return parallel([lambda: isolate_threads() for j in range(4)])\n"
        "return parallel([lambda: middle() for i in range(4)])"), max_concurrency=3)
    counts = [n for row in result.outputs for n in row]
    assert len(counts) == 16
    assert max(counts) <= 4  # the plan's thread, 2 helpers, the thread reading replies


def test_each_execution_gets_a_fresh_isolate(engine: Engine, pool: IsolatePool) -> None:
    observed["pool"] = pool
    engine.execute(code_plan("return look()"))
    first = observed["pid"]
    engine.execute(code_plan("return look()"))
    assert observed["pid"] != first


def test_callers_that_all_saw_one_warm_isolate_each_get_one() -> None:
    # Each of three callers passes its look at the queue before any takes the one warm
    # isolate (the barrier holds them): the pool must fork for the two left out. It once
    # forked only for a caller that saw no isolate, and one of four busy runs started
    # under load waited for an isolate no one had asked for until it timed out.
    pool = IsolatePool(warm=1)
    try:
        pool.release(pool.acquire())
        warm = pool._idle.get()  # the replacement is here: one warm isolate waits
        pool._idle.put(warm)
        barrier, take = threading.Barrier(3), pool._idle.get

        def get_together(timeout: float) -> Isolate:
            barrier.wait()
            return take(timeout=timeout)

        pool._idle.get = get_together  # type: ignore[method-assign,assignment]
        got: list[Isolate] = []
        callers = [threading.Thread(target=lambda: got.append(pool.acquire()))
                   for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert len({isolate.pid for isolate in got}) == 3, got
    finally:
        pool.close()


# Finding 6: single C-level operations escaped the time and memory limits and held the GIL.
C_LEVEL = {
    "colliding-hashes": "return len(set([i * 2305843009213693951 for i in range(80000)]))",
    "in-big-list": "big = 'a' * 10**7\nother = 'a' * (10**7 - 1) + 'b'\n"
                   "return other in [big] * 300000",
    # two distinct strings: one shared string sorts fast (identity shortcut)
    "sorted-big-strings": "a = 'a' * 10**7\nb = a[1:] + 'b'\nreturn len(sorted([a, b] * 4000))",
    "max-key-repr": "return len(max([[list(range(2000))] * 2000] * 100, key=repr))",
    "punycode": "return len(('\\u00e9' * 3000000).encode('punycode'))",
    "star-unpacking": "big = ['x'] * 9000000\nreturn len([*big, *big, *big, *big, *big])",
    "slice-doubling": "x = list(range(1000))\nwhile True:\n    x[0:0] = x",
    "utf32-hex": "return len(('a' * 10**7).encode('utf-32').hex())",
    "catch-memory-error": "x = list(range(1000))\ntry:\n    while True:\n        x[0:0] = x\n"
                          "except Exception:\n    return 'caught'",
}
LIMITS = SandboxLimits(max_seconds=1.0, max_memory_growth=300 << 20)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", C_LEVEL.values(), ids=C_LEVEL.keys())
def test_the_engine_stays_responsive_while_an_isolate_is_stopped(
        engine: Engine, source: str) -> None:
    with Heartbeat().running() as heartbeat:
        observed["heartbeat"] = heartbeat
        result = engine.execute(code_plan("count(label='first')\n" + source), limits=LIMITS)
        beats = heartbeat.beats - observed["beats"]  # from the plan's first call to its end
    assert result.status == "failed" and result.error is not None, result.outputs
    assert result.error.type in ("SandboxViolation", "IsolateTimedOut", "IsolateCpuExceeded",
                                 "IsolateOutOfMemory"), result.error
    assert engine.get_run(result.run_id).status == "failed"
    if result.error.type in ("IsolateTimedOut", "IsolateCpuExceeded"):
        # the isolate ran until its time was up: a frozen engine makes no beat meanwhile
        assert beats >= 3, f"the engine froze: {beats} heartbeat(s) while its isolate ran"


def test_a_plan_cannot_go_on_after_running_out_of_memory(engine: Engine) -> None:
    result = engine.execute(code_plan(C_LEVEL["catch-memory-error"]),
                            limits=SandboxLimits(max_memory_growth=300 << 20))
    assert result.error is not None and "memory" in result.error.message


def test_the_engine_does_not_grow_while_an_isolate_exhausts_its_memory(engine: Engine) -> None:
    engine.execute(code_plan("return 1"))  # the pool and the store are warm
    before = resident_bytes()
    result = engine.execute(code_plan(C_LEVEL["slice-doubling"]),
                            limits=SandboxLimits(max_memory_growth=600 << 20))
    assert result.error is not None and "memory" in result.error.message
    assert resident_bytes() - before < 50 << 20


# ~10 million characters (the most a return value may have), 60 MB once escaped as JSON:
# the isolate runs out of address space in its own code, sending it, not in plan code.
OUT_OF_ROOM = "look()\nreturn ['\\u00e9' * 1000] * 9900"


def test_an_isolate_out_of_memory_fails_its_run_clearly_and_is_replaced(
        engine: Engine, pool: IsolatePool, tmp_path: Path) -> None:
    observed["pool"] = pool
    engine.execute(code_plan("return 1"))  # the pool and the store are warm
    before = resident_bytes()
    for attempt in range(3):
        result = engine.execute(code_plan(OUT_OF_ROOM), run_id=f"greedy-{attempt}",
                                limits=SandboxLimits(max_memory_growth=1 << 20))
        assert result.status == "failed" and result.error is not None
        assert (result.error.type, result.error.message) == (
            "IsolateOutOfMemory", "memory limit exceeded: the isolate ran out of memory "
            "(SandboxLimits.max_memory_growth)")
        assert _ends(observed["pid"])
        stored = Engine(f"sqlite:///{tmp_path / 'runs.db'}").get_run(f"greedy-{attempt}")
        assert stored.error is not None and stored.error.type == "IsolateOutOfMemory"
    assert resident_bytes() - before < 50 << 20
    dead = observed["pid"]
    assert engine.execute(code_plan("return look()")).outputs == "seen"  # a fresh isolate
    assert observed["pid"] != dead


def test_one_tenants_memory_does_not_fail_another_tenant(engine: Engine) -> None:
    results: dict[str, RunResult] = {}

    def hog() -> None:
        results["hog"] = engine.execute(code_plan(C_LEVEL["slice-doubling"]), tenant="attacker",
                                        limits=SandboxLimits(max_memory_growth=400 << 20))

    attacker = threading.Thread(target=hog)
    attacker.start()
    results["victim"] = engine.execute(
        code_plan("chunks = []\nfor i in range(60):\n    chunks.append('v' * 1000000)\n"
                  "return len(chunks)"), tenant="victim",
        limits=SandboxLimits(max_memory_growth=200 << 20))
    attacker.join()
    assert (results["victim"].status, results["victim"].outputs) == ("completed", 60)
    assert results["hog"].status == "failed"


CRASH = "count(label='before')\nsignal_isolate(number={})\ncount(label='after')\nreturn 1"


@pytest.mark.parametrize(("number", "message"), [
    (signal.SIGSEGV, "crashed with SIGSEGV"), (signal.SIGKILL, "killed by SIGKILL"),
], ids=["segfault", "killed"])
def test_a_crashed_isolate_fails_the_execution_and_the_run_resumes_where_it_was(
        engine: Engine, pool: IsolatePool, number: int, message: str) -> None:
    observed["pool"] = pool
    with pytest.raises(IsolateCrashed, match=message):
        engine.execute(code_plan(CRASH.format(number)), run_id="crashing")
    assert executed == ["before"]
    assert engine.get_run("crashing").status == "running"  # released, tried again later
    resumed = engine.resume("crashing")  # the pool replaced the isolate
    assert (resumed.status, resumed.outputs) == ("completed", 1)
    assert executed == ["before", "after"]  # nothing ran twice


def test_an_isolate_past_its_cpu_limit_fails_the_run(engine: Engine, pool: IsolatePool) -> None:
    observed["pool"] = pool
    result = engine.execute(code_plan(CRASH.format(int(signal.SIGXCPU))))
    assert result.error is not None and result.error.type == "IsolateCpuExceeded"
    assert "CPU time limit exceeded" in result.error.message
    assert (engine.get_run(result.run_id).status, executed) == ("failed", ["before"])


def test_a_suspended_isolate_is_discarded_so_no_cleanup_runs_after_the_pause(
        engine: Engine) -> None:
    result = engine.execute(code_plan(
        "try:\n    approve('go?')\nfinally:\n    count(label='cleanup')\nreturn 1"))
    assert result.status == "waiting"
    assert executed == []


def test_an_isolate_that_breaks_the_protocol_is_killed(pool: IsolatePool) -> None:
    """Plan code that took its isolate over could send anything: a position that is not
    one, a binding that does not exist. Each is refused and the isolate killed."""
    compiled = compile_code_plan(code_plan("return 1"), {})
    for forged in ({"op": "call", "key": "c1; drop", "name": "count", "args": [],
                    "kwargs": {}},
                   {"op": "call", "key": "c1", "name": "os.system", "args": [], "kwargs": {}},
                   {"op": "replayed", "replayed": [["c1", "count", {}], ["c1", "count", {}]]},
                   {"op": "exec", "code": "1"}):
        engine_end, isolate_end = socket.socketpair()
        fake = _FakePool(Isolate(os.getpid(), engine_end))
        forger = threading.Thread(target=_forge, args=(Channel(isolate_end), forged))
        forger.start()
        with pytest.raises(IsolateProtocolError):
            run_isolated(fake, compiled.code, {"count": count.fn}, {},  # type: ignore[arg-type]
                         SandboxLimits(), max_concurrency=2, answers={},
                         verify=lambda *call: None)
        forger.join()


class _FakePool:
    def __init__(self, isolate: Isolate) -> None:
        self.isolate = isolate
        isolate.kill = lambda: None  # type: ignore[method-assign]  # it is this test's process

    def acquire(self, tenant: str | None = None) -> Isolate:
        return self.isolate

    def release(self, isolate: Isolate) -> None:
        isolate.channel.close()


def _forge(channel: Channel, message: dict[str, Any]) -> None:
    channel.receive()  # the run request
    channel.send(message)


@tool
def called_from_plan_code() -> bool:
    """Whether plan code's own frame is on this call's stack: only when it runs here."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename.startswith("<plan "):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def test_execute_plan_and_resume_choose_where_plan_code_runs(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    plan = code_plan("first = called_from_plan_code()\napprove('go?')\n"
                     "return [first, called_from_plan_code()]")
    waiting = execute_plan(plan, tools=[called_from_plan_code], store=store, run_id="r",
                           isolation="none")
    assert waiting.status == "waiting"
    decision = waiting.pending[0].id
    Engine(store).approve("r", decision, by="alice")
    done = resume("r", tools=[called_from_plan_code], store=store)  # default: an isolate
    assert (done.status, done.outputs) == ("completed", [True, False])
    isolated = asyncio.run(aexecute_plan(code_plan("return called_from_plan_code()"),
                                         tools=[called_from_plan_code], store=store))
    in_process = asyncio.run(aexecute_plan(code_plan("return called_from_plan_code()"),
                                           tools=[called_from_plan_code], store=store,
                                           isolation="none"))
    assert (isolated.outputs, in_process.outputs) == (False, True)
    with pytest.raises(ValueError, match="isolation must be 'process' or 'none', not 'thread'"):
        execute_plan(plan, store=store, isolation="thread")  # type: ignore[arg-type]
