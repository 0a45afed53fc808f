"""SQLite connection machinery: jobs, thread hops and the aiosqlite boundary.

Each call on an aiosqlite connection is a hop to its thread (35-80 µs), far
more than the rest of a task's path. So the SQLite backend never runs
operations one by one: each is a :class:`Job` queued on its :class:`Connection`,
and whatever was queued while the previous hop ran goes in the next hop, in
one transaction (a savepoint per job).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast

import aiosqlite

from rxqueue.backends import _sqlite_schema as schema
from rxqueue.errors import BackendClosed, BackendError

R = TypeVar("R")


# --- jobs: what one thread hop runs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job(Generic[R]):
    """One operation for the next hop: ``run(conn)`` on the connection's thread.

    ``write`` jobs run inside the hop's write transaction, each in a savepoint, so
    a job that raises on purpose (a duplicate id, an unknown task) undoes only its
    own changes. A ``probe`` (a cheap read) lets a hop with nothing else to write
    skip the write lock when the job would do nothing; the result is then ``empty``.
    """

    run: Callable[[sqlite3.Connection], R]
    write: bool = False
    probe: Callable[[sqlite3.Connection], bool] | None = None
    empty: Any = None


Outcome = tuple[bool, Any]  # (succeeded, value or exception)


def run_jobs(conn: sqlite3.Connection, jobs: Sequence[Job[Any]]) -> list[Outcome]:
    """Run one hop's jobs; the write jobs share one transaction.

    A sqlite3 error (locked, full, corrupt, ...) aborts the whole hop: every write
    is rolled back and the caller fails every job of the hop with it.
    """
    outcomes: list[Outcome] = [(True, None)] * len(jobs)
    writing = any(job.write and job.probe is None for job in jobs)
    todo: list[int] = []
    for index, job in enumerate(jobs):
        if job.probe is not None and not writing and not job.probe(conn):
            outcomes[index] = (True, job.empty)
        else:
            todo.append(index)
    write = any(jobs[index].write for index in todo)
    if write:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for index in todo:
            outcomes[index] = _run_job(conn, jobs[index], savepoint=write and jobs[index].write)
        if write:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _run_job(conn: sqlite3.Connection, job: Job[Any], *, savepoint: bool) -> Outcome:
    if savepoint:
        conn.execute("SAVEPOINT job")
    try:
        value = job.run(conn)
    except sqlite3.Error:
        raise
    except Exception as exc:
        if savepoint:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
        return (False, exc)
    if savepoint:
        conn.execute("RELEASE job")
    return (True, value)


# --- aiosqlite: the only two places that touch its private API ---------------------------


async def _open(target: str, *, uri: bool, busy_timeout: float) -> aiosqlite.Connection:
    conn = aiosqlite.connect(target, uri=uri, timeout=busy_timeout, isolation_level=None)
    # Private API: aiosqlite's thread is not a daemon, so a backend that a program
    # forgot to close would keep the interpreter from exiting. Abandoning the
    # connection at exit is safe: SQLite rolls back whatever was not committed.
    conn._thread.daemon = True
    try:
        return await conn
    except Exception:
        # A failed connect stops the thread, which then reports to this loop: wait
        # for it here, while the loop is sure to be running.
        await asyncio.to_thread(conn._thread.join, 5.0)
        raise


async def _call(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], R]) -> R:
    """Run ``fn(sqlite3_connection)`` on the connection's thread, in ONE hop.

    Private API (``Connection._execute`` and ``_conn``): aiosqlite's public methods
    run one statement per hop, and a hop costs more than a batch of statements.
    """
    sync_conn = conn._conn
    return await conn._execute(fn, sync_conn)  # type: ignore[no-untyped-call, no-any-return]


class Connection:
    """One lazily opened connection and the queue of jobs for its next hop."""

    def __init__(
        self,
        target: str,
        *,
        uri: bool,
        path: str,
        durability: schema.Durability,
        busy_timeout: float,
    ) -> None:
        self.target = target
        self.uri = uri
        self.path = path
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.hops = 0  # hops that ran (tests check that work is batched)
        self._conn: aiosqlite.Connection | None = None
        self._queued: list[tuple[Job[Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, job: Job[R]) -> R:
        """Queue ``job`` for the next hop and wait for its result."""
        if self._closed:
            raise BackendClosed(f"the SQLite backend for {self.path} is closed; open a new one")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((job, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return cast(R, await future)

    async def _drain(self) -> None:
        """Run hops while jobs are queued; the hop in flight collects the next batch."""
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._hop(batch)
        finally:
            self._drainer = None
            # Only a cancelled drainer (the loop is shutting down) leaves jobs behind.
            leftover, self._queued = self._queued, []
            for _, future in leftover:
                future.cancel()

    async def _hop(self, batch: list[tuple[Job[Any], asyncio.Future[Any]]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            conn = await self._connect()
            outcomes = await _call(conn, partial(run_jobs, jobs=jobs))
        except sqlite3.Error as exc:
            for _, future in batch:
                _settle(future, (False, self.translate(exc)))
            return
        except BaseException as exc:
            for _, future in batch:
                _settle(future, (False, exc))
            if not isinstance(exc, Exception):
                raise
            return
        self.hops += 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)

    async def _connect(self) -> aiosqlite.Connection:
        if self._conn is None:
            conn = await _open(self.target, uri=self.uri, busy_timeout=self.busy_timeout)
            try:
                prepare = partial(
                    schema.prepare,
                    path=self.path,
                    durability=self.durability,
                    busy_timeout=self.busy_timeout,
                )
                await _call(conn, prepare)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    def translate(self, exc: sqlite3.Error) -> BackendError:
        error = schema.translate(exc, path=self.path, busy_timeout=self.busy_timeout)
        error.__cause__ = exc
        return error

    async def close(self) -> None:
        self._closed = True
        while self._drainer is not None:
            await asyncio.wait({self._drainer})
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except sqlite3.Error as exc:
                raise self.translate(exc) from exc


def _settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    if future.done():
        return  # its caller was cancelled; the job ran anyway
    ok, value = outcome
    if ok:
        future.set_result(value)
    elif isinstance(value, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(value)
