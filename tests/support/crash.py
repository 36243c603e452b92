"""The crash-test harness shared by the graph and code crash tests: start a plan's worker
process, read the side file its tools write, and SIGKILL it at a chosen point. The side file
is bench/torture.py's (`log_call`, `side_events`), so both read calls the same way."""

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
from agentflow.executors.identities import key_for_hash
from agentflow.store import JournalEntry, open_store
from bench.torture import log_call, side_events
from tests.support.stores import wait_for_dead_clients

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


def work(ctx: ToolContext, *parts: Any) -> int:
    """A tool's body: log the start, take 2-12 ms, log the end; a value from `parts`."""
    log_call("start", ctx)
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    time.sleep(0.002 + digest[0] / 255 * 0.010)
    log_call("end", ctx)
    return int.from_bytes(digest[:3], "big")


def read_journal(store: Path | str, run_id: str) -> list[JournalEntry]:
    """The run's journal, read through a store opened and closed for it."""
    opened = open_store(str(store))
    try:
        return opened.read_journal("default", run_id)
    finally:
        opened.close()


def journal_at_kill(store: Path, run_id: str
                    ) -> tuple[set[str], dict[str, tuple[int, str]]]:
    """After a kill: the call keys with a committed outcome, and the in-flight ones (an
    intent, no outcome) with their last attempt and the idempotency key of their first
    intent."""
    wait_for_dead_clients(str(store))
    journal = read_journal(store, run_id)
    finished = {e.key for e in journal if e.kind in ("result", "error")}
    intents = {e.key: e.attempt for e in journal if e.kind == "intent"}
    keys: dict[str, str] = {}
    for e in journal:
        if e.kind == "intent":
            keys.setdefault(e.key, key_for_hash("default", run_id, e.key, e.args_hash or ""))
    in_flight = {key: (attempt, keys[key]) for key, attempt in intents.items()
                 if key not in finished}
    assert finished or in_flight, "the kill came before the run started"
    return finished, in_flight


def assert_resumed_correctly(side: Path, before: int, run_id: str, finished: set[str],
                             in_flight: dict[str, tuple[int, str]]) -> None:
    """Contracts 1 and 2 over the side-file lines written since `before`: no call with a
    committed outcome ran again; each in-flight call ran again, a later attempt with the
    same idempotency key as its first attempt (the one of its first intent, also when the
    kill came before that attempt logged its start)."""
    events = side_events(side)
    idem_before = {e["key"]: e["idem"] for e in events[:before]}
    rerun = [e for e in events[before:] if e["event"] == "start"]
    assert not [e["key"] for e in rerun if e["key"] in finished], "a completed call ran again"
    for key, (attempt, journaled_key) in in_flight.items():
        again = [e for e in rerun if e["key"] == key]
        assert again, f"in-flight call {key} was not retried"
        assert again[0]["attempt"] > attempt
        assert again[0]["idem"] == idem_before.get(key, journaled_key) == journaled_key
