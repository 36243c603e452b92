"""What plan code (and whoever wrote it) is shown of the host: plain names, no internals.

Argument errors. The built-ins of the sandbox and the executor's bindings are host methods
(`BuiltinGuards.all_`, `CodeExecutor._approve`). Called with the wrong arguments, Python's
error names the method and counts its hidden parameters (`self`, the call's position): a
leak of the host's internals and a confusing message. `argument_error` gives the error plan
code sees instead: the plan's name for the function, its signature, what did not fit.

Texts. Python writes some objects with their memory address (`<generator object g at
0x7f...>`, which tells the attacker where the host's heap is) and classes with their module
(`<class 'agentflow.errors.ToolCallError'>`). `plain_text` removes both from a text plan
code builds (str, repr, formatting) or reads in a message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def argument_error(error: TypeError, name: str, function: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any], hidden: int = 0) -> TypeError:
    """`error` as plan code should see it, for the call `function(*args, **kwargs)` that
    raised it, where plan code passed all but the first `hidden` arguments. Unchanged
    unless the arguments did not fit `function` itself: an error raised inside it stays."""
    traceback = error.__traceback__
    if traceback is None or traceback.tb_next is not None:
        return error  # raised by the function's body, not by binding its arguments
    import inspect  # here: isolates import this module, and rarely need it

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return error
    parameters = [parameter.replace(annotation=parameter.empty)
                  for parameter in list(signature.parameters.values())[hidden:]]
    shown = signature.replace(parameters=parameters, return_annotation=signature.empty)
    try:
        shown.bind(*args[hidden:], **kwargs)
    except TypeError as problem:
        return TypeError(f"{name}{shown}: {problem}")
    return error


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MODULE_OF_CLASS = re.compile(r"(?<=<class ')[\w.]+\.(?=\w+'>)")


def plain_text(text: str) -> str:
    """`text` without memory addresses and without the module paths of classes."""
    if " at 0x" in text:
        text = _ADDRESS.sub("", text)
    if "<class '" in text:
        text = _MODULE_OF_CLASS.sub("", text)
    return text
