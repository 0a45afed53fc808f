"""The PostgreSQL backend's schema, its migrations, and its error messages.

Private to :mod:`rxqueue.backends.postgres`. Every statement names its tables
with the backend's schema (``"<schema>".tasks``), so several schemas (tests,
tenants) live side by side in one database.

Versioning: the table ``"<schema>".migrations`` holds one row per migration
applied; ``MIGRATIONS[v]`` takes a schema from version ``v - 1`` to ``v``.
Migrations run in one transaction under a transaction-scoped advisory lock
keyed by the schema name, so any number of processes may open a fresh
database at once: the first migrates, the others wait, then find it done. A
schema whose version is newer than :data:`SCHEMA_VERSION` was written by a
newer rxqueue and is refused before anything in it is touched.

:func:`schema_sql` prints the whole DDL, for users who apply migrations with
their own tools (``rxqueue schema --sql``).
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from rxqueue.errors import BackendError, BackendUnavailable, InvalidOption, SchemaError

SCHEMA_VERSION: Final = 6

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SCHEMA: Final = 48  # channel names (<schema>_<hash>_d) must fit in 63 bytes


def check_schema(name: Any) -> str:
    """``name`` if it is a plain SQL identifier; InvalidOption otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or len(name) > _MAX_SCHEMA:
        raise InvalidOption(
            f"schema must be an SQL identifier of at most {_MAX_SCHEMA} characters "
            f"(letters, digits and underscores, not starting with a digit), got {name!r}"
        )
    return name


def quote(schema: str) -> str:
    """The schema as a quoted identifier (names keep their case, as given)."""
    return f'"{check_schema(schema)}"'


# Statuses are the text values of rxqueue.task.Status. Times are epoch seconds
# (double precision), as on SQLite, read through the backend's clock. The claim's
# partial index holds only ready tasks, so claiming stays an index range scan
# however many finished tasks the table keeps.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """
        CREATE TABLE {s}.tasks (
            id           text             PRIMARY KEY,
            queue        text             NOT NULL,
            args         bytea,
            status       text             NOT NULL DEFAULT 'Pending' CHECK (status IN
                             ('Pending', 'Queued', 'Running', 'Done', 'Failed', 'Killed')),
            attempts     integer          NOT NULL DEFAULT 0,
            max_attempts integer          NOT NULL,
            priority     integer          NOT NULL DEFAULT 0,
            run_at       double precision NOT NULL,
            created_at   double precision NOT NULL,
            lock_by      text,
            lock_at      double precision,
            done_at      double precision,
            last_error   text,
            result       bytea,
            metadata     jsonb
        )
        """,
        """
        CREATE INDEX tasks_ready ON {s}.tasks (queue, priority DESC, run_at, id)
        WHERE status IN ('Pending', 'Failed')
        """,
        # Held tasks, for reclaim and for a restarted worker's predecessor. Acks and
        # releases must not use it: see _BY_KEY in rxqueue.backends.postgres.
        """
        CREATE INDEX tasks_held ON {s}.tasks (queue, lock_by)
        WHERE status IN ('Queued', 'Running')
        """,
        """
        CREATE INDEX tasks_finished ON {s}.tasks (queue, done_at)
        WHERE status IN ('Done', 'Killed')
        """,
        "CREATE INDEX tasks_created ON {s}.tasks (queue, created_at, id)",
        """
        CREATE TABLE {s}.workers (
            queue      text             NOT NULL,
            name       text             NOT NULL,
            last_seen  double precision NOT NULL,
            started_at double precision NOT NULL,
            pid        integer,
            host       text,
            PRIMARY KEY (queue, name)
        )
        """,
        # Who waits for which task in another process (wait_for): a finishing ack
        # sends a completion NOTIFY only for these, so acks cost no NOTIFY (a
        # cluster-wide commit lock) while nobody waits. Unlogged: losing it in a
        # crash only costs the waiters a poll.
        """
        CREATE UNLOGGED TABLE {s}.waiters (
            task_id text             NOT NULL,
            token   text             NOT NULL,
            since   double precision NOT NULL,
            PRIMARY KEY (task_id, token)
        )
        """,
    ),
    # Unique tasks: one holder per (queue, key). A finished holder keeps its key
    # until a push needs it and finds it free (past unique_until), which clears it.
    2: (
        """
        ALTER TABLE {s}.tasks ADD COLUMN unique_key text,
                              ADD COLUMN unique_until double precision
        """,
        """
        CREATE UNIQUE INDEX tasks_unique ON {s}.tasks (queue, unique_key)
        WHERE unique_key IS NOT NULL
        """,
    ),
    # Cancellation: a Cancelled status (finished, like Done and Killed) and the
    # reason of a request on a claimed task, which its worker reads with its
    # heartbeat. The status CHECK is the one PostgreSQL named for the column in
    # version 1. The new one only allows more, yet ADD CONSTRAINT still checks
    # every row (one scan, under the table lock the DROP takes anyway).
    3: (
        "ALTER TABLE {s}.tasks ADD COLUMN cancel_reason text",
        """
        ALTER TABLE {s}.tasks DROP CONSTRAINT tasks_status_check,
            ADD CONSTRAINT tasks_status_check CHECK (status IN
                ('Pending', 'Queued', 'Running', 'Done', 'Failed', 'Killed', 'Cancelled'))
        """,
        "DROP INDEX {s}.tasks_finished",
        """
        CREATE INDEX tasks_finished ON {s}.tasks (queue, done_at)
        WHERE status IN ('Done', 'Killed', 'Cancelled')
        """,
    ),
    # Limits shared by all workers: one row per queue, locked (FOR UPDATE, by an
    # upsert) by every claim under rate_limit / max_running, which serialises those
    # claims; it holds the rate limit's token bucket (rxqueue.backends.base.Limits).
    4: (
        """
        CREATE TABLE {s}.limits (
            queue      text             PRIMARY KEY,
            tokens     double precision NOT NULL,
            updated_at double precision NOT NULL
        )
        """,
    ),
    # Progress: what a running handler last reported (await ctx.progress(...)).
    5: (
        "ALTER TABLE {s}.tasks ADD COLUMN progress double precision",
        "ALTER TABLE {s}.tasks ADD COLUMN progress_note text",
    ),
    # Dependencies (workflows): a Waiting status, held by `waiting` unfinished parents
    # listed in task_edges. Two flags keep plain tasks out of it: `has_dependencies`
    # (the claim assembles inputs only for those) and `has_dependants` (acks count
    # the dependants of those down, and the trigger that spreads a failure fires
    # only for those). Columns with constant defaults: no table rewrite.
    6: (
        """
        ALTER TABLE {s}.tasks ADD COLUMN waiting integer NOT NULL DEFAULT 0,
            ADD COLUMN has_dependencies boolean NOT NULL DEFAULT false,
            ADD COLUMN has_dependants boolean NOT NULL DEFAULT false
        """,
        """
        ALTER TABLE {s}.tasks DROP CONSTRAINT tasks_status_check,
            ADD CONSTRAINT tasks_status_check CHECK (status IN ('Pending', 'Queued',
                'Running', 'Done', 'Failed', 'Killed', 'Cancelled', 'Waiting'))
        """,
        # child waits for parent; `position` orders the child's inputs. Kept until
        # the child is vacuumed, so a retried child still gets its inputs.
        """
        CREATE TABLE {s}.task_edges (
            child    text    NOT NULL,
            position integer NOT NULL,
            parent   text    NOT NULL,
            PRIMARY KEY (child, position)
        )
        """,
        "CREATE INDEX task_edges_parent ON {s}.task_edges (parent)",
        # family(run_id): a workflow's steps are "<run_id>/<step>"; byte-wise
        # (pattern) order, whatever the database's collation. Plain ids have no "/".
        """
        CREATE INDEX tasks_family ON {s}.tasks (id text_pattern_ops)
        WHERE strpos(id, '/') > 0
        """,
        # The join lives in the store, so every path that ends a task (acks, kill,
        # cancel, expired leases, other tools) keeps it, in the same transaction.
        # A parent Done: its waiting children count down (row locks serialise
        # concurrent parents); at zero one is released, its delay counting from
        # the parent's done_at, and workers of its queue are woken
        # (<schema>_released, payload: the queue). A parent Killed or Cancelled:
        # its waiting children end Killed, naming the task that failed first;
        # their own trigger carries it down the graph.
        """
        -- Children by `id = ANY(ARRAY(...))`, not `id IN (...)`: on a table never
        -- analyzed the planner hash-joined a sequential scan of tasks (see _CLAIM).
        CREATE FUNCTION {s}.tasks_settle() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {s}.tasks AS c SET status = 'Killed', waiting = 0,
                done_at = NEW.done_at,
                last_error = CASE WHEN NEW.last_error LIKE 'dependency %'
                    THEN NEW.last_error
                    ELSE 'dependency ' || NEW.id || ' ended ' || NEW.status
                         || coalesce(': ' || NEW.last_error, '') END
            WHERE c.id = ANY(ARRAY(SELECT e.child FROM {s}.task_edges AS e
                                   WHERE e.parent = NEW.id))
              AND c.status = 'Waiting';
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER tasks_settle AFTER UPDATE OF status ON {s}.tasks FOR EACH ROW
        WHEN (NEW.has_dependants AND NEW.status IN ('Killed', 'Cancelled')
              AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION {s}.tasks_settle()
        """,
    ),
}

_VERSION_TABLE: Final = """
CREATE TABLE {s}.migrations (
    version    integer          PRIMARY KEY,
    applied_at double precision NOT NULL DEFAULT extract(epoch FROM now()),
    rxqueue    text
)
"""
_TABLES: Final = ("tasks", "workers", "waiters", "task_edges")


def schema_sql(schema: str = "rxqueue") -> str:
    """The DDL of rxqueue's schema, for applying with your own migration tool."""
    s = quote(schema)
    statements = [f"CREATE SCHEMA IF NOT EXISTS {s}", _VERSION_TABLE.format(s=s)]
    for version in sorted(MIGRATIONS):
        statements += [statement.format(s=s) for statement in MIGRATIONS[version]]
        statements.append(f"INSERT INTO {s}.migrations (version) VALUES ({version})")
    body = ";\n".join(textwrap.dedent(statement).strip() for statement in statements)
    return f"-- rxqueue schema version {SCHEMA_VERSION}\nBEGIN;\n{body};\nCOMMIT;\n"


def lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that serialises migrations of ``schema``."""
    digest = hashlib.sha1(f"rxqueue-migrate:{schema}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# Catalog reads by plain SQL, not to_regclass(): to_regclass answers from this
# backend's catalog cache, which does not yet know of tables another process
# created while we waited for the migration lock; a query on pg_class uses the
# statement's snapshot, which does.
_TABLES_PRESENT: Final = """
SELECT c.relname FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
"""


async def _present(conn: asyncpg.Connection, schema: str, names: Sequence[str]) -> set[str]:
    rows = await conn.fetch(_TABLES_PRESENT, schema, list(names))
    return {row[0] for row in rows}


async def current_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The schema's version, or None when it has no version table (a fresh schema)."""
    if not await _present(conn, schema, ["migrations"]):
        return None
    version = await conn.fetchval(f"SELECT max(version) FROM {quote(schema)}.migrations")
    return int(version or 0)


async def prepare(conn: asyncpg.Connection, *, schema: str, where: str) -> None:
    """Check the version and migrate if needed (see the module docstring).

    The version is read first, outside any lock: an up-to-date schema costs
    one query, and a newer one is refused before anything is written.
    """
    version = await current_version(conn, schema)
    if version is not None and version > SCHEMA_VERSION:
        raise _newer(schema, version, where)
    if version == SCHEMA_VERSION:
        await _check_tables(conn, schema=schema, version=version, where=where)
        return
    s = quote(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema))
        version = await current_version(conn, schema)  # again, under the lock
        if version is not None and version > SCHEMA_VERSION:
            raise _newer(schema, version, where)
        if version is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await _create(conn, _VERSION_TABLE.format(s=s), schema, 0, where)
            version = 0
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                await _create(conn, statement.format(s=s), schema, step, where)
            await conn.execute(
                f"INSERT INTO {s}.migrations (version, rxqueue) VALUES ($1, $2)",
                step,
                _rxqueue_version(),
            )


async def _create(
    conn: asyncpg.Connection, statement: str, schema: str, step: int, where: str
) -> None:
    try:
        await conn.execute(statement)
    except (asyncpg.DuplicateTableError, asyncpg.DuplicateObjectError) as exc:
        raise SchemaError(
            f"{where}: cannot create rxqueue's tables (version {step}) in schema "
            f"{schema!r}: {exc}. The schema holds tables rxqueue did not create; "
            "give rxqueue a schema of its own (schema=...)"
        ) from exc


def _rxqueue_version() -> str:
    try:
        from importlib.metadata import version

        return version("rxqueue")
    except Exception:  # not installed as a distribution
        return "unknown"


def _newer(schema: str, version: int, where: str) -> SchemaError:
    return SchemaError(
        f"{where}: schema {schema!r} has rxqueue schema version {version}, newer than the "
        f"version {SCHEMA_VERSION} this rxqueue knows; it was left untouched. Upgrade "
        "rxqueue, or give this backend another schema (schema=...)"
    )


async def _check_tables(conn: asyncpg.Connection, *, schema: str, version: int, where: str) -> None:
    missing = [name for name in _TABLES if name not in await _present(conn, schema, _TABLES)]
    if missing:
        raise SchemaError(
            f"{where}: schema {schema!r} says rxqueue schema version {version} but has no "
            f"{' or '.join(missing)} table: the schema is damaged. Restore it from a "
            "backup, or give this backend a new schema (schema=...)"
        )


# --- error translation ---------------------------------------------------------------

# Errors after which the same operation may succeed later, unchanged: a lost or
# refused connection, a server restarting or failing over, a conflict between
# transactions, a cancelled statement, a passing shortage.
TRANSIENT: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,  # statement_timeout, a cancel request
    asyncpg.ReadOnlySQLTransactionError,  # a standby, during a failover
    asyncpg.OutOfMemoryError,
    asyncpg.InvalidCachedStatementError,  # the schema changed under a prepared statement
    # Also "cannot switch to state ...": a connection the server ended while idle,
    # whose end asyncpg has not noticed yet. The connection is dropped; retry.
    asyncpg.InternalClientError,
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect_timeout, command_timeout
)

_HINTS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (
        asyncpg.InvalidPasswordError,
        "the server refused the password: check the user and password in the URL "
        "(or PGPASSWORD, ~/.pgpass)",
    ),
    (
        asyncpg.InvalidAuthorizationSpecificationError,
        "the server refused the login: check the user name and the server's pg_hba.conf",
    ),
    (
        asyncpg.InvalidCatalogNameError,
        "the database does not exist: create it (createdb) or fix the URL's database name",
    ),
    (
        asyncpg.InsufficientPrivilegeError,
        "permission denied: grant this user CREATE on the database (for the schema) "
        "and rights on the rxqueue schema's tables",
    ),
    (
        asyncpg.TooManyConnectionsError,
        "the server has no free connection slots: lower pool_max_size, or raise the "
        "server's max_connections",
    ),
    (
        asyncpg.CannotConnectNowError,
        "the server is starting up or shutting down; try again shortly",
    ),
    (
        asyncpg.AdminShutdownError,
        "the server ended this connection (an administrator, a restart or a failover); "
        "the next operation reconnects",
    ),
    (
        asyncpg.CrashShutdownError,
        "the server is recovering from a crash; try again shortly",
    ),
    (
        asyncpg.TransactionRollbackError,
        "the transaction conflicted with another one (serialization failure or deadlock) "
        "and was rolled back; try again",
    ),
    (
        asyncpg.QueryCanceledError,
        "the statement was cancelled (statement_timeout, or a cancel request); try again",
    ),
    (
        asyncpg.ReadOnlySQLTransactionError,
        "the server is read-only (a standby, or a failover in progress): point the URL "
        "at the primary",
    ),
    (
        asyncpg.PostgresConnectionError,
        "the connection to the server was lost; the next operation reconnects",
    ),
    (
        asyncpg.DiskFullError,
        "the server's disk is full: free some space; the failed operation was rolled back",
    ),
    (
        asyncpg.UndefinedTableError,
        "rxqueue's tables are missing from this schema (dropped while in use, or the "
        "connection is to another database): open the backend again to recreate them",
    ),
    (
        TimeoutError,
        "the server did not answer in time (connect_timeout / command_timeout): check "
        "that it runs and is reachable, or raise the timeout",
    ),
    (
        OSError,
        "cannot reach the server: check that PostgreSQL runs there and accepts TCP "
        "connections, and the URL's host and port",
    ),
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "closed" in text or "lost" in text or "terminated" in text
    return isinstance(exc, TRANSIENT)


def translate(exc: BaseException, *, where: str) -> BackendError:
    """A :class:`BackendError` naming the server, what went wrong and what to do.

    :class:`BackendUnavailable` when trying again may succeed (see
    :data:`TRANSIENT`), a plain :class:`BackendError` otherwise. The caller
    chains it (``raise translate(exc, ...) from exc``).
    """
    hint = next((text for kind, text in _HINTS if isinstance(exc, kind)), None)
    if hint is None:
        if isinstance(exc, asyncpg.InterfaceError) and is_transient(exc):
            hint = "the connection to the server was lost; the next operation reconnects"
        elif isinstance(exc, asyncpg.InternalClientError):
            hint = "the connection to the server was lost or broken; the next operation reconnects"
        else:
            hint = "the operation failed"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    kind = BackendUnavailable if is_transient(exc) else BackendError
    return kind(f"{where}: {hint} ({detail})")
