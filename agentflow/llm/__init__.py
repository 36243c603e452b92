"""LLM fronts: plans written by a model (`plan_for`, or step by step as it writes:
`stream_plan`, run while it writes: `run_streamed`), model calls as durable plan steps
(`llm_tool`), and a durable plan-execute-replan loop (`run_agent`).

Needs the `openai` package (`pip install agentflow[llm]`); any OpenAI-compatible endpoint
works (`base_url`, OPENAI_BASE_URL, OPENAI_API_KEY).
"""

from agentflow.llm.agent import run_agent
from agentflow.llm.errors import LLMResponseError, PlanningFailed
from agentflow.llm.planner import plan_for
from agentflow.llm.schema import decode_strict_plan, encode_strict_plan, strict_plan_schema
from agentflow.llm.steps import LLMResult, LLMTool, llm_tool
from agentflow.llm.streaming import PlanReady, StepReady, run_streamed, stream_plan

__all__ = [
    "LLMResponseError", "LLMResult", "LLMTool", "PlanReady", "PlanningFailed", "StepReady",
    "decode_strict_plan", "encode_strict_plan", "llm_tool", "plan_for", "run_agent",
    "run_streamed", "stream_plan", "strict_plan_schema",
]
