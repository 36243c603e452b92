"""The approval gate a call must pass: the host's policy, which a plan can add to but never
weaken.

A tool declared `requires_approval=True` (or whose policy says so for these arguments) is
gated by the host. A plan may put a gate on any call, and may ask a person anything, but on a
host-gated call its gate cannot:

- expire, and so cannot auto-approve (`expires_in`, `on_expiry` are the host's: none);
- choose who decides (`approvers` are the tool's, `@tool(approvers=[...])`, or anyone the
  host lets call `approve`);
- hide what runs: the prompt always starts with the tool and its exact arguments, and the
  plan's prompt follows as the plan's own words.

What the plan does after a refusal (`on_reject`) stays the plan's: the tool does not run
either way. Both executors take their gates from here: JSON plans (a step's `approval` on
a tool step, a tool's policy) and code plans (a tool's policy, `approve(...)`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic

from agentflow.errors import AgentflowError
from agentflow.plan.models import ApprovalSpec
from agentflow.tools import Tool

_CODE_PLAN_SETTINGS = ("approvers", "expires_in", "on_expiry")
"""What `approve(...)` of a code plan may set (a refusal is its False result)."""


def gate_for(tool: Tool, args: Mapping[str, Any], plan_gate: ApprovalSpec | None,
             plan_prompt: str | None = None) -> ApprovalSpec | None:
    """The gate a call of `tool` with `args` waits at (None: it runs at once), its `prompt`
    the text to show. `plan_gate` is the gate the plan put on the call, `plan_prompt` its
    prompt as evaluated for this call."""
    host_requires = tool.needs_approval(args)
    if not host_requires:
        if plan_gate is None:
            return None
        update: dict[str, Any] = {"prompt": plan_prompt or plan_gate.prompt}
        if tool.approvers:
            update["approvers"] = list(tool.approvers)
        return plan_gate.model_copy(update=update)
    shown = f"Run {tool.name} with {json.dumps(dict(args), sort_keys=True)}?"
    if plan_prompt:
        shown = f"{shown} The plan says: {plan_prompt}"
    return ApprovalSpec(prompt=shown, approvers=list(tool.approvers) if tool.approvers else None,
                        expires_in=None, on_expiry="reject",
                        on_reject=plan_gate.on_reject if plan_gate is not None else "fail")


def plan_approval(prompt: Any, details: dict[str, Any], where: str) -> ApprovalSpec:
    """The gate of a code plan's `approve(prompt, **details)`: the settings among `details`
    (`approvers`, `expires_in`, `on_expiry`) are taken out of it and checked as in a JSON
    plan; a bad one is an `AgentflowError` naming it and `where`. No host policy applies:
    such a gate guards no tool, only the plan's own next steps."""
    settings = {name: details.pop(name) for name in _CODE_PLAN_SETTINGS if name in details}
    try:
        return ApprovalSpec.model_validate({"prompt": str(prompt), **settings})
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False))
        raise AgentflowError(f"{where}: approve() settings are invalid: {problems}") from None
