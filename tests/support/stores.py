"""The store a test runs on: a SQLite file, or a schema of its own on the test PostgreSQL.

`AGENTFLOW_TEST_STORE=postgres` switches the engine, approval, wait, tenant and crash tests
to PostgreSQL; `AGENTFLOW_TEST_POSTGRES_DSN` names the server (default below). With no
server reachable the PostgreSQL tests skip and say why, except in CI (`CI=true`), where
that is a failure.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

DSN_VAR = "AGENTFLOW_TEST_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
STORE_VAR = "AGENTFLOW_TEST_STORE"


def backend() -> str:
    """The backend the switchable tests run on: "sqlite" (default) or "postgres"."""
    chosen = os.environ.get(STORE_VAR, "sqlite")
    if chosen not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"{STORE_VAR} must be sqlite or postgres, not {chosen!r}")
    return chosen


def dsn() -> str:
    return os.environ.get(DSN_VAR) or DEFAULT_DSN


def connect_admin(url: str, **options: Any) -> Any:
    """A psycopg connection for the tests' own bookkeeping (schemas, row counts). When the
    shared server has no connection slot free ("too many clients": other test processes
    on the machine hold them) it waits for one, up to a minute, as the store itself does."""
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            return psycopg.connect(url, **options)
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def require_postgres() -> str:
    """The server's DSN; skips the test (fails it in CI) when it is not reachable."""
    try:
        import psycopg
    except ImportError:
        reason = "psycopg is not installed (pip install -e '.[dev,postgres]')"
    else:
        try:
            connect_admin(dsn(), connect_timeout=5).close()
            return dsn()
        except psycopg.Error as exc:
            reason = f"PostgreSQL at {dsn()} is not reachable ({str(exc).strip()})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI needs it", pytrace=False)
    pytest.skip(f"{reason}; set {DSN_VAR} to run the PostgreSQL tests")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL in a new, empty schema of the test server, dropped afterwards."""
    server = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    joiner = "&" if "?" in server else "?"
    try:
        yield f"{server}{joiner}schema={schema}&application_name={schema}"
    finally:
        with connect_admin(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def wait_for_dead_clients(url: str) -> None:
    """After SIGKILLing processes that used the store at `url`: wait until the server has
    ended their sessions. A statement a killed client had sent still runs and may commit
    (an autocommit journal append), so the journal is only final once they are gone. A
    no-op for SQLite, where a killed process writes nothing more."""
    if not url.startswith(("postgresql:", "postgres:")):
        return
    application = url.rsplit("application_name=", 1)[-1].split("&")[0]
    with connect_admin(url.split("?")[0], autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (application,)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.02)


@contextmanager
def store_url_for(tmp_path: Path, name: str = "runs.db") -> Iterator[str]:
    """The URL of an empty store on the chosen backend."""
    if backend() == "postgres":
        with postgres_schema() as url:
            yield url
    else:
        yield str(tmp_path / name)
