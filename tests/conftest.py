"""Shared fixtures: a scripted OpenAI-compatible server and a real openai client for it, the
store of the CLI tests, and an isolate pool per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from agentflow.engine.api import close_engines
from agentflow.sandbox import IsolatePool
from tests.support.openai_server import OpenAIServer
from tests.support.stores import store_url_for

# Every property test, on a loaded machine: no per-example deadline and no health check
# that times data generation (both measure the machine; the properties do not depend on
# it). A test's own `settings` still sets the rest, and its `suppress_health_check`, if
# any, must name too_slow again (it replaces this list).
settings.register_profile("agentflow", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("agentflow")


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A running scripted server; the test fails if its script was inconsistent."""
    with OpenAIServer() as server:
        yield server
    assert not server.problems, server.problems


@pytest.fixture
def openai_client(openai_server: OpenAIServer) -> Any:
    """`openai.OpenAI` pointed at the scripted server, without client-side retries."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)


@pytest.fixture(autouse=True)
def _close_shared_engines() -> Iterator[None]:
    """The module-level functions keep an engine per store; each test's store is its own,
    so close them after it (on PostgreSQL each would keep its connections to the end)."""
    yield
    close_engines()


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """An empty store for this test: a SQLite file, or with AGENTFLOW_TEST_STORE=postgres
    a schema of its own on the test PostgreSQL server."""
    with store_url_for(tmp_path) as url:
        yield url


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store every command in a CLI test uses, through $AGENTFLOW_STORE (modules that
    mean a `Store` object by `store` define their own)."""
    path = str(tmp_path / "runs.db")
    monkeypatch.setenv("AGENTFLOW_STORE", path)
    monkeypatch.setenv("AGENTFLOW_DEMO_DELAY", "0")
    return path


@pytest.fixture(scope="module")
def pool() -> Iterator[IsolatePool]:
    """One isolate pool for the tests of a module (a pool per test would start isolates for
    each)."""
    isolates = IsolatePool(warm=1)
    yield isolates
    isolates.close()
