"""The JSON step-graph plan format, `agentflow/v1`, as pydantic models.

The format is the product's most public interface: LLMs write it. Unknown fields are
rejected (a typo must not silently change a plan), and every field carries a description
that ends up in `plan_schema()`, which an LLM's structured output can target.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
MAX_STEP_ID_LENGTH: Final = 100
"""Longest step id: each call's journal key repeats it (per foreach item too), outside the
journal quotas, so an unbounded id multiplied the store a run could fill."""
EVENT_NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
MAX_EVENT_NAME_LENGTH: Final = 200
"""Longest event name: each event and each wait for one keeps it, as a run keeps its id."""


def check_event_name(name: Any, rule_of: str) -> str:
    """`name` if it is an event name (`EVENT_NAME_PATTERN`, at most `MAX_EVENT_NAME_LENGTH`
    characters); `ValueError` otherwise, naming it and `rule_of` (whose rule it follows)."""
    if not isinstance(name, str) or re.fullmatch(EVENT_NAME_PATTERN, name) is None:
        raise ValueError(f"invalid event name {name!r:.100}: use letters, digits, '_', '.', "
                         f"':' and '-' ({rule_of})")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise ValueError(f"event name {name[:40]!r}... has {len(name):,} characters, more "
                         f"than {MAX_EVENT_NAME_LENGTH} ({rule_of})")
    return name

PLAN_FORMAT: Final = "agentflow/v1"
MAX_SECONDS: Final = 10 * 366 * 86400
"""Longest duration a plan may state (sleep, timeout, expiry): about ten years."""

APPROVAL_OUTPUT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "approved": {"type": "boolean"},
        "by": {"type": "string"},
        "comment": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]},
    },
    "required": ["approved", "by", "comment", "reason"],
    "additionalProperties": False,
}
"""The output of an approval step: the decision. `by` is who decided (or who/what expired
it), `comment` the approver's note, `reason` why it was rejected (None when approved)."""

_Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RetryPolicy(_Model):
    """How a failed tool call is retried: exponential backoff with jitter. On a plan step,
    a failed child run is followed by a new child run (`PARENT/STEP~2`, ...)."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Total attempts including the first.")
    initial_delay: Annotated[float, Field(ge=0, le=86400)] = Field(
        1.0, description="Seconds before the second attempt.")
    backoff: Annotated[float, Field(ge=1, le=10)] = Field(
        2.0, description="Each further delay is the previous one times this factor.")
    max_delay: Annotated[float, Field(ge=0, le=86400)] = Field(
        300.0, description="Upper bound of any single delay, in seconds.")
    jitter: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="Random extra delay, as a fraction of the delay.")
    retry_on: list[str] | None = Field(
        None, description="Error type names that are retried (e.g. ['TimeoutError']); "
        "default: every error except invalid arguments.")


class ApprovalSpec(_Model):
    """A human decision gate: a step of its own, or on a tool step, before the call runs."""

    prompt: str = Field(
        description="What the approver is asked; may contain ${...} references (interpolated "
        "as text).")
    approvers: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="Who may decide (names or groups); default: anyone.")
    expires_in: _Seconds | None = Field(
        None, description="Seconds until the approval expires; default: never.")
    on_expiry: Literal["reject", "approve", "fail"] = Field(
        "reject", description="What an expired approval counts as: a rejection, an approval, "
        "or a failure of the step.")
    on_reject: Literal["fail", "skip", "continue"] = Field(
        "skip", description="On rejection: fail the run, skip the step's dependents, or "
        "continue (the step counts as succeeded for success(); an approval step's output has "
        "approved=false and the reason).")


class Step(_Model):
    """One node of the plan graph. It has exactly one kind: tool, approval, sleep, wait_until,
    wait_for_event or plan; a tool step may also carry an approval, a gate on its call."""

    id: str = Field(pattern=STEP_ID_PATTERN, max_length=MAX_STEP_ID_LENGTH,
                    description="Unique step id.")
    description: str | None = Field(None, description="Why this step exists (for people).")
    tool: str | None = Field(None, description="Name of the tool to call.")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Tool arguments. A string that is exactly '${path}' becomes the referenced "
        "value, and one that is exactly '${= expression}' the expression's value; either "
        "inside a longer string is interpolated as text.")
    approval: ApprovalSpec | None = Field(
        None, description="Wait for a human decision: a step of its own (its output is "
        "{approved, by, comment, reason}), or with tool, a gate on the call (the approver sees "
        "the resolved args).")
    sleep: Annotated[float, Field(ge=0, le=MAX_SECONDS, strict=True)] | None = Field(
        None, description="Wait this many seconds.")
    wait_until: str | None = Field(
        None, description="Wait until this ISO-8601 time with a timezone "
        "('2025-01-31T09:00:00+01:00' or '...Z'), or one '${...}' reference to such a string.")
    wait_for_event: str | None = Field(
        None, pattern=EVENT_NAME_PATTERN, max_length=MAX_EVENT_NAME_LENGTH,
        description="Wait for an event with this name (letters, digits, '_', '.', ':', '-'; "
        "at most 200); the output is the event's payload. With timeout, the step fails when "
        "no event came in time.")
    plan: str | None = Field(None, description="Run a sub-plan by name.")
    inputs: dict[str, Any] | None = Field(None, description="Inputs of the sub-plan.")
    after: list[str] = Field(default_factory=list,
                             description="Steps that must finish before this one starts.")
    when: str | None = Field(
        None, description="Condition: paths, literals, == != < <= > >=, in, and/&&, or/||, "
        "not/!, the functions of '${= ...}' expressions, and always(), success(), failure(). "
        "False means the step is skipped.")
    foreach: list[Any] | str | None = Field(
        None, description="Tool steps only. A list, or a '${...}' reference or '${= ...}' "
        "expression giving one (e.g. '${= fromJSON(inputs.matrix)}'): the tool "
        "is called once per item, with ${item} and ${index} in args (and in the approval "
        "prompt); the output is the list of results.")
    max_parallel: Annotated[int, Field(ge=1, le=10000)] | None = Field(
        None, description="Most foreach items running at once.")
    retry: RetryPolicy | None = Field(
        None, description="Tool steps: retry failed calls. Plan steps: run a failed child "
        "again as a new child run.")
    timeout: _Seconds | str | None = Field(
        None, description="Tool steps: seconds a single call may take (an approval gate's wait "
        "is not counted). wait_for_event steps: seconds until the wait gives up and the step "
        "fails. A number, or one '${...}' reference or '${= ...}' expression giving one "
        "(evaluated when the step starts).")
    continue_on_error: bool | str = Field(
        False, description="A failure of this step does not fail the run or skip dependents. "
        "true or false, or one '${...}' reference or '${= ...}' expression (its truth counts, "
        "evaluated when the step settles).")


class Plan(_Model):
    """A JSON step-graph plan."""

    format: Literal["agentflow/v1"] = Field(PLAN_FORMAT, description="Plan format version.")
    name: str = Field("plan", description="Short name of the plan.")
    description: str | None = Field(None, description="What the plan does.")
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="JSON Schema of the plan's inputs.")
    steps: list[Step] = Field(min_length=1, description="The steps, in any order.")
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="Run outputs, usually '${steps.<id>.output...}'.")

    def step(self, step_id: str) -> Step:
        for candidate in self.steps:
            if candidate.id == step_id:
                return candidate
        raise KeyError(step_id)
