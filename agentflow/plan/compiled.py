"""What validation makes of a plan: its compiled steps and plan, and the kinds a step
can be."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agentflow.plan.conditions import Condition
from agentflow.plan.models import Plan, Step
from agentflow.plan.references import Template, excerpt

StepKind = Literal["tool", "approval", "sleep", "wait_until", "wait_for_event", "plan"]
SUBPLAN_TOOL_PREFIX = "plan:"
"""A plan step's inputs are checked like a tool's arguments, against the tool named
"plan:" + the step's `plan` (the child plan's inputs schema), which the caller supplies:
validation itself knows no registry of plans."""
STEP_KINDS = ("tool", "approval", "sleep", "wait_until", "wait_for_event", "plan")
"""The fields that make a step's kind; a step has exactly one (approval may gate a tool)."""


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """A validated step with everything the executor needs precomputed.

    `kind` is what the step does:

    - "tool": call `tool` (its name) with `args`, once per item of `foreach` when set. When
      `step.approval` is set, each call first waits for a human decision on its resolved
      args; `prompt` is then the text shown (evaluated in the call's scope, so a foreach
      step's prompt may use `${item}` and `${index}`).
    - "approval": wait for a human decision on `prompt` (settings in `step.approval`); the
      output is the decision (`APPROVAL_OUTPUT_SCHEMA`).
    - "sleep": wait `step.sleep` seconds. "wait_until": wait until the time `wait_until`
      evaluates to (an ISO-8601 string with a timezone: `parse_timestamp`; checked at compile
      time when static). "wait_for_event": wait for the event named `step.wait_for_event`,
      giving up after `step.timeout` seconds when set; the output is the event's payload.
      Sleep and wait_until steps output None.

    `args` is an empty static template except on tool steps; `prompt` (a text template: it
    always evaluates to a string) is set exactly when `step.approval` is; `foreach` only on
    tool steps. `dependencies` are the steps it references (in args, foreach, prompt,
    wait_until and when) plus `after`; `dependents` are the steps that depend on it directly.
    Nothing transitive is precomputed: its size is quadratic in the length of a chain.
    """

    step: Step
    index: int
    kind: StepKind
    dependencies: frozenset[str]
    dependents: frozenset[str]
    args: Template
    foreach: Template | None
    condition: Condition | None
    tool: str | None
    prompt: Template | None = None
    wait_until: Template | None = None
    timeout: Template | None = None
    continue_on_error: Template | None = None


@dataclass(frozen=True)
class CompiledPlan:
    """A validated plan: its steps in dependency order (ties in plan order) and its identity.

    `canonical_json` is the plan without default values, keys sorted, compact; `plan_hash` is
    its sha256, which pins a run to the exact plan that started it.
    """

    plan: Plan
    plan_hash: str
    canonical_json: str
    steps: dict[str, CompiledStep]
    outputs: Template


def parse_timestamp(text: str) -> datetime:
    """An ISO-8601 time with a timezone (`2025-01-31T09:00:00+01:00`, `...Z`), as a datetime.

    Raises ValueError saying what is wrong; the executor uses it on the value a `wait_until`
    reference resolves to.
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{excerpt(text)!r} is not an ISO-8601 time such as "
                         "'2025-01-31T09:00:00+00:00'") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{excerpt(text)!r} has no timezone; add one, such as 'Z' or "
                         "'+01:00'")
    return moment


def _kinds(step: Step) -> list[StepKind | Literal["plan"]]:
    """The kinds a step states; an approval alongside a tool is that call's gate, not a kind."""
    kinds: list[StepKind | Literal["plan"]] = []
    if step.tool is not None:
        kinds.append("tool")
    elif step.approval is not None:
        kinds.append("approval")
    if step.sleep is not None:
        kinds.append("sleep")
    if step.wait_until is not None:
        kinds.append("wait_until")
    if step.wait_for_event is not None:
        kinds.append("wait_for_event")
    if step.plan is not None:
        kinds.append("plan")
    return kinds
