"""The sandbox layer: what restricted-Python plan code may do, and where and how it runs.

`compile_code_plan` validates a code plan against the tools and compiles it with the
sandbox's hooks; `run_code_plan` runs the result under `SandboxLimits` in this process,
`run_isolated` in an isolate process from an `IsolatePool`.
"""

from typing import Literal

from agentflow.sandbox.compiler import CompiledCodePlan, compile_code_plan
from agentflow.sandbox.limits import SandboxLimits
from agentflow.sandbox.pool import IsolatePool, default_pool
from agentflow.sandbox.runtime import run_code_plan
from agentflow.sandbox.session import CALLING_LINE, PlanError, run_isolated

#: Where code-plan code runs: in isolate processes, or (trusted code only) in the engine's.
Isolation = Literal["process", "none"]

__all__ = ["CALLING_LINE", "CompiledCodePlan", "IsolatePool", "Isolation", "PlanError",
           "SandboxLimits", "compile_code_plan", "default_pool", "run_code_plan", "run_isolated"]
