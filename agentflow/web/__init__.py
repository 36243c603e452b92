"""The web front: `agentflow serve`'s ASGI app (JSON API, console, approval links).

Needs the `[web]` extra (FastAPI, uvicorn)."""
