"""The rows a waiting run of `bench/idle_runs.py` writes: its plans (a 3-day approval, sleep
or event wait, then one no-op step), the rows the engine writes for each, and the check
that compares the rows of a store with them, column by column."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from agentflow import tool
from agentflow.executors.identities import approval_wait_id as wait_id_of
from agentflow.executors.journal import args_hash
from agentflow.plan import compile_plan

TENANT = "default"
HOLD = 3 * 86400.0  # approval expiry, sleep and event timeout: 3 days
KINDS = ("approval", "timer", "event")
TIME_COLUMNS = frozenset({"created_at", "updated_at", "wake_at", "lease_expires_at",
                          "expires_at", "decided_at", "at", "sent_at", "consumed_at"})
TIME_TOLERANCE = 5.0  # seconds between the engine's clock readings and the reference's
RUN_COLUMNS = ("tenant_id", "run_id", "plan_hash", "status", "inputs", "outputs", "error",
               "created_at", "updated_at", "wake_at", "lease_owner", "lease_expires_at",
               "options", "plan_name")
WAIT_COLUMNS = ("tenant_id", "run_id", "wait_id", "key", "kind", "plan_hash", "step_id",
                "tool", "args", "args_hash", "prompt", "approvers", "event_name", "expires_at",
                "on_expiry", "status", "decision", "consumed", "created_at", "decided_at",
                "args_schema")
JOURNAL_COLUMNS = ("tenant_id", "run_id", "seq", "key", "kind", "attempt", "tool", "args_hash",
                   "data", "at")
TABLE_COLUMNS = {"runs": RUN_COLUMNS, "waits": WAIT_COLUMNS, "journal": JOURNAL_COLUMNS}
_json = json.JSONEncoder(separators=(",", ":")).encode


@tool(side_effects=False)
def noop(x: int) -> int:
    return x


def idle_plan(kind: str) -> dict[str, Any]:
    """The plan of a run of `kind`: a wait of 3 days, then one no-op tool step."""
    firsts: dict[str, dict[str, Any]] = {
        "approval": {"id": "ok", "approval": {"prompt": "Refund order ${inputs.order_id}?",
                                              "expires_in": HOLD, "on_expiry": "reject"}},
        "timer": {"id": "nap", "sleep": HOLD},
        "event": {"id": "signal", "wait_for_event": "payment", "timeout": HOLD},
    }
    first = firsts[kind]
    return {"format": "agentflow/v1", "name": f"idle-{kind}",
            "inputs": {"type": "object", "properties": {"order_id": {"type": "integer"}},
                       "required": ["order_id"]},
            "steps": [first, {"id": "refund", "tool": "noop",
                              "args": {"x": "${inputs.order_id}"}, "after": [first["id"]]}],
            "outputs": {"refund": "${steps.refund.output}"}}


PLANS = {kind: compile_plan(idle_plan(kind), {"noop": noop}) for kind in KINDS}


def run_id_of(i: int) -> str:
    """Run `i`'s id: 32 random-looking hex digits, like the engine's uuid4 ids (so B-tree
    inserts land at random places), recomputable so no id list inflates this process."""
    return hashlib.blake2b(f"idle-{i}".encode(), digest_size=16).hexdigest()


def kind_of(i: int) -> str:
    return KINDS[i % 3]


def approval_wait_id(run_id: str, order_id: int) -> str:
    """The wait id of run `run_id`'s approval, as the engine makes it."""
    return wait_id_of(TENANT, run_id, "ok", args_hash({"prompt": f"Refund order {order_id}?"}))


def expected_rows(kind: str, run_id: str, order_id: int,
                  started: float) -> dict[str, list[tuple[Any, ...]]]:
    """The rows the engine writes for a run of `kind` that started at `started` and now
    waits, in `TABLE_COLUMNS` order. (The engine's later clock readings differ by a few
    milliseconds: `updated_at`, `at` and the due time are taken as `started` here.) Each
    kind journals one "wait" entry naming its step kind in `tool` (an approval: "approve",
    with the hash of its prompt)."""
    compiled = PLANS[kind]
    due = started + HOLD
    run = (TENANT, run_id, compiled.plan_hash, "waiting", _json({"order_id": order_id}),
           "null", None, started, started, due, None, None, "{}", f"idle-{kind}")
    common = (TENANT, run_id)
    wait: tuple[Any, ...]
    entry: tuple[Any, ...]
    if kind == "approval":
        prompt = f"Refund order {order_id}?"
        hashed = args_hash({"prompt": prompt})
        wait = (*common, approval_wait_id(run_id, order_id), "ok", "approval",
                compiled.plan_hash, "ok", None, None, hashed, prompt, None, None, due,
                "reject", "pending", None, 0, started, None, None)
        entry = (*common, 1, "ok", "wait", 0, "approve", hashed, "null", started)
        return {"runs": [run], "waits": [wait], "journal": [entry]}
    if kind == "timer":
        wait = (*common, "nap", "nap", "timer", compiled.plan_hash, "nap", None, None, None,
                None, None, None, due, None, "pending", None, 0, started, None, None)
        entry = (*common, 1, "nap", "wait", 0, "sleep", None, _json({"due": due}), started)
        return {"runs": [run], "waits": [wait], "journal": [entry]}
    wait = (*common, "signal", "signal", "event", compiled.plan_hash, "signal", None, None,
            None, None, None, "payment", due, None, "pending", None, 0, started, None, None)
    entry = (*common, 1, "signal", "wait", 0, "wait_for_event", None,
             _json({"due": due, "event": "payment"}), started)
    return {"runs": [run], "waits": [wait], "journal": [entry]}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= TIME_TOLERANCE
    return bool(a == b)


def stored_rows(conn: sqlite3.Connection, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the run in runs, waits, journal and events, as column -> value."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in (*TABLE_COLUMNS, "events"):
        order = "seq" if table == "journal" else "rowid"  # the journal has no rowid (v11)
        cursor = conn.execute(f"SELECT * FROM {table} WHERE tenant_id = ? AND run_id = ?"
                              f" ORDER BY {order}", (TENANT, run_id))
        names = [d[0] for d in cursor.description]
        rows[table] = [dict(zip(names, row, strict=True)) for row in cursor]
    return rows


def row_differences(conn: sqlite3.Connection, i: int) -> list[str]:
    """How run `i`'s stored rows differ from `expected_rows` (empty: identical), column by
    column; times within `TIME_TOLERANCE`, and wake_at == expires_at == the journaled due
    time exactly, as the engine writes them."""
    run_id = run_id_of(i)
    actual = stored_rows(conn, run_id)
    if len(actual["runs"]) != 1:
        return [f"run {i}: {len(actual['runs'])} runs rows"]
    started = actual["runs"][0]["created_at"]
    expected = expected_rows(kind_of(i), run_id, i, started)
    problems = []
    for table, rows in actual.items():
        wanted = [dict(zip(TABLE_COLUMNS[table], row, strict=True))
                  for row in expected.get(table, [])]
        if len(rows) != len(wanted):
            problems.append(f"{table}: {len(rows)} rows, expected {len(wanted)}")
            continue
        for got, want in zip(rows, wanted, strict=True):
            if got.keys() != want.keys():
                problems.append(f"{table}: columns {sorted(got.keys() ^ want.keys())} differ")
            for column in got.keys() & want.keys():
                a, b = got[column], want[column]
                if column in TIME_COLUMNS and a is not None and b is not None:
                    same = abs(a - b) <= TIME_TOLERANCE
                elif column == "data":
                    same = _close(json.loads(a), json.loads(b))
                else:
                    same = a == b
                if not same:
                    problems.append(f"{table}.{column}: {a!r}, expected {b!r}")
    wake = actual["runs"][0]["wake_at"]
    dues = [w["expires_at"] for w in actual["waits"]]
    dues += [json.loads(e["data"])["due"] for e in actual["journal"]
             if isinstance(json.loads(e["data"]), dict)]
    if any(due != wake for due in dues):
        problems.append(f"wake_at {wake!r} != expires_at/due {dues!r}")
    return [f"run {i} ({kind_of(i)}): {p}" for p in problems]
