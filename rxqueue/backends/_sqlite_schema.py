"""The SQLite backend's schema, its migrations, connection settings and error messages.

Private to :mod:`rxqueue.backends.sqlite`. Everything here runs on the
connection's thread with a plain :class:`sqlite3.Connection` in autocommit
mode (``isolation_level=None``), so transactions are always explicit.

Versioning uses ``PRAGMA user_version``: ``MIGRATIONS[v]`` takes a database
from version ``v - 1`` to ``v``. A file whose version is newer than
:data:`SCHEMA_VERSION` was written by a newer rxqueue and is refused before
anything in it is touched.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final, Literal

from rxqueue.errors import BackendError, BackendUnavailable, SchemaError

Durability = Literal["normal", "full"]

SCHEMA_VERSION: Final = 7

# Statuses are the text values of rxqueue.task.Status. The claim's partial index
# holds only ready tasks, so claiming stays an index range scan however many
# finished tasks the table keeps (it beat a composite index on status).
# The tasks table's columns at version 2, copied by the rebuild of version 3.
_V2_COLUMNS: Final = (
    "id, queue, args, status, attempts, max_attempts, priority, run_at, created_at, "
    "lock_by, lock_at, done_at, last_error, result, metadata, unique_key, unique_until"
)

_V6_COLUMNS: Final = _V2_COLUMNS + ", cancel_reason, progress, progress_note"


MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE tasks (
            id           TEXT    NOT NULL UNIQUE,
            queue        TEXT    NOT NULL,
            args         BLOB,
            -- An OR chain, not `status IN (...)`: measured, the IN form costs
            -- 35-40% of claim and ack throughput on every UPDATE that checks it.
            status       TEXT    NOT NULL DEFAULT 'Pending' CHECK (
                             status = 'Pending' OR status = 'Queued' OR status = 'Running'
                             OR status = 'Done' OR status = 'Failed' OR status = 'Killed'),
            attempts     INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            priority     INTEGER NOT NULL DEFAULT 0,
            run_at       REAL    NOT NULL,
            created_at   REAL    NOT NULL,
            lock_by      TEXT,
            lock_at      REAL,
            done_at      REAL,
            last_error   TEXT,
            result       BLOB,
            metadata     TEXT
        )
        """,
        """
        CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
        WHERE status IN ('Pending', 'Failed')
        """,
        "CREATE INDEX tasks_leases ON tasks (lock_by) WHERE lock_by IS NOT NULL",
        """
        CREATE INDEX tasks_finished ON tasks (queue, done_at)
        WHERE status IN ('Done', 'Killed')
        """,
        """
        CREATE TABLE workers (
            queue      TEXT    NOT NULL,
            name       TEXT    NOT NULL,
            last_seen  REAL    NOT NULL,
            started_at REAL    NOT NULL,
            pid        INTEGER,
            host       TEXT,
            PRIMARY KEY (queue, name)
        ) WITHOUT ROWID
        """,
    ),
    # Unique tasks: one holder per (queue, key). A finished holder keeps its key
    # until a push needs it and finds it free (past unique_until), which clears it.
    2: (
        "ALTER TABLE tasks ADD COLUMN unique_key TEXT",
        "ALTER TABLE tasks ADD COLUMN unique_until REAL",
        """
        CREATE UNIQUE INDEX tasks_unique ON tasks (queue, unique_key)
        WHERE unique_key IS NOT NULL
        """,
    ),
    # Cancellation: a Cancelled status (finished, like Done and Killed) and the
    # reason of a request on a claimed task, which its worker reads with its
    # heartbeat. SQLite cannot alter a CHECK, so the table is rebuilt (rowids
    # kept: list() orders by them) and every index made again.
    3: (
        """
        CREATE TABLE tasks_new (
            id            TEXT    NOT NULL UNIQUE,
            queue         TEXT    NOT NULL,
            args          BLOB,
            -- An OR chain, not `status IN (...)`: measured, the IN form costs
            -- 35-40% of claim and ack throughput on every UPDATE that checks it.
            status        TEXT    NOT NULL DEFAULT 'Pending' CHECK (
                              status = 'Pending' OR status = 'Queued' OR status = 'Running'
                              OR status = 'Done' OR status = 'Failed' OR status = 'Killed'
                              OR status = 'Cancelled'),
            attempts      INTEGER NOT NULL DEFAULT 0,
            max_attempts  INTEGER NOT NULL,
            priority      INTEGER NOT NULL DEFAULT 0,
            run_at        REAL    NOT NULL,
            created_at    REAL    NOT NULL,
            lock_by       TEXT,
            lock_at       REAL,
            done_at       REAL,
            last_error    TEXT,
            result        BLOB,
            metadata      TEXT,
            unique_key    TEXT,
            unique_until  REAL,
            cancel_reason TEXT
        )
        """,
        f"""
        INSERT INTO tasks_new (rowid, {_V2_COLUMNS})
        SELECT rowid, {_V2_COLUMNS} FROM tasks ORDER BY rowid
        """,
        "DROP TABLE tasks",  # and its indexes
        "ALTER TABLE tasks_new RENAME TO tasks",
        """
        CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
        WHERE status IN ('Pending', 'Failed')
        """,
        "CREATE INDEX tasks_leases ON tasks (lock_by) WHERE lock_by IS NOT NULL",
        """
        CREATE INDEX tasks_finished ON tasks (queue, done_at)
        WHERE status IN ('Done', 'Killed', 'Cancelled')
        """,
        """
        CREATE UNIQUE INDEX tasks_unique ON tasks (queue, unique_key)
        WHERE unique_key IS NOT NULL
        """,
    ),
    # Limits shared by all workers: a queue's rate-limit token bucket, read and
    # updated by claims inside their write transaction (rxqueue.backends.base.Limits).
    4: (
        """
        CREATE TABLE limits (
            queue      TEXT NOT NULL PRIMARY KEY,
            tokens     REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # Progress: what a running handler last reported (await ctx.progress(...)).
    5: (
        "ALTER TABLE tasks ADD COLUMN progress REAL",
        "ALTER TABLE tasks ADD COLUMN progress_note TEXT",
    ),
    # Every ack paid to keep tasks_finished up to date, for vacuum's sake alone:
    # without it, acks run about 40% faster (50,000 no-op tasks: 48k/s to 68k/s)
    # and vacuum, periodic maintenance, scans the table instead.
    6: ("DROP INDEX IF EXISTS tasks_finished",),
    # Dependencies (workflows): a Waiting status, held by `waiting` unfinished parents
    # listed in task_edges; the CHECK needs the table rebuilt, as at version 3.
    7: (
        """
        CREATE TABLE tasks_new (
            id            TEXT    NOT NULL UNIQUE,
            queue         TEXT    NOT NULL,
            args          BLOB,
            -- An OR chain, not `status IN (...)`: measured, the IN form costs
            -- 35-40% of claim and ack throughput on every UPDATE that checks it.
            status        TEXT    NOT NULL DEFAULT 'Pending' CHECK (
                              status = 'Pending' OR status = 'Queued' OR status = 'Running'
                              OR status = 'Done' OR status = 'Failed' OR status = 'Killed'
                              OR status = 'Cancelled' OR status = 'Waiting'),
            attempts      INTEGER NOT NULL DEFAULT 0,
            max_attempts  INTEGER NOT NULL,
            priority      INTEGER NOT NULL DEFAULT 0,
            run_at        REAL    NOT NULL,
            created_at    REAL    NOT NULL,
            lock_by       TEXT,
            lock_at       REAL,
            done_at       REAL,
            last_error    TEXT,
            result        BLOB,
            metadata      TEXT,
            unique_key    TEXT,
            unique_until  REAL,
            cancel_reason TEXT,
            progress      REAL,
            progress_note TEXT,
            waiting       INTEGER NOT NULL DEFAULT 0,
            -- how many tasks' results make its payload: a claim reads them only then
            dependencies  INTEGER NOT NULL DEFAULT 0
        )
        """,
        f"""
        INSERT INTO tasks_new (rowid, {_V6_COLUMNS})
        SELECT rowid, {_V6_COLUMNS} FROM tasks ORDER BY rowid
        """,
        "DROP TABLE tasks",  # and its indexes
        "ALTER TABLE tasks_new RENAME TO tasks",
        """
        CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at, id)
        WHERE status IN ('Pending', 'Failed')
        """,
        "CREATE INDEX tasks_leases ON tasks (lock_by) WHERE lock_by IS NOT NULL",
        """
        CREATE UNIQUE INDEX tasks_unique ON tasks (queue, unique_key)
        WHERE unique_key IS NOT NULL
        """,
        # child waits for parent; `position` orders the child's inputs. Kept until
        # vacuum, so a retried child still gets its inputs. No triggers keep the join:
        # measured, even one gated on a flag column cost every Done 2 us (+30%); the
        # backend settles dependants itself (sqlite._settle) wherever a task ends.
        """
        CREATE TABLE task_edges (
            child    TEXT    NOT NULL,
            position INTEGER NOT NULL,
            parent   TEXT    NOT NULL,
            PRIMARY KEY (child, position)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX task_edges_parent ON task_edges (parent)",
    ),
}


_TABLES: Final = ("tasks", "workers")


def prepare(
    conn: sqlite3.Connection, *, path: str, durability: Durability, busy_timeout: float
) -> None:
    """Check the schema version, set the pragmas, and migrate if needed.

    The version is read first, so a newer file is refused before ``journal_mode``
    (which rewrites the header) or anything else writes to it. ``busy_timeout``
    bounds the retries of the steps that SQLite fails at once when another
    process is opening the same file.
    """
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise _newer(path, version)
    try:
        # SQLite answers a racing switch to WAL with SQLITE_BUSY at once, without
        # calling the busy handler (two openers that both hold the shared lock
        # would deadlock waiting for the exclusive one): these retries stand in.
        _retry_busy(conn, "PRAGMA journal_mode = WAL", busy_timeout)
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
        raise BackendUnavailable(
            f"SQLite database {path}: could not switch it to WAL mode: another process "
            f"held the file while opening it, through {busy_timeout:g}s of retries. A "
            "program that keeps the file open in rollback-journal mode, or in a long "
            "transaction, does this; try again once it lets go "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA temp_store = MEMORY")
    if version < SCHEMA_VERSION:
        migrate(conn, path=path, busy_timeout=busy_timeout)
    else:
        _check_tables(conn, path=path, version=version)


def migrate(conn: sqlite3.Connection, *, path: str, busy_timeout: float) -> None:
    """Apply the missing migrations in one write transaction.

    The version is read again under the write lock: of several processes
    opening a new file at once, one creates the tables and the others see it.
    """
    # BEGIN IMMEDIATE waits in the busy handler; a busy answer that comes sooner
    # (none was seen in testing, unlike the WAL switch) is retried until the
    # same deadline, which a full wait in the handler has already passed.
    _retry_busy(conn, "BEGIN IMMEDIATE", busy_timeout)
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise _newer(path, version)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                try:
                    conn.execute(statement)
                except sqlite3.OperationalError as exc:
                    if "already exists" not in str(exc):
                        raise
                    raise SchemaError(
                        f"SQLite database {path}: cannot create rxqueue's schema (version "
                        f"{step}): {exc}. The file holds tables rxqueue did not create; "
                        "give rxqueue a file of its own."
                    ) from exc
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# First pause and cap of the retries: a racing opener holds the file for well
# under a millisecond, so start short; cap so a long wait still polls often.
_FIRST_PAUSE: Final = 0.001
_MAX_PAUSE: Final = 0.05


def _retry_busy(conn: sqlite3.Connection, sql: str, timeout: float) -> None:
    """Run ``sql``, again after growing pauses while SQLite says busy, for up to
    ``timeout`` seconds; then the last busy error is raised.

    Runs on the connection's thread, so sleeping blocks nothing else.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            left = deadline - time.monotonic()
            if not _is_busy(exc) or left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, _MAX_PAUSE)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


def _user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def _newer(path: str, version: int) -> SchemaError:
    return SchemaError(
        f"SQLite database {path} has rxqueue schema version {version}, newer than the "
        f"version {SCHEMA_VERSION} this rxqueue knows; it was left untouched. Upgrade "
        "rxqueue, or point this backend to another file."
    )


def _check_tables(conn: sqlite3.Connection, *, path: str, version: int) -> None:
    found = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('tasks', 'workers')"
        )
    }
    missing = [name for name in _TABLES if name not in found]
    if missing:
        raise SchemaError(
            f"SQLite database {path} says rxqueue schema version {version} but has no "
            f"{' or '.join(missing)} table: the schema is damaged. Restore the file from "
            "a backup, or point this backend to a new file."
        )


# --- error translation ---------------------------------------------------------------

_HINTS: Final = {
    sqlite3.SQLITE_BUSY: (
        "the database is locked: another connection held its write lock for longer "
        "than busy_timeout={busy:g}s. Raise busy_timeout=, or find the process that "
        "keeps a long transaction open"
    ),
    sqlite3.SQLITE_LOCKED: (
        "a table is locked by another statement on the same connection; retry the operation"
    ),
    sqlite3.SQLITE_PROTOCOL: (
        "another process raced this one for the WAL file's locks; retry the operation"
    ),
    sqlite3.SQLITE_NOMEM: "SQLite ran out of memory; retry once this process has memory to spare",
    sqlite3.SQLITE_SCHEMA: (
        "the schema changed while the statement ran (another process migrated the "
        "file); retry the operation"
    ),
    sqlite3.SQLITE_READONLY: (
        "the database is read-only (file permissions, a read-only mount, or mode=ro). "
        "rxqueue writes on every claim and ack: give it a writable file, in a writable "
        "directory (WAL mode writes the -wal and -shm files beside it)"
    ),
    sqlite3.SQLITE_FULL: (
        "the disk is full (or the database reached its size limit). Free some space; "
        "the failed operation was rolled back and nothing committed was lost"
    ),
    sqlite3.SQLITE_NOTADB: (
        "the file is not a SQLite database (or it is encrypted or was overwritten). "
        "Point rxqueue to another file, or restore this one from a backup"
    ),
    sqlite3.SQLITE_CORRUPT: (
        "the database file is corrupt. Restore it from a backup, or salvage it with "
        "the sqlite3 shell's .recover command"
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "the database file cannot be opened: check that its directory exists and that "
        "this process may read and write there"
    ),
    sqlite3.SQLITE_IOERR: "a disk I/O error occurred: check the disk and the file system",
}

# Primary result codes for which the same operation may succeed later, unchanged:
# someone else's lock, a lock race, a passing shortage. Every other code (read-only,
# full, corrupt, not a database, cannot open, I/O error, ...) needs a fix first.
TRANSIENT: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_SCHEMA,
    }
)


def translate(exc: sqlite3.Error, *, path: str, busy_timeout: float) -> BackendError:
    """A :class:`BackendError` naming the file, what went wrong and what to do.

    :class:`BackendUnavailable` when trying again may succeed (see
    :data:`TRANSIENT`), a plain :class:`BackendError` otherwise. The caller
    chains it (``raise translate(exc, ...) from exc``).
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    hint = _HINTS.get(primary) if primary is not None else None
    if hint is None:
        hint = "the operation failed"
    detail = f"{type(exc).__name__}: {exc}"
    kind = BackendUnavailable if primary in TRANSIENT else BackendError
    return kind(f"SQLite database {path}: {hint.format(busy=busy_timeout)} ({detail})")
