"""Test your own plans and planners offline: a scripted OpenAI-compatible model.

`ScriptedModel` answers chat completions with the replies you queue (`script`), or with
what a function of the request returns (`responder`, like pydantic-ai's `FunctionModel`),
and records every request. Reach it two ways, both through the real `openai` client:

- in process: `model.client()` is an `openai.OpenAI` whose HTTP goes straight to the
  model (no socket, no thread);
- over HTTP: `OpenAIServer()` is a `ScriptedModel` listening on 127.0.0.1, for code that
  builds its own client from a base URL (`OPENAI_BASE_URL`), or another process.

    from agentflow.testing import ScriptedModel
    model = ScriptedModel()
    model.script('{"format": "agentflow/v1", ...}')
    plan = plan_for("...", tools=TOOLS, client=model.client(), model="scripted-model")

Like the real API, it refuses a request without a bearer token, `json_object` mode without
the word "json" in the messages, and a strict `json_schema` that breaks the strict rules;
a scripted answer that breaks a strict schema is listed in `problems`.
"""

from agentflow.testing.model import Reply, Request, ScriptedModel
from agentflow.testing.server import OpenAIServer
from agentflow.testing.strict import strict_problems

__all__ = ["OpenAIServer", "Reply", "Request", "ScriptedModel", "strict_problems"]
