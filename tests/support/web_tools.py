"""Tools and plans of the web tests, loaded by the test process and by the server process
(`agentflow serve --tools tests.support.web_tools`)."""

from __future__ import annotations

from typing import Any

from agentflow import tool


@tool
def transfer(account: str, amount: int) -> dict[str, Any]:
    """Move money: the call an approver must see with its exact arguments."""
    return {"account": account, "amount": amount, "receipt": f"tx-{account}-{amount}"}


@tool(side_effects=False)
def receipt(text: str) -> str:
    return text


@tool
def bounce(account: str) -> dict[str, Any]:
    """Fails: the bank refuses the account."""
    raise ValueError(f"account {account!r} is closed")


TOOLS = [transfer, receipt, bounce]

PAYMENT_PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "payment",
    "inputs": {"type": "object", "properties": {
        "account": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["account", "amount"]},
    "steps": [
        {"id": "pay", "tool": "transfer",
         "args": {"account": "${inputs.account}", "amount": "${inputs.amount}"},
         "approval": {"prompt": "Pay ${inputs.amount} to ${inputs.account}?",
                      "approvers": ["alice", "bob"]}},
        {"id": "note", "tool": "receipt", "args": {"text": "paid: ${steps.pay.status}"},
         "after": ["pay"], "when": "always()"},
    ],
    "outputs": {"paid": "${steps.pay.output}", "note": "${steps.note.output}"},
}


def expiring_plan(seconds: float) -> dict[str, Any]:
    """The payment plan with an approval that expires after `seconds`."""
    plan: dict[str, Any] = {**PAYMENT_PLAN, "name": "expiring_payment",
                            "steps": [dict(step) for step in PAYMENT_PLAN["steps"]]}
    plan["steps"][0]["approval"] = {**plan["steps"][0]["approval"], "expires_in": seconds}
    return plan


EVENT_PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "await_payment",
    "steps": [{"id": "paid", "wait_for_event": "payment.received"},
              {"id": "note", "tool": "receipt", "args": {"text": "got ${steps.paid.output}"}}],
    "outputs": {"note": "${steps.note.output}"},
}

FAILING_PLAN: dict[str, Any] = {
    "format": "agentflow/v1",
    "name": "bounced_payment",
    "inputs": {"type": "object", "properties": {"account": {"type": "string"}}},
    "steps": [{"id": "check", "tool": "bounce", "args": {"account": "${inputs.account}"}}],
}
