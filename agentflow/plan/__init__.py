"""The plan layer: the JSON step-graph format, its validation and compiled form. Pure: no I/O."""

from agentflow.plan.conditions import Condition, compile_condition
from agentflow.plan.models import (
    APPROVAL_OUTPUT_SCHEMA,
    PLAN_FORMAT,
    ApprovalSpec,
    Plan,
    RetryPolicy,
    Step,
)
from agentflow.plan.references import (
    Reference,
    Scope,
    StepView,
    Template,
    compile_template,
    compile_text,
)
from agentflow.plan.schema import plan_schema
from agentflow.plan.validation import (
    SUBPLAN_TOOL_PREFIX,
    CompiledPlan,
    CompiledStep,
    StepKind,
    compile_plan,
    parse_plan,
    parse_timestamp,
    validate_inputs,
)

__all__ = [
    "APPROVAL_OUTPUT_SCHEMA", "PLAN_FORMAT", "SUBPLAN_TOOL_PREFIX", "ApprovalSpec",
    "CompiledPlan", "CompiledStep", "Condition", "Plan", "Reference", "RetryPolicy", "Scope",
    "Step", "StepKind", "StepView",
    "Template", "compile_condition", "compile_plan", "compile_template", "compile_text",
    "parse_plan", "parse_timestamp", "plan_schema", "validate_inputs",
]
