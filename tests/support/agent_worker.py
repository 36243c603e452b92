"""Release tools that log each call to a side file, and `run_agent` over them in a process.

`python -m tests.support.agent_worker STORE BASE_URL RUN_ID SIDE_FILE` runs (or resumes)
the agent and prints the final run's status and outputs as JSON. `deploy` to "prod" fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import openai

from agentflow import Engine, RunResult, tool
from agentflow.llm import run_agent

GOAL = "Test, build and deploy v2."


def _log(name: str) -> None:
    with open(os.environ["AGENT_SIDE_FILE"], "a", encoding="utf-8") as side:
        side.write(name + "\n")


def calls(side_file: str | Path) -> list[str]:
    path = Path(side_file)
    return path.read_text(encoding="utf-8").split() if path.exists() else []


@tool
def run_tests(ref: str) -> dict[str, bool]:
    """Run the test suite at `ref`."""
    _log("run_tests")
    return {"passed": True}


@tool
def build(ref: str) -> dict[str, str]:
    """Build the release artifact of `ref`."""
    _log("build")
    return {"artifact": f"app-{ref}.whl"}


@tool
def deploy(artifact: str, env: str) -> dict[str, str]:
    """Deploy `artifact` to `env` ("staging" or "prod")."""
    _log(f"deploy:{env}")
    if env == "prod":
        raise RuntimeError("prod is locked this week")
    return {"url": f"https://{env}.example.com/{artifact}"}


TOOLS = [run_tests, build, deploy]


def run(engine: Engine, base_url: str, run_id: str) -> RunResult:
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    return run_agent(GOAL, tools=TOOLS, client=client, model="agent-model", run_id=run_id,
                     engine=engine)


if __name__ == "__main__":
    store, url, run_id, side = sys.argv[1:5]
    os.environ["AGENT_SIDE_FILE"] = side
    result = run(Engine(store), url, run_id)
    print(json.dumps({"status": result.status, "outputs": result.outputs}))
