"""The schema, as one list of migrations that every SQL backend runs.

Migration i takes a database from version i to i + 1; the version is the `schema_version`
row of the `meta` table. A backend opening a database runs the missing migrations and
writes the new version in one transaction, and refuses a database newer than this code.
Append a migration to change the schema; never edit one that has shipped.

Statements are plain SQL that SQLite and PostgreSQL both accept, with two words a
dialect fills in: `{real}` (a double-precision float: REAL on SQLite, DOUBLE PRECISION on
PostgreSQL, whose REAL is single precision) and `{row_order}` (a column that numbers rows
in insertion order where the engine has no rowid; empty on SQLite). Where the two cannot
share a statement (triggers), a `PerDialect` gives each its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.errors import StoreError


@dataclass(frozen=True)
class Dialect:
    """How a backend spells the few things the migrations leave open."""

    name: str
    real: str
    row_order: str

    def render(self, statement: str | PerDialect) -> list[str]:
        if isinstance(statement, PerDialect):
            return list(getattr(statement, self.name))
        return [statement.format(real=self.real, row_order=self.row_order)]


@dataclass(frozen=True)
class PerDialect:
    """Statements written once per backend, run as they are (no words filled in)."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"
READ_VERSION = "SELECT value FROM meta WHERE key = 'schema_version'"

_V1 = (
    """CREATE TABLE plans (tenant_id TEXT NOT NULL, plan_hash TEXT NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, created_at {real} NOT NULL, PRIMARY KEY (tenant_id, plan_hash))""",
    """CREATE TABLE runs (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
    plan_hash TEXT NOT NULL, status TEXT NOT NULL, inputs TEXT NOT NULL, outputs TEXT NOT NULL,
    error TEXT, created_at {real} NOT NULL, updated_at {real} NOT NULL, wake_at {real},
    lease_owner TEXT, lease_expires_at {real}, options TEXT NOT NULL,
    PRIMARY KEY (tenant_id, run_id))""",
    "CREATE INDEX runs_due ON runs (status, wake_at)",
    "CREATE INDEX runs_by_status ON runs (tenant_id, status, created_at)",
    "CREATE INDEX runs_by_created ON runs (tenant_id, created_at)",
    """CREATE TABLE journal (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
    seq INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL,
    tool TEXT, args_hash TEXT, data TEXT NOT NULL, at {real} NOT NULL,
    PRIMARY KEY (tenant_id, run_id, seq))""",
)
_V2 = (
    """CREATE TABLE waits (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
    wait_id TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, plan_hash TEXT NOT NULL,
    step_id TEXT, tool TEXT, args TEXT, args_hash TEXT, prompt TEXT, approvers TEXT,
    event_name TEXT, expires_at {real}, on_expiry TEXT, status TEXT NOT NULL, decision TEXT,
    consumed INTEGER NOT NULL, created_at {real} NOT NULL, decided_at {real},
    args_schema TEXT{row_order}, PRIMARY KEY (tenant_id, run_id, wait_id))""",
    "CREATE INDEX waits_by_status ON waits (tenant_id, status, created_at)",
    """CREATE TABLE events (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
    seq INTEGER NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL, sent_at {real} NOT NULL,
    consumed_by TEXT, consumed_at {real}, PRIMARY KEY (tenant_id, run_id, seq))""",
)
_V3 = (
    # Submitted runs wait as "queued"; workers take them tenant by tenant (one index
    # step to the next tenant with queued runs, then its oldest).
    "CREATE INDEX runs_queue ON runs (status, tenant_id, wake_at)",
)
_V4 = (
    # API tokens of `agentflow serve`: only the SHA-256 of a token is stored, and a
    # request finds its token by that hash alone (the token is what names the tenant).
    """CREATE TABLE tokens (tenant_id TEXT NOT NULL, token_id TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL,
    created_at {real} NOT NULL, revoked_at {real}, PRIMARY KEY (tenant_id, token_id))""",
    # Each tenant's secrets, such as the key that signs its approval links.
    """CREATE TABLE secrets (tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    value TEXT NOT NULL, created_at {real} NOT NULL, PRIMARY KEY (tenant_id, name))""",
)
_V5 = (
    # A tenant's runs that hold a live lease, counted against its cap on concurrent runs.
    "CREATE INDEX runs_leased ON runs (tenant_id, lease_expires_at)",
)
_V6 = (
    # Each tenant's plan registry: a name's versions are plan hashes, numbered in the order
    # they were put; the highest number is the current version.
    """CREATE TABLE plan_versions (tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    plan_hash TEXT NOT NULL, version INTEGER NOT NULL, created_at {real} NOT NULL,
    PRIMARY KEY (tenant_id, name, plan_hash))""",
    "CREATE INDEX plan_versions_by_number ON plan_versions (tenant_id, name, version)",
    # The registered name a run was started by (NULL for a plan passed as data).
    "ALTER TABLE runs ADD COLUMN plan_name TEXT",
    "CREATE INDEX runs_by_plan_name ON runs (tenant_id, plan_name, created_at)",
    # The runs pinned to a plan: a version in use cannot be deleted, nor a plan in use pruned.
    "CREATE INDEX runs_by_plan ON runs (tenant_id, plan_hash)",
)
_V7 = (
    # Each tenant's policy (allowed tools, approvals, limits), as one JSON document.
    """CREATE TABLE policies (tenant_id TEXT NOT NULL PRIMARY KEY, body TEXT NOT NULL,
    updated_at {real} NOT NULL)""",
    # What tools reported spending through ctx.charge: one row per call attempt, written
    # while the tool runs, so a budget counts it even if the process dies afterwards.
    """CREATE TABLE charges (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL, key TEXT NOT NULL,
    attempt INTEGER NOT NULL, tokens INTEGER NOT NULL, cost_usd {real} NOT NULL,
    at {real} NOT NULL, PRIMARY KEY (tenant_id, run_id, key, attempt))""",
)
_V8 = (
    # The trace context of each run's latest execution, so the next one links to it.
    """CREATE TABLE traces (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
    traceparent TEXT NOT NULL, updated_at {real} NOT NULL, PRIMARY KEY (tenant_id, run_id))""",
)

_V9 = (
    # The journal data each tenant stores (characters, as LENGTH counts them), kept by
    # triggers in the transaction of every insert into and delete from `journal`, so a
    # tenant's journal quota reads one row instead of summing its whole journal.
    """CREATE TABLE tenant_usage (tenant_id TEXT NOT NULL PRIMARY KEY,
    journal_bytes BIGINT NOT NULL)""",
    "INSERT INTO tenant_usage (tenant_id, journal_bytes) SELECT tenant_id, SUM(LENGTH(data))"
    " FROM journal GROUP BY tenant_id",
    PerDialect(
        sqlite=(
            """CREATE TRIGGER journal_added AFTER INSERT ON journal BEGIN
            INSERT INTO tenant_usage (tenant_id, journal_bytes)
            VALUES (NEW.tenant_id, LENGTH(NEW.data)) ON CONFLICT (tenant_id)
            DO UPDATE SET journal_bytes = journal_bytes + excluded.journal_bytes; END""",
            """CREATE TRIGGER journal_removed AFTER DELETE ON journal BEGIN
            UPDATE tenant_usage SET journal_bytes = journal_bytes - LENGTH(OLD.data)
            WHERE tenant_id = OLD.tenant_id; END""",
        ),
        # Once per statement (a statement appends a batch): one counter update per tenant.
        postgresql=(
            """CREATE FUNCTION journal_added() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO tenant_usage (tenant_id, journal_bytes)
                SELECT tenant_id, SUM(LENGTH(data)) FROM added GROUP BY tenant_id
                ORDER BY tenant_id ON CONFLICT (tenant_id)
                DO UPDATE SET
                    journal_bytes = tenant_usage.journal_bytes + excluded.journal_bytes;
                RETURN NULL;
            END $$""",
            """CREATE TRIGGER journal_added AFTER INSERT ON journal
            REFERENCING NEW TABLE AS added FOR EACH STATEMENT
            EXECUTE FUNCTION journal_added()""",
            """CREATE FUNCTION journal_removed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE tenant_usage
                SET journal_bytes = tenant_usage.journal_bytes - gone.bytes
                FROM (SELECT tenant_id, SUM(LENGTH(data)) AS bytes FROM removed
                      GROUP BY tenant_id) AS gone
                WHERE tenant_usage.tenant_id = gone.tenant_id;
                RETURN NULL;
            END $$""",
            """CREATE TRIGGER journal_removed AFTER DELETE ON journal
            REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
            EXECUTE FUNCTION journal_removed()""",
        ),
    ),
)

_V10 = (
    # PostgreSQL: each connection counts into a row of its own (32 per tenant), so the
    # appends of one tenant's runs from many workers do not queue for one row lock until
    # each other's commit (that halved their rate). A tenant's size is the sum of its rows.
    # The functions keep the store's schema as their search path, so an insert from any
    # session counts. SQLite has one writer at a time: its single row stays.
    PerDialect(sqlite=(), postgresql=(
        "ALTER TABLE tenant_usage ADD COLUMN shard INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tenant_usage DROP CONSTRAINT tenant_usage_pkey",
        "ALTER TABLE tenant_usage ADD PRIMARY KEY (tenant_id, shard)",
        """CREATE OR REPLACE FUNCTION journal_added() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO tenant_usage (tenant_id, shard, journal_bytes)
            SELECT tenant_id, pg_backend_pid() % 32, SUM(LENGTH(data)) FROM added
            GROUP BY tenant_id ORDER BY tenant_id ON CONFLICT (tenant_id, shard)
            DO UPDATE SET journal_bytes = tenant_usage.journal_bytes + excluded.journal_bytes;
            RETURN NULL;
        END $$""",
        """CREATE OR REPLACE FUNCTION journal_removed() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO tenant_usage (tenant_id, shard, journal_bytes)
            SELECT tenant_id, pg_backend_pid() % 32, -SUM(LENGTH(data)) FROM removed
            GROUP BY tenant_id ORDER BY tenant_id ON CONFLICT (tenant_id, shard)
            DO UPDATE SET journal_bytes = tenant_usage.journal_bytes + excluded.journal_bytes;
            RETURN NULL;
        END $$""",
    )),
)

_V11 = (
    # SQLite: the journal becomes one b-tree keyed (tenant_id, run_id, seq) (WITHOUT ROWID),
    # so an append writes that b-tree's leaf only, not a rowid table and its primary-key
    # index too; and the store adds each transaction's journal data to `tenant_usage` once
    # per tenant (SQLiteStore), not a trigger once per row. Together a one-row append went
    # from 3.2 WAL pages per commit to 2.7. Deletes (pruning) still count by trigger.
    # PostgreSQL keeps its heap, its index and its per-statement triggers.
    PerDialect(sqlite=(
        """CREATE TABLE journal_v11 (tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
        seq INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL,
        tool TEXT, args_hash TEXT, data TEXT NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (tenant_id, run_id, seq)) WITHOUT ROWID""",
        "INSERT INTO journal_v11 (tenant_id, run_id, seq, key, kind, attempt, tool, args_hash,"
        " data, at) SELECT tenant_id, run_id, seq, key, kind, attempt, tool, args_hash, data,"
        " at FROM journal",
        "DROP TRIGGER journal_added",
        "DROP TRIGGER journal_removed",
        "DROP TABLE journal",
        "ALTER TABLE journal_v11 RENAME TO journal",
        """CREATE TRIGGER journal_removed AFTER DELETE ON journal BEGIN
        UPDATE tenant_usage SET journal_bytes = journal_bytes - LENGTH(OLD.data)
        WHERE tenant_id = OLD.tenant_id; END""",
    ), postgresql=()),
)

# Append, never edit: a database at version i runs MIGRATIONS[i:].
MIGRATIONS: tuple[tuple[str | PerDialect, ...], ...] = (
    _V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11)


def latest_version() -> int:
    """The schema version this code writes: the number of migrations."""
    return len(MIGRATIONS)


def check_version(found: int, where: str) -> None:
    """`StoreError` if the database at `where` (its URL without password) is newer than
    this code's schema."""
    if found > latest_version():
        raise StoreError(
            f"store at {where} has schema version {found}, newer than the {latest_version()} "
            "this agentflow knows; upgrade agentflow to open it"
        )


def pending_statements(found: int, dialect: Dialect) -> list[str]:
    """The statements that take a database at version `found` to `latest_version()`."""
    return [rendered for migration in MIGRATIONS[found:] for statement in migration
            for rendered in dialect.render(statement)]
