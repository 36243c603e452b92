"""Stores keep runs, pinned plans and journals; `open_store` turns a URL into one."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import get_args
from urllib.parse import parse_qsl, unquote

from agentflow.errors import StoreError
from agentflow.store.base import (
    FINISHED_STATUSES,
    WAIT_OUTCOMES,
    Claim,
    EventRecord,
    GroupWrite,
    JournalAppend,
    JournalEntry,
    NewRun,
    PlanName,
    RunEnd,
    RunRecord,
    RunStatus,
    Store,
    StoredPlan,
    TokenRecord,
    WaitKind,
    WaitRecord,
    WaitStatus,
)
from agentflow.store.sqlite import MEMORY_REJECTED, Durability, SQLiteStore

__all__ = [
    "DEFAULT_STORE_URL",
    "FINISHED_STATUSES",
    "STORE_ENV_VAR",
    "WAIT_OUTCOMES",
    "Claim",
    "EventRecord",
    "GroupWrite",
    "JournalAppend",
    "JournalEntry",
    "NewRun",
    "PlanName",
    "RunEnd",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Store",
    "StoredPlan",
    "TokenRecord",
    "WaitKind",
    "WaitRecord",
    "WaitStatus",
    "local_store_path",
    "open_store",
]

STORE_ENV_VAR = "AGENTFLOW_STORE"
DEFAULT_STORE_URL = "sqlite:///agentflow.db"

_ACCEPTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db or a file path such as "
    "agentflow.db (SQLite URLs take ?durability=normal|full and ?busy_timeout=SECONDS), "
    "or postgresql://user@host:5432/db (with the postgres extra; PostgreSQL URLs take "
    "?schema=NAME, ?pool_size=N and ?statement_timeout=SECONDS)"
)
# A scheme has two letters or more, so a Windows drive (C:\runs.db) reads as a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def open_store(url: str | os.PathLike[str] | Store | None = None) -> Store:
    """The store named by `url`: a `Store` is returned as is; `None` means the
    `AGENTFLOW_STORE` environment variable, else `sqlite:///agentflow.db` (./agentflow.db).
    `StoreError` for a URL that cannot name a durable store, saying which forms work."""
    if url is None:
        url = os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_URL
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if isinstance(url, str):
        return _open_url(url)
    if not callable(getattr(url, "append_journal", None)):
        raise StoreError(f"a store is a URL, a path or a Store, not {type(url).__name__}")
    return url


def _open_url(url: str) -> Store:
    scheme = _SCHEME.match(url)
    if scheme is None:
        if not url.strip():
            raise StoreError(f"empty store URL; accepted: {_ACCEPTED}")
        if url == ":memory:":
            raise StoreError(MEMORY_REJECTED)
        return SQLiteStore(os.path.expanduser(url))
    name = scheme.group(1).lower()
    if name in ("postgresql", "postgres"):
        from agentflow.store.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(url)
    shown = _PASSWORD.sub(r"\1***@", url)
    if name != "sqlite":
        raise StoreError(f"unknown store URL {shown!r}; accepted: {_ACCEPTED}")
    rest, _, query = url[scheme.end():].partition("?")
    if rest in ("//:memory:", "///:memory:"):
        raise StoreError(MEMORY_REJECTED)
    if not rest.startswith("///"):
        raise StoreError(
            f"store URL {shown!r} is not sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path; no host)"
        )
    path = unquote(rest[3:])
    if not path:
        raise StoreError(f"store URL {shown!r} names no database file; accepted: {_ACCEPTED}")
    durability, busy_timeout = _sqlite_options(shown, query)
    return SQLiteStore(os.path.expanduser(path), durability, busy_timeout)


def _sqlite_options(shown: str, query: str) -> tuple[Durability, float]:
    durability: Durability = "full"
    busy_timeout = 30.0
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "durability":
            if value not in get_args(Durability):
                raise StoreError(
                    f"store URL {shown!r}: durability must be 'normal' or 'full', not {value!r}"
                )
            durability = "full" if value == "full" else "normal"
        elif key == "busy_timeout":
            try:
                busy_timeout = float(value)
            except ValueError:
                raise StoreError(
                    f"store URL {shown!r}: busy_timeout must be a number of seconds, "
                    f"not {value!r}"
                ) from None
        else:
            raise StoreError(
                f"store URL {shown!r}: unknown option {key!r} (accepted: durability, "
                "busy_timeout)"
            )
    return durability, busy_timeout


def local_store_path(url: str | None = None) -> Path | None:
    """The database file a SQLite store URL or path names (`None`: the default store, as
    `open_store` picks it); None for any other kind of store. Lets a caller check that a
    store exists before opening it would create it."""
    if url is None:
        url = os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_URL
    scheme = _SCHEME.match(url)
    if scheme is None:
        return Path(os.path.expanduser(url)) if url.strip() and url != ":memory:" else None
    rest = url[scheme.end():].partition("?")[0]
    if scheme.group(1).lower() != "sqlite" or not rest.startswith("///") or len(rest) == 3:
        return None
    path = unquote(rest[3:])
    return None if path == ":memory:" else Path(os.path.expanduser(path))
