"""Workers: processes that claim runnable runs from a store and execute them (the layer
between the fronts and the engine)."""

from agentflow.worker.loop import Worker

__all__ = ["Worker"]
