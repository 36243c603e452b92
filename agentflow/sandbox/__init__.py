"""The sandbox layer: what restricted-Python plan code may do, and where and how it runs.

`compile_code_plan` validates a code plan against the tools and compiles it with the
sandbox's hooks; `run_code_plan` runs the result under `SandboxLimits`.
"""

from agentflow.sandbox.compiler import CompiledCodePlan, compile_code_plan
from agentflow.sandbox.runtime import SandboxLimits, run_code_plan

__all__ = ["CompiledCodePlan", "SandboxLimits", "compile_code_plan", "run_code_plan"]
