"""The plan layer: the JSON step-graph format, its validation and compiled form. Pure: no I/O."""

from agentflow.plan.conditions import Condition, compile_condition
from agentflow.plan.models import PLAN_FORMAT, ApprovalSpec, Plan, RetryPolicy, Step
from agentflow.plan.references import Reference, Scope, StepView, Template, compile_template
from agentflow.plan.schema import plan_schema
from agentflow.plan.validation import CompiledPlan, CompiledStep, compile_plan, validate_inputs

__all__ = [
    "PLAN_FORMAT", "ApprovalSpec", "CompiledPlan", "CompiledStep", "Condition", "Plan",
    "Reference", "RetryPolicy", "Scope", "Step", "StepView", "Template", "compile_condition",
    "compile_plan", "compile_template", "plan_schema", "validate_inputs",
]
