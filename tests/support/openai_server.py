"""The scripted OpenAI-compatible server the tests use: `agentflow.testing`'s, so the tests
exercise exactly what users get."""

from agentflow.testing import OpenAIServer, Reply, Request, ScriptedModel, strict_problems

__all__ = ["OpenAIServer", "Reply", "Request", "ScriptedModel", "strict_problems"]
