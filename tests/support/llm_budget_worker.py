"""Three `llm` steps under a token budget, run (or resumed) in its own process.

`python -m tests.support.llm_budget_worker STORE BASE_URL RUN_ID` prints the run's status,
error type and outputs as JSON. The budget is given only when the run starts; a resume
must find it (and what was spent) in the store.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

from agentflow import RunResult, execute_plan, resume
from agentflow.llm import llm_tool

PLAN: dict[str, Any] = {
    "format": "agentflow/v1", "name": "three_llm_calls",
    "steps": [
        {"id": "one", "tool": "llm", "args": {"prompt": "one", "max_tokens": 10}},
        {"id": "two", "tool": "llm", "args": {"prompt": "two", "max_tokens": 10},
         "after": ["one"]},
        {"id": "three", "tool": "llm", "args": {"prompt": "three", "max_tokens": 10},
         "after": ["two"]},
    ],
}
BUDGET = {"llm_tokens": 100}


def run(store: str, base_url: str, run_id: str, *, start: bool = True) -> RunResult:
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    tools = [llm_tool(client, model="budget-model")]
    if start:
        return execute_plan(PLAN, tools=tools, run_id=run_id, store=store, budget=BUDGET)
    return resume(run_id, tools=tools, store=store)


if __name__ == "__main__":
    result = run(*sys.argv[1:4])
    print(json.dumps({"status": result.status, "outputs": result.outputs,
                      "error": result.error.type if result.error else None}))
