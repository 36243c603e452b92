"""Fixtures of the attack corpus: one isolate pool for all of it, an engine per attack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import Engine
from agentflow.sandbox import IsolatePool
from tests.attacks.harness import frozen_heap, open_engine


@pytest.fixture(scope="package")
def pool() -> Iterator[IsolatePool]:
    isolates = IsolatePool(warm=1)
    with frozen_heap():
        yield isolates
    isolates.close()


@pytest.fixture
def engine(store_url: str, pool: IsolatePool) -> Iterator[Engine]:
    """An engine in isolation mode "process" (the default)."""
    opened = open_engine(store_url, "process", pool)
    yield opened
    opened.close()


@pytest.fixture(params=["process", "none"])
def either_engine(request: pytest.FixtureRequest, store_url: str,
                  pool: IsolatePool) -> Iterator[Any]:
    """An engine in each isolation mode: for attacks the sandbox stops in both."""
    opened = open_engine(store_url, request.param, pool)
    yield opened
    opened.close()


@pytest.fixture
def engine_in_process(store_url: str, pool: IsolatePool) -> Iterator[Engine]:
    """An engine in isolation mode "none" (plan code runs in this process)."""
    opened = open_engine(store_url, "none", pool)
    yield opened
    opened.close()
