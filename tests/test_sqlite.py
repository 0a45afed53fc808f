"""SqliteBackend: what is specific to SQLite.

Schema and migrations, pragmas, index use, queues sharing a file, in-process
wake-up, group commit, leases with a ManualClock, error translation, release
on stop, vacuum. The generic contract is the conformance suite's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import rxqueue
from rxqueue import ManualClock, Status, Task, WorkerBuilder, events
from rxqueue.acks import AckBatch
from rxqueue.backends import _sqlite_schema as schema
from rxqueue.backends import sqlite as sqlite_module
from rxqueue.backends.sqlite import SqliteBackend
from rxqueue.codec import DEFAULT_CODEC
from rxqueue.errors import (
    BackendClosed,
    BackendError,
    BackendUnavailable,
    InvalidOption,
    InvalidTransition,
    SchemaError,
    TaskExists,
    TaskNotFound,
    WorkerError,
)
from rxqueue.task import Done, Killed, Retry, Started, Update

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
async def backend(path: Path, clock: ManualClock) -> AsyncIterator[SqliteBackend]:
    async with SqliteBackend(path, clock=clock, lease_timeout=30.0) as b:
        yield b


@contextlib.asynccontextmanager
async def unopened(path: Path | str, **options: Any) -> AsyncIterator[SqliteBackend]:
    """A backend used without ``async with`` (which opens it, so would raise first)."""
    b = SqliteBackend(path, **options)
    try:
        yield b
    finally:
        await b.close()


async def report(
    b: SqliteBackend, worker: str, updates: list[tuple[Task[Any], Update]]
) -> list[str]:
    """Report as worker ``worker`` would: one typed batch; the refused ids."""
    return list(await b.report(AckBatch.of(worker, updates)))


def encoded(value: Any) -> bytes:
    return DEFAULT_CODEC.encode(value)


async def on_thread(b: SqliteBackend, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Run ``fn`` on the backend's own connection (per-connection pragmas, limits)."""
    return await b._read(fn)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def exists(path: Path | str) -> bool:
    return Path(path).exists()


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statuses(tasks: list[Task[Any]]) -> list[Status]:
    return [task.status for task in tasks]


# --- construction and URLs ----------------------------------------------------------------


def test_constructor_does_no_io(path: Path) -> None:
    SqliteBackend(path, queue="q")
    assert not path.exists()


async def test_close_without_use(path: Path) -> None:
    await SqliteBackend(path).close()
    assert not exists(path)


def test_connect_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = rxqueue.connect("sqlite:///rel.db", queue="emails")
    assert isinstance(relative, SqliteBackend)
    assert relative.path == str(tmp_path / "rel.db")
    assert relative.queue == "emails"
    absolute = rxqueue.connect(f"sqlite:///{tmp_path}/abs.db")
    assert absolute.path == str(tmp_path / "abs.db")
    assert SqliteBackend.from_url("sqlite:////srv/x.db").path == "/srv/x.db"
    read_only = SqliteBackend.from_url(f"sqlite:///{tmp_path}/abs.db?mode=ro")
    assert read_only.path == str(tmp_path / "abs.db")
    for bad in ("sqlite://:memory:", "sqlite://host/x.db", "sqlite:///"):
        with pytest.raises(BackendError, match=r"sqlite:///relative\.db"):
            rxqueue.connect(bad)


def test_options_are_checked(path: Path) -> None:
    with pytest.raises(InvalidOption, match="durability"):
        SqliteBackend(path, durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="lease_timeout"):
        SqliteBackend(path, lease_timeout=0)
    with pytest.raises(ValueError, match="database file"):
        SqliteBackend(":memory:")


# --- schema, pragmas, indexes ---------------------------------------------------------------


async def test_schema_and_pragmas(backend: SqliteBackend, path: Path) -> None:
    await backend.push("x")
    pragmas = await on_thread(
        backend,
        lambda conn: {
            name: conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "synchronous", "temp_store", "busy_timeout")
        },
    )
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,
        "temp_store": 2,
        "busy_timeout": 5000,
    }
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"tasks", "workers", "tasks_ready", "tasks_leases"} <= names
    assert "tasks_finished" not in names  # acks would pay for it; vacuum scans instead


async def test_full_durability_syncs_every_commit(path: Path) -> None:
    async with SqliteBackend(path, durability="full") as b:
        await b.push("x")
        assert await on_thread(b, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2


async def test_newer_schema_is_refused_untouched(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE tasks (id TEXT)")
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    before = fingerprint(path)
    async with unopened(path) as b:
        with pytest.raises(SchemaError, match=r"newer than the version .* Upgrade rxqueue"):
            await b.push("x")
        with pytest.raises(SchemaError):  # and again: nothing was half-opened
            await b.get("some-id")
    async with unopened(path) as b:
        with pytest.raises(SchemaError, match="newer than the version"):
            async with b:  # `async with` opens, so refuses at once
                pass
    assert fingerprint(path) == before
    assert not exists(f"{path}-wal")


async def test_foreign_tables_are_refused(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE tasks (something_else TEXT)")
    async with unopened(path) as b:
        with pytest.raises(SchemaError, match="tables rxqueue did not create"):
            await b.push("x")


async def test_damaged_schema_is_refused(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
    async with unopened(path) as b:
        with pytest.raises(SchemaError, match="no tasks or workers table: the schema is damaged"):
            await b.stats()


async def test_migration_upgrades_an_older_file(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteBackend(path) as b:
        kept = await b.push({"keep": True})
    nxt = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", nxt)
    step = ("CREATE INDEX tasks_created ON tasks (created_at)",)
    monkeypatch.setitem(schema.MIGRATIONS, nxt, step)
    first, second = SqliteBackend(path), SqliteBackend(path)
    try:  # two openers at once: one migrates, the other sees it done
        got = await asyncio.gather(first.get(kept), second.get(kept))
    finally:
        await first.close()
        await second.close()
    assert [task.args for task in got if task] == [{"keep": True}] * 2
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == nxt
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks_created'").fetchone()


# Version 2 rows, one per status a version-2 file can hold (rowid, then _V2_COLUMNS).
V2_ROWS = [
    (1, "pending", "default", b'{"n":1}', "Pending", 0, 3, 0, T0, T0, None, None, None, None,
     None, None, "k-pending", None),
    (2, "queued", "default", b'{"n":2}', "Queued", 1, 3, 5, T0, T0, "w1", T0, None, "boom",
     None, '{"a":1}', None, None),
    (4, "running", "default", b'{"n":4}', "Running", 0, 3, 0, T0, T0, "w1", T0, None, None,
     None, None, "k-running", T0 + 60),
    (5, "done", "default", b'{"n":5}', "Done", 1, 3, 0, T0, T0, None, None, T0 + 1, None,
     b'"ok"', None, "k-done", T0 + 3600),
    (6, "failed", "other", b'{"n":6}', "Failed", 1, 3, 0, T0 + 10, T0, None, None, None, "again",
     None, None, None, None),
    (9, "killed", "default", b'{"n":9}', "Killed", 3, 3, 0, T0, T0, None, None, T0 + 2,
     "gave up", None, None, None, None),
]  # fmt: skip


async def test_a_version_2_file_with_tasks_in_every_status_upgrades_for_cancel(
    path: Path, clock: ManualClock
) -> None:
    columns = f"rowid, {schema._V2_COLUMNS}"
    with raw(path) as conn:
        for step in (1, 2):
            for statement in schema.MIGRATIONS[step]:
                conn.execute(statement)
        marks = ", ".join("?" * len(V2_ROWS[0]))
        conn.executemany(f"INSERT INTO tasks ({columns}) VALUES ({marks})", V2_ROWS)
        conn.execute("INSERT INTO workers VALUES ('default', 'w1', ?, ?, 1, 'h')", (T0, T0))
        conn.execute("PRAGMA user_version = 2")
    async with SqliteBackend(path, clock=clock, lease_timeout=30.0) as b:
        assert (await b.stats())[Status.QUEUED] == 1  # opened: migrated
        with raw(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
            # Every row as it was, rowids too (list() orders by them); no request yet.
            rows = conn.execute(f"SELECT {columns}, cancel_reason FROM tasks ORDER BY rowid")
            assert rows.fetchall() == [(*row, None) for row in V2_ROWS]
            assert conn.execute("SELECT * FROM workers").fetchall() == [
                ("default", "w1", T0, T0, 1, "h")
            ]
            indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
            assert set(indexes) == {
                "sqlite_autoindex_tasks_1", "tasks_ready", "tasks_leases", "tasks_unique",
                "task_edges_parent",
            }  # fmt: skip
            assert "UNIQUE" in indexes["tasks_unique"]
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute("UPDATE tasks SET status = 'Lost' WHERE id = 'done'")
        assert [t.id for t in await b.list()] == ["pending", "queued", "running", "done", "killed"]
        # Keys are still held (and enforced by the rebuilt unique index).
        assert await b.push("again", unique_key="k-running") == "running"
        assert await b.push("again", unique_key="k-done") == "done"
        # The new status and the requests work on old rows.
        assert await b.cancel("queued", "stop") is Status.QUEUED
        assert await b.heartbeat("w1") == [("queued", "stop")]
        assert await b.cancel("pending", "not needed") is Status.CANCELLED
        assert await b.push("new", unique_key="k-pending") != "pending"  # the key was freed
        clock.advance(3600)
        assert await b.vacuum() == 3  # Done, Killed and Cancelled


async def test_new_file_opened_by_many_at_once(path: Path) -> None:
    backends = [SqliteBackend(path, queue=f"q{i}") for i in range(4)]
    try:
        await asyncio.gather(*(b.push(i) for i, b in enumerate(backends)))
        assert [(await b.stats())[Status.PENDING] for b in backends] == [1, 1, 1, 1]
    finally:
        for b in backends:
            await b.close()


def plan(conn: sqlite3.Connection, statement: str, params: Any) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))


async def test_hot_statements_use_their_indexes(backend: SqliteBackend, path: Path) -> None:
    await backend.push_many(range(200))
    await backend._claim("w1", 150)
    with raw(path) as conn:
        conn.execute("ANALYZE")  # the plan must hold with statistics too
        claim = plan(conn, sqlite_module._CLAIM, ("w", T0, "default", T0, 10))
        assert "SEARCH tasks USING INDEX tasks_ready (queue=?)" in claim
        assert "SCAN tasks" not in claim
        assert "tasks_ready" in plan(conn, sqlite_module._ANY_READY, ("default", T0))
        assert "tasks_ready" in plan(conn, sqlite_module._HAS_WORK, ("default", T0))
        ack = plan(conn, sqlite_module._DONE, (None, T0, "id", "w", 0))
        assert "USING INDEX sqlite_autoindex_tasks_1 (id=?)" in ack
        cancelled = plan(conn, sqlite_module._CANCELLED, ("", T0, "id", "w", 0))
        assert "USING INDEX sqlite_autoindex_tasks_1 (id=?)" in cancelled
        release = plan(conn, sqlite_module._RELEASE, (T0, "id", "w"))
        assert "USING INDEX sqlite_autoindex_tasks_1 (id=?)" in release
        assert "tasks_leases" in plan(conn, sqlite_module._CANCEL_REQUESTS, ("w", "default"))
        params = {"queue": "default", "now": T0, "lease": 1.0, "name": "w", "reason": ""}
        assert "tasks_leases" in plan(conn, sqlite_module._EXPIRED_HOLDERS, params)
        assert "tasks_leases" in plan(conn, sqlite_module._EXPIRE_ALL, params)
        assert "SCAN tasks" in plan(conn, sqlite_module._VACUUM, ("default", T0))  # by design
        assert "autoindex" in plan(conn, sqlite_module._GET, ("id", "default"))


# --- claims ------------------------------------------------------------------------------------


async def test_claim_order_limit_and_delay(backend: SqliteBackend, clock: ManualClock) -> None:
    low = await backend.push("low", priority=0)
    high = await backend.push("high", priority=5)
    later = await backend.push("later", priority=9, delay=10)
    low2 = await backend.push("low2", priority=0)
    first = await backend._claim("w1", 2)
    assert [t.id for t in first] == [high, low]
    assert all(t.status is Status.QUEUED and t.lock_by == "w1" for t in first)
    assert isinstance(first[0].args, bytes)  # the worker decodes
    assert [t.id for t in await backend._claim("w1", 5)] == [low2]
    clock.advance(10)
    assert [t.id for t in await backend._claim("w1", 5)] == [later]
    assert await backend._claim("w1", 5) == []


async def test_queues_share_a_file(path: Path) -> None:
    async with SqliteBackend(path, queue="a") as a, SqliteBackend(path, queue="b") as b:
        in_a = await a.push_many(["a1", "a2"])
        in_b = await b.push("b1")
        assert [t.id for t in await b._claim("w", 10)] == [in_b]
        assert [t.id for t in await a._claim("w", 10)] == in_a
        assert await a.get(in_b) is None
        with pytest.raises(TaskNotFound):
            await a.kill(in_b)
        assert (await a.stats())[Status.QUEUED] == 2
        assert (await b.stats())[Status.QUEUED] == 1


# --- sink: durability and group commit ---------------------------------------------------------


async def test_push_returns_after_commit(backend: SqliteBackend, path: Path) -> None:
    task_id = await backend.push({"to": "ann"}, metadata={"step": 1})
    with raw(path) as conn:  # another connection sees it at once
        row = conn.execute("SELECT args, status, metadata FROM tasks WHERE id = ?", (task_id,))
        assert row.fetchone() == (b'{"to":"ann"}', "Pending", '{"step":1}')
    task = await backend.get(task_id)
    assert task is not None and task.args == {"to": "ann"} and task.metadata == {"step": 1}


async def test_concurrent_pushes_share_one_transaction(backend: SqliteBackend) -> None:
    await backend.push("warm up")  # opens the connection
    hops = backend._db.hops
    ids = await asyncio.gather(*(backend.push(i) for i in range(50)))
    assert backend._db.hops - hops == 1
    assert len(set(ids)) == 50
    assert (await backend.stats())[Status.PENDING] == 51


async def test_push_many_is_one_hop_and_all_or_nothing(backend: SqliteBackend) -> None:
    await backend.push("warm up")
    hops = backend._db.hops
    ids = await backend.push_many(range(1000))
    assert backend._db.hops - hops == 1
    tasks = [Task(args=i, id=task_id) for i, task_id in enumerate(["fresh-1", ids[500], "fresh-2"])]
    with pytest.raises(TaskExists, match=f"a task with id '{ids[500]}' already exists") as info:
        await backend.send_many(tasks)
    assert info.value.task_id == ids[500]
    assert await backend.get("fresh-1") is None
    with pytest.raises(InvalidOption, match="appears twice"):
        await backend.send_many([Task(args=1, id="x"), Task(args=2, id="x")])


async def test_a_failing_push_does_not_fail_its_hop_mates(backend: SqliteBackend) -> None:
    taken = await backend.push("first")
    results = await asyncio.gather(
        backend.push("ok-1"),
        backend.push("dup", task_id=taken),
        backend.push("ok-2"),
        return_exceptions=True,
    )
    assert isinstance(results[1], TaskExists)
    assert all(isinstance(r, str) for r in (results[0], results[2]))
    assert (await backend.stats())[Status.PENDING] == 3


# --- acks ----------------------------------------------------------------------------------------


async def test_report_batches_outcomes(backend: SqliteBackend, clock: ManualClock) -> None:
    ids = await backend.push_many(["a", "b", "c", "d", "e"])
    claimed = await backend._claim("w1", 5)
    by_id = {t.id: t for t in claimed}
    a, b, c, d, e = (by_id[i] for i in ids)
    with pytest.raises(TypeError, match="the worker encodes results"):
        AckBatch.of("w1", [(b, Done(object()))])  # results reach the store encoded
    hops = backend._db.hops
    refused = await report(
        backend,
        "w1",
        [
            (a, Done(encoded({"sent": True}))),
            (b, Done(None)),  # no result
            (c, Retry(clock() + 5, "boom")),
            (d, Killed("bad")),
            (e, Started(clock())),
        ],
    )
    assert refused == []
    assert backend._db.hops - hops == 1
    got = {i: await backend.get(i) for i in ids}
    assert [got[i].status for i in ids if got[i]] == [  # type: ignore[union-attr]
        Status.DONE,
        Status.DONE,
        Status.FAILED,
        Status.KILLED,
        Status.RUNNING,
    ]
    ta, tb, tc, td, te = (got[i] for i in ids)
    assert ta and ta.result == {"sent": True} and ta.attempts == 1 and ta.done_at == clock()
    assert tb and tb.result is None and tb.status is Status.DONE
    assert tc and tc.run_at == clock() + 5 and tc.last_error == "boom" and tc.lock_by is None
    assert td and td.last_error == "bad" and td.attempts == 1
    assert te and te.attempts == 0 and te.lock_by == "w1"
    assert await backend._claim("w1", 5) == []
    clock.advance(5)
    assert [t.id for t in await backend._claim("w1", 5)] == [ids[2]]


async def test_updates_from_a_worker_without_the_lease_are_ignored(
    backend: SqliteBackend,
) -> None:
    task_id = await backend.push("x")
    [task] = await backend._claim("w1", 1)
    assert await report(backend, "intruder", [(task, Done())]) == [task_id]
    await backend.release([task], "intruder")
    got = await backend.get(task_id)
    assert got and got.status is Status.QUEUED and got.lock_by == "w1"


async def test_a_mixed_batch_with_lost_leases_refuses_exactly_those(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    await backend.register_worker("w1")
    await backend.register_worker("w2")
    lost = await backend.push_many(["a0", "a1", "a2", "a3"])
    await backend._claim("w1", 4)
    clock.advance(31)  # w1 misses its heartbeats: its leases are taken back
    await backend.heartbeat("w2")
    assert await backend.reclaim() == 4
    taken = await backend._claim("w2", 2)  # two go to w2, two stay Pending
    assert [t.id for t in taken] == lost[:2]
    await backend.heartbeat("w1")  # w1 is back and claims new work
    held_ids = await backend.push_many(["b0", "b1", "b2", "b3"], priority=1)
    held = await backend._claim("w1", 4)
    assert [t.id for t in held] == held_ids
    await backend.kill(held_ids[3], "no longer needed")  # a lease lost to a kill
    a0, a1, a2, a3 = (Task(args=None, id=task_id) for task_id in lost)  # w1's stale copies
    b0, b1, b2, b3 = held
    hops = backend._db.hops
    refused = await report(
        backend,
        "w1",
        [
            (b0, Started(clock())),
            (a3, Started(clock())),
            (b1, Done(encoded("ok"))),
            (a0, Done(encoded("late"))),
            (b2, Retry(clock() + 5, "boom")),
            (a1, Retry(clock() + 5, "late boom")),
            (b3, Killed("late kill")),
            (a2, Killed("late kill")),
        ],
    )
    assert backend._db.hops - hops == 1  # one transaction, whatever was refused
    assert sorted(refused) == sorted([a0.id, a1.id, a2.id, a3.id, b3.id])
    assert len(refused) == len(set(refused))
    got = {t.id: t for t in await backend.list()}
    # The held ones were applied ...
    assert got[b0.id].status is Status.RUNNING and got[b0.id].lock_by == "w1"
    assert got[b1.id].status is Status.DONE and got[b1.id].result == "ok"
    assert got[b2.id].status is Status.FAILED and got[b2.id].last_error == "boom"
    assert [got[t.id].attempts for t in (b0, b1, b2)] == [0, 1, 1]
    # ... and the refused ones are as they were.
    assert got[b3.id].status is Status.KILLED and got[b3.id].last_error == "no longer needed"
    for task_id in lost[:2]:
        task = got[task_id]
        assert (task.status, task.lock_by, task.attempts, task.result) == (
            Status.QUEUED,
            "w2",
            1,
            None,
        )
    for task_id in lost[2:]:
        task = got[task_id]
        assert (task.status, task.lock_by, task.attempts) == (Status.PENDING, None, 1)
        assert (task.last_error or "").startswith("lease expired")


# --- leases -----------------------------------------------------------------------------------


async def test_leases_expire_without_heartbeats(backend: SqliteBackend, clock: ManualClock) -> None:
    ids = await backend.push_many(["a", "b"], max_attempts=2)
    worker = "w1"
    await backend.register_worker(worker)
    claimed = await backend._claim("w1", 2)
    assert await report(backend, worker, [(claimed[1], Started(clock()))]) == []
    clock.advance(20)
    await backend.heartbeat(worker)
    clock.advance(20)  # 20 s since the last heartbeat: alive
    assert await backend.reclaim() == 0
    clock.advance(10)
    assert await backend.reclaim() == 2
    tasks = [await backend.get(i) for i in ids]
    assert all(t and t.status is Status.PENDING and t.attempts == 1 for t in tasks)
    assert all(
        t and t.last_error == "lease expired: worker 'w1' stopped heartbeating" for t in tasks
    )
    # too late: refused, and nothing changes
    assert await report(backend, worker, [(claimed[0], Done())]) == [claimed[0].id]
    assert (await backend.stats())[Status.PENDING] == 2
    again = await backend._claim("w1", 2)  # second attempt, and the lease lapses again
    assert len(again) == 2
    clock.advance(31)
    assert await backend.reclaim() == 2
    assert statuses([t for i in ids if (t := await backend.get(i))]) == [Status.KILLED] * 2


async def test_claims_of_unregistered_workers_expire_by_claim_age(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    await backend.push("x")
    await backend._claim("ghost", 1)
    clock.advance(29)
    assert await backend.reclaim() == 0
    clock.advance(1)
    assert await backend.reclaim() == 1


async def test_a_live_name_is_refused(
    backend: SqliteBackend, clock: ManualClock, path: Path
) -> None:
    await backend.register_worker("w1")
    async with SqliteBackend(path, clock=clock, lease_timeout=30.0) as other:
        with pytest.raises(WorkerError, match=r"named 'w1' is alive .* another name"):
            await other.register_worker("w1")
        await other.register_worker("w2")  # other names are fine
        await backend.unregister_worker("w1")
        await other.register_worker("w1")  # free again once unregistered


async def test_a_restarted_name_takes_back_its_dead_predecessors_tasks(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    task_id = await backend.push("x")
    await backend.register_worker("w1")
    await backend._claim("w1", 1)
    clock.advance(30)  # the first w1 died without a word
    await backend.register_worker("w1")
    task = await backend.get(task_id)
    assert task and task.status is Status.PENDING and task.attempts == 1


async def test_release_returns_unstarted_tasks(backend: SqliteBackend) -> None:
    ids = await backend.push_many(["a", "b"])
    claimed = await backend._claim("w1", 2)
    await report(backend, "w1", [(claimed[1], Started(T0))])
    await backend.release(claimed, "w1")
    tasks = [await backend.get(i) for i in ids]
    assert statuses([t for t in tasks if t]) == [Status.PENDING, Status.RUNNING]
    assert tasks[0] and tasks[0].attempts == 0 and tasks[0].lock_by is None


async def test_worker_releases_claimed_tasks_on_stop(path: Path) -> None:
    started = asyncio.Event()
    gate = asyncio.Event()

    async def slow(job: int) -> None:
        started.set()
        await gate.wait()

    async with SqliteBackend(path) as b:
        await b.push_many(range(10))
        worker = WorkerBuilder("w").backend(b).concurrency(1).prefetch(5).build(slow)
        run = asyncio.create_task(worker.run(handle_signals=False))
        await started.wait()
        worker.stop()
        gate.set()
        summary = await run
        stats = await b.stats()
    assert summary.done == 1 and summary.released >= 1
    assert stats[Status.DONE] == 1 and stats[Status.PENDING] == 9
    assert stats[Status.QUEUED] == stats[Status.RUNNING] == 0


# --- a real worker run ----------------------------------------------------------------------------


async def test_worker_run_until_idle(path: Path) -> None:
    seen: list[int] = []

    async def handler(job: int) -> int:
        seen.append(job)
        return job * 2

    async with SqliteBackend(path) as b:
        ids = await b.push_many(range(300))
        summary = await WorkerBuilder("w").backend(b).concurrency(8).build(handler).run_until_idle()
        assert summary.done == 300 and sorted(seen) == list(range(300))
        done = await b.get(ids[7])
        assert done and done.result == 14 and done.status is Status.DONE


async def test_bad_rows_fail_alone(path: Path) -> None:
    async with SqliteBackend(path) as b:
        good = await b.push({"ok": 1})
        with raw(path) as conn:
            insert = (
                "INSERT INTO tasks (id, queue, args, max_attempts, run_at, created_at, metadata)"
                " VALUES (?, 'default', ?, 3, 0, 0, ?)"
            )
            conn.execute(insert, ("null-args", None, None))
            conn.execute(insert, ("text-args", "not json", None))
            conn.execute(insert, ("bad-metadata", b"1", "{oops"))
        summary = await WorkerBuilder("w").backend(b).build(lambda job: job).run_until_idle()
        assert summary.done == 1 and summary.killed == 2  # the third was killed by the backend
        found = {i: await b.get(i) for i in (good, "null-args", "text-args", "bad-metadata")}
    assert found[good] and found[good].status is Status.DONE
    for task_id in ("null-args", "text-args"):
        task = found[task_id]
        assert task and task.status is Status.KILLED and "CodecError" in (task.last_error or "")
    corrupt = found["bad-metadata"]
    assert corrupt and corrupt.status is Status.KILLED
    assert (corrupt.last_error or "").startswith("corrupt task row")


async def test_a_result_the_codec_refuses_is_never_stored(path: Path) -> None:
    async def handler(job: str) -> Any:
        return {"nan": float("nan"), "object": object(), "ok": {"fine": True}, "none": None}[job]

    async with SqliteBackend(path) as b:
        ids = dict(
            zip(
                ["nan", "object", "ok", "none"],
                await b.push_many(["nan", "object", "ok", "none"], max_attempts=3),
                strict=True,
            )
        )
        summary = await WorkerBuilder("w").backend(b).build(handler).run_until_idle()
        found = {job: await b.get(task_id) for job, task_id in ids.items()}
    assert (summary.done, summary.killed, summary.retried) == (2, 2, 0)
    for job in ("nan", "object"):
        task = found[job]
        assert task and task.status is Status.KILLED and task.attempts == 1  # not retried
        assert "result cannot be stored" in (task.last_error or "")
    assert "NaN" in (found["nan"].last_error or "")  # type: ignore[union-attr]
    assert "object" in (found["object"].last_error or "")  # type: ignore[union-attr]
    assert found["ok"] and found["ok"].result == {"fine": True}
    with raw(path) as conn:  # the only NULL result is the handler's own None
        rows = conn.execute("SELECT id, status, result FROM tasks").fetchall()
    stored = {task_id: (status, result) for task_id, status, result in rows}
    assert stored[ids["ok"]] == ("Done", b'{"fine":true}')
    assert stored[ids["none"]] == ("Done", None)
    assert stored[ids["nan"]] == stored[ids["object"]] == ("Killed", None)


@pytest.mark.parametrize(
    ("option", "value"),
    [("priority", "high"), ("delay", float("nan")), ("max_attempts", 0), ("run_at", "5")],
)
async def test_bad_push_options_store_nothing(path: Path, option: str, value: Any) -> None:
    seen: list[str] = []

    async def handler(job: str) -> None:
        seen.append(job)

    async with SqliteBackend(path) as b:
        with pytest.raises(InvalidOption, match=option):
            await b.push("bad", **{option: value})
        with pytest.raises(InvalidOption, match=option):
            await b.push_many(["bad-1", "bad-2"], **{option: value})
        assert set((await b.stats()).values()) == {0}
        good = await b.push_many(["good-1", "good-2"])
        summary = await WorkerBuilder("w").backend(b).build(handler).run_until_idle()
        assert summary.done == 2 and sorted(seen) == ["good-1", "good-2"]
        assert [t.id for t in await b.list(status=Status.DONE)] == good
        assert sum((await b.stats()).values()) == 2


# --- wake-up and waiting ----------------------------------------------------------------------


async def test_a_push_wakes_fetchers_of_other_instances_at_once(path: Path) -> None:
    handled = asyncio.Event()

    async def handler(job: str) -> None:
        handled.set()

    # A 60 s poll interval: only the doorbell can bring the task in time.
    consumer = SqliteBackend(path, poll_interval=60, max_poll_interval=60)
    async with consumer, SqliteBackend(path) as producer:
        worker = WorkerBuilder("w").backend(consumer).build(handler)
        idle = asyncio.Event()
        worker.events.subscribe(
            on_next=lambda e: idle.set() if isinstance(e, events.Idle) else None
        )
        run = asyncio.create_task(worker.run(handle_signals=False))
        await asyncio.wait_for(idle.wait(), 10)
        task_id = await producer.push("hello")
        await asyncio.wait_for(handled.wait(), 10)
        done = await asyncio.wait_for(producer.wait_for(task_id, poll_interval=60), 10)
        assert done.status is Status.DONE
        worker.stop()
        await run


async def test_closing_a_neighbour_keeps_the_cross_process_doorbell(path: Path) -> None:
    """Backends on one file and queue share a doorbell in a process: closing one
    (before or while another runs) must not silence the others' doorbell."""
    from rxqueue.backends._doorbell import SocketDoorbell

    handled = asyncio.Event()

    async def handler(job: str) -> None:
        handled.set()

    async with SqliteBackend(path) as before:  # open and closed before the worker starts
        await before.stats()
    consumer = SqliteBackend(path, poll_interval=60, max_poll_interval=60)
    async with consumer:
        worker = WorkerBuilder("w").backend(consumer).build(handler)
        idle = asyncio.Event()
        worker.events.subscribe(
            on_next=lambda e: idle.set() if isinstance(e, events.Idle) else None
        )
        run = asyncio.create_task(worker.run(handle_signals=False))
        try:
            await asyncio.wait_for(idle.wait(), 10)
            async with SqliteBackend(path) as during:  # opened and closed while it idles
                await during.stats()
            # Another process's push: a row written by another connection, and a ring
            # from another doorbell of the channel (as that process's would ring).
            with raw(path) as conn:
                conn.execute(
                    "INSERT INTO tasks (id, queue, args, status, max_attempts, run_at, created_at)"
                    " VALUES ('afar', 'default', ?, 'Pending', 3, 0, 0)",
                    (encoded("afar"),),
                )
            ringer = SocketDoorbell(f"sqlite:{consumer.path}:default")
            try:
                ringer.ring()
            finally:
                ringer.close()
            await asyncio.wait_for(handled.wait(), 5)  # the poll alone would take 60 s
        finally:
            worker.stop()
            await run


async def test_wait_for_polls_for_other_processes(backend: SqliteBackend, path: Path) -> None:
    task_id = await backend.push("x")
    waiting = asyncio.create_task(backend.wait_for(task_id, poll_interval=0.01))
    await asyncio.sleep(0)
    with raw(path) as conn:  # as another process would
        conn.execute("UPDATE tasks SET status = 'Done', done_at = 1 WHERE id = ?", (task_id,))
    task = await asyncio.wait_for(waiting, 10)
    assert task.status is Status.DONE


async def test_wait_for_unknown_and_timeout(backend: SqliteBackend) -> None:
    with pytest.raises(TaskNotFound):
        await backend.wait_for("nope")
    task_id = await backend.push("x")
    with pytest.raises(TimeoutError):
        await backend.wait_for(task_id, timeout=0.05, poll_interval=0.01)


# --- manage -------------------------------------------------------------------------------------


async def test_kill_retry_vacuum(backend: SqliteBackend, clock: ManualClock) -> None:
    a, b, c = await backend.push_many(["a", "b", "c"])
    await backend.kill(a, "no longer needed")
    killed = await backend.get(a)
    assert killed and killed.status is Status.KILLED and killed.last_error == "no longer needed"
    with pytest.raises(TaskNotFound):
        await backend.kill("nope")
    with pytest.raises(InvalidTransition, match="only Failed or Killed"):
        await backend.retry(b)
    clock.advance(5)
    await backend.retry(a)
    again = await backend.get(a)
    assert again and again.status is Status.PENDING and again.run_at == clock()
    claimed = await backend._claim("w1", 3)
    await report(backend, "w1", [(t, Done()) for t in claimed if t.id != c])
    clock.advance(100)
    await report(backend, "w1", [(t, Done()) for t in claimed if t.id == c])
    assert await backend.vacuum(older_than=50) == 2
    assert [t.id for t in await backend.list()] == [c]
    assert await backend.vacuum() == 1
    assert await backend.list() == []


async def test_list_is_oldest_first_and_filters(backend: SqliteBackend) -> None:
    ids = await backend.push_many(range(5))
    await backend.kill(ids[3])
    assert [t.id for t in await backend.list()] == ids
    assert [t.id for t in await backend.list(limit=2, offset=1)] == ids[1:3]
    assert [t.id for t in await backend.list(status=Status.KILLED)] == [ids[3]]
    assert [t.args for t in await backend.list(status=Status.PENDING)] == [0, 1, 2, 4]


async def test_has_work(backend: SqliteBackend, clock: ManualClock) -> None:
    assert await backend.has_work(100) is False
    await backend.push("later", delay=60)
    assert await backend.has_work(30) is False
    assert await backend.has_work(60) is True


async def test_closed_backend_refuses_work(path: Path) -> None:
    b = SqliteBackend(path)
    piped = b.pipe()
    await b.push("x")
    assert (await piped.stats())[Status.PENDING] == 1  # pipes share the connection
    await b.close()
    await b.close()
    with pytest.raises(BackendClosed, match="is closed"):
        await piped.push("y")


# --- errors ---------------------------------------------------------------------------------------


async def test_read_only_file(path: Path) -> None:
    async with SqliteBackend(path) as b:
        task_id = await b.push("kept")
    async with SqliteBackend(f"file:{path}?mode=ro") as ro:
        assert (await ro.stats())[Status.PENDING] == 1
        with pytest.raises(BackendError, match=rf"{path}: the database is read-only") as info:
            await ro.push("refused")
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert not isinstance(info.value, BackendUnavailable)  # permanent: do not retry
    async with SqliteBackend(path) as b:
        assert [t.id for t in await b.list()] == [task_id]


async def test_not_a_database(path: Path) -> None:
    with path.open("wb") as garbage:
        garbage.write(b"this is not a database, just bytes\n" * 200)
    async with unopened(path) as b:
        with pytest.raises(BackendError, match=rf"{path}: the file is not a SQLite database"):
            await b.push("x")


async def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "tasks.db"
    async with unopened(missing) as b:
        with pytest.raises(BackendError, match="cannot be opened: check that its directory"):
            await b.push("x")


async def test_locked_database(path: Path) -> None:
    async with SqliteBackend(path, busy_timeout=0.05) as b:
        kept = await b.push("kept")
        holder = raw(path)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(BackendUnavailable, match=r"locked: .* busy_timeout=0.05s"):
                await b.push("blocked")  # transient: the same push may succeed later
            assert (await b.get(kept)) is not None  # WAL: reads go on
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await b.push("after")
        assert (await b.stats())[Status.PENDING] == 2


async def test_full_disk(backend: SqliteBackend) -> None:
    kept = await backend.push("kept")
    pages = await on_thread(backend, lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await on_thread(backend, lambda c: c.execute(f"PRAGMA max_page_count = {pages + 1}"))
    with pytest.raises(BackendError, match="the disk is full") as info:
        await backend.push_many(["x" * 10_000] * 20)
    assert not isinstance(info.value, BackendUnavailable)
    await on_thread(backend, lambda c: c.execute("PRAGMA max_page_count = 1000000"))
    assert [t.id for t in await backend.list()] == [kept]
    await backend.push("after")
