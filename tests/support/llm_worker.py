"""A plan with two `llm` steps, run (or resumed) in its own process for the crash test.

`python -m tests.support.llm_worker STORE BASE_URL RUN_ID` prints the run's status and
outputs as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

from agentflow import RunResult, execute_plan
from agentflow.llm import llm_tool

PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "two_llm_calls",
    "steps": [
        {"id": "first", "tool": "llm", "args": {"prompt": "first: name a colour"}},
        {"id": "second", "tool": "llm",
         "args": {"prompt": "second: a fruit of colour ${steps.first.output.content}"}},
    ],
    "outputs": {"colour": "${steps.first.output.content}",
                "fruit": "${steps.second.output.content}"},
}


def run(store: str, base_url: str, run_id: str) -> RunResult:
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    return execute_plan(PLAN, tools=[llm_tool(client, model="worker-model")], run_id=run_id,
                        store=store)


if __name__ == "__main__":
    result = run(*sys.argv[1:4])
    print(json.dumps({"status": result.status, "outputs": result.outputs}))
