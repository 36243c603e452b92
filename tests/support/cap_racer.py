"""A process racing others to start a run of tenant acme under its policy's
`max_concurrent_runs`: `python -m tests.support.cap_racer STORE RUN_ID GO RELEASE`. Once the
file GO exists it executes a plan whose tool prints "started" and holds until the file
RELEASE exists; a refusal prints "refused"."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agentflow import Engine, tool
from agentflow.errors import TooManyRuns

PLAN = {"format": "agentflow/v1", "steps": [{"id": "hold", "tool": "hold", "args": {}}]}


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.005)


@tool
def hold() -> str:
    print("started", flush=True)
    _wait_for(Path(sys.argv[4]))
    return "held"


if __name__ == "__main__":
    store, run_id, go = sys.argv[1:4]
    engine = Engine(store)
    acme = engine.tenant("acme", tools=[hold])
    print("ready", flush=True)
    _wait_for(Path(go))
    try:
        print(acme.execute(PLAN, run_id=run_id).status, flush=True)
    except TooManyRuns:
        print("refused", flush=True)
    engine.close()
