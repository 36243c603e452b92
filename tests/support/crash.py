"""The crash-test harness shared by the graph and code crash tests: start a plan's worker
process, read the side file its tools write, and SIGKILL it at a chosen point."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentflow import ToolContext

ROOT = Path(__file__).resolve().parent.parent.parent


def start_worker(module: str, store: Path, side: Path, run_id: str) -> subprocess.Popen[str]:
    """`python -m MODULE STORE SIDE RUN_ID` in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", module, str(store), str(side), run_id],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_worker(module: str, store: Path, side: Path, run_id: str) -> dict[str, Any]:
    """Run the worker to its end; the JSON summary it printed last."""
    worker = start_worker(module, store, side, run_id)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def side_events(side: Path) -> list[dict[str, Any]]:
    """The start/end lines the tools wrote (a line cut short by a kill is skipped)."""
    if not side.exists():
        return []
    lines = side.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def kill_after_starts(worker: subprocess.Popen[str], side: Path, starts: int) -> None:
    """SIGKILL the worker as soon as `starts` tool calls have begun (plus a random jitter)."""
    deadline = time.monotonic() + 60
    while sum(e["event"] == "start" for e in side_events(side)) < starts:
        assert worker.poll() is None, "worker finished before the kill point"
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.0005)
    time.sleep(random.uniform(0, 0.004))
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def log_call(event: str, ctx: ToolContext) -> None:
    """Append a start or end line for this call to the side file ($CRASH_SIDE_FILE)."""
    line = json.dumps({"event": event, "key": ctx.call_key, "idem": ctx.idempotency_key,
                       "attempt": ctx.attempt, "pid": os.getpid()})
    with open(os.environ["CRASH_SIDE_FILE"], "a", encoding="utf-8") as side:
        side.write(line + "\n")


def work(ctx: ToolContext, *parts: Any) -> int:
    """A tool's body: log the start, take 2-12 ms, log the end; a value from `parts`."""
    log_call("start", ctx)
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    time.sleep(0.002 + digest[0] / 255 * 0.010)
    log_call("end", ctx)
    return int.from_bytes(digest[:3], "big")
