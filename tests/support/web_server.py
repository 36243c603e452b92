"""A real `agentflow serve` process on a free port, a small HTTP client for it, and the
test-side view of one server (`WebServer`: tokens of tenant acme, runs started beside it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def require(*modules: str) -> None:
    """Skip the calling test module, saying why, when a module of the `[web]` or `[otel]`
    extras is missing; under CI (`CI=true`) fail instead, since CI installs them."""
    import importlib.util

    import pytest

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return
    reason = f"needs {', '.join(missing)} (pip install -e '.[dev,web,otel]')"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve(store: str, *, tools: str = "tests.support.web_tools",
          env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `agentflow serve` on `store` and yield its base URL once it answers; the
    process is killed afterwards. Its output is shown if it never comes up."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agentflow.cli", "serve", "--store", store, "--port", str(port),
         "--tools", tools, "--poll", "0.2"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/openapi.json", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    output = process.communicate()[0]
                    raise RuntimeError(f"server did not start: {output}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.kill()
        process.wait(timeout=30)


def call(base: str, method: str, path: str, token: str | None = None,
         body: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; errors are answers too, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, text.decode("utf-8", "replace")


def page(base: str, url_or_path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, HTML) of a GET, or of a form POST when `form` is given."""
    from urllib.parse import urlencode

    url = url_or_path if url_or_path.startswith("http") else f"{base}{url_or_path}"
    data = None if form is None else urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class WebServer:
    """A running server on `engine`'s store, with an approver token for alice, bob and
    mallory (who is not in the payment plan's approvers), a viewer and an admin, all of
    tenant `acme`. Runs are started in the test process and wait (max_inline_wait=0)."""

    TENANT = "acme"

    def __init__(self, base: str, engine: Any) -> None:
        from agentflow.engine.tokens import create_token

        self.base = base
        self.engine = engine
        self.tokens: dict[str, str] = {}
        for name, role in (("alice", "approver"), ("bob", "approver"), ("mallory", "approver"),
                           ("viewer", "viewer"), ("admin", "admin")):
            self.tokens[name], _ = create_token(engine.store, tenant=self.TENANT, role=role,
                                                name=name)

    def call(self, method: str, path: str, who: str = "admin",
             body: Any = None) -> tuple[int, Any]:
        return call(self.base, method, path, self.tokens.get(who, who), body)

    def start(self, run_id: str, plan: dict[str, Any] | None = None,
              inputs: dict[str, Any] | None = None) -> str:
        """Start a run that waits; the id of its pending wait (approval or event)."""
        from tests.support.web_tools import PAYMENT_PLAN

        result = self.engine.tenant(self.TENANT).execute(
            PAYMENT_PLAN if plan is None else plan,
            inputs={"account": "acme", "amount": 50} if inputs is None else inputs,
            run_id=run_id)
        assert result.status == "waiting", result
        pending: str = result.pending[0].id
        return pending

    def run(self, run_id: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/runs/{run_id}", "viewer")
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    def finished(self, run_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in ("completed", "failed", "cancelled") else None
        result: dict[str, Any] = wait_for(done, what=f"run {run_id} to finish")
        return result

    def snapshot(self, run_id: str) -> Any:
        """Everything the store holds about the run, to show a request changed nothing."""
        store, tenant = self.engine.store, self.TENANT
        return (store.get_run(tenant, run_id), store.list_waits(tenant, run_id),
                store.read_journal(tenant, run_id), store.list_events(tenant, run_id))


@contextmanager
def web_server(directory: Path) -> Iterator[WebServer]:
    """A `WebServer` on a new store: a SQLite file in `directory`, or a schema of the test
    PostgreSQL server on the suite's PostgreSQL pass (AGENTFLOW_TEST_STORE=postgres)."""
    from agentflow import Engine
    from tests.support.stores import store_url_for
    from tests.support.web_tools import TOOLS

    with store_url_for(directory) as store:
        engine = Engine(store, tools=TOOLS, max_inline_wait=0.0)
        try:
            with serve(store) as base:
                yield WebServer(base, engine)
        finally:
            engine.close()
