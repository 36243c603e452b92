"""Terminal prompts for `run --interactive`: decide each pending approval at the keyboard.

The approver sees the step, the tool, the exact arguments and the prompt, and answers
approve, reject (with a reason) or edit (new arguments as one JSON line, checked by
`Engine.approve` against the tool's schema; a refused edit is shown and asked again).
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.json import JSON
from rich.prompt import Prompt
from rich.text import Text

from agentflow.cli.render import short
from agentflow.engine import Engine, Pending
from agentflow.errors import ToolArgumentsError


def decide(console: Console, engine: Engine, run_id: str, pending: Pending, by: str) -> str:
    """Ask about one pending approval and record the answer; returns what was decided."""
    console.print(Text.assemble(
        ("\napproval needed ", "bold yellow"), f"run {run_id}, step {pending.step_id}",
        f", tool {pending.tool}" if pending.tool else "", f"  [{pending.id}]"))
    console.print(Text(pending.prompt or "", style="bold"))
    choices = ["approve", "reject"]
    if pending.args is not None:
        console.print(JSON.from_data(pending.args))
        choices.append("edit")
    question = ("Approve, reject or edit? [a/r/e]" if len(choices) == 3
                else "Approve or reject? [a/r]")
    while True:
        answer = _choice(Prompt.ask(Text(question), console=console), choices)
        if answer is None:
            console.print(Text(f"please answer {' / '.join(choices)} (or their first letter)",
                               style="red"))
            continue
        if answer == "approve":
            engine.approve(run_id, pending.id, by=by)
            return "approved"
        if answer == "reject":
            reason = Prompt.ask("Reason", default="", show_default=False, console=console)
            engine.reject(run_id, pending.id, by=by, reason=reason or None)
            return "rejected"
        if _edit(console, engine, run_id, pending, by):
            return "approved with edited arguments"


def _choice(answer: str, choices: list[str]) -> str | None:
    """The choice `answer` names: the whole word or its first letter, any case."""
    typed = answer.strip().lower()
    return next((choice for choice in choices if typed and choice.startswith(typed)
                 and typed in (choice, choice[0])), None)


def _edit(console: Console, engine: Engine, run_id: str, pending: Pending, by: str) -> bool:
    """Approve with arguments the user types; False when they give up (an empty line)."""
    console.print(Text.assemble("current: ", (short(pending.args, 100_000), "cyan")))
    while True:
        text = Prompt.ask("New arguments as one JSON object (empty line: back)", default="",
                          show_default=False, console=console)
        if not text.strip():
            return False
        try:
            engine.approve(run_id, pending.id, by=by, args=json.loads(text))
        except json.JSONDecodeError as error:
            console.print(Text.assemble(("invalid: ", "bold red"), f"not JSON: {error}"))
        except ToolArgumentsError as error:
            console.print(Text.assemble(("invalid: ", "bold red"), str(error)))
        else:
            return True
