"""PostgresBackend: what is specific to PostgreSQL.

Migrations under concurrency, a refused newer schema, the claim's query plan,
SKIP LOCKED between workers, transactional push, LISTEN/NOTIFY (and the
listener's reconnection), leases, application_name, error translation, and a
SIGKILLed worker process. The generic contract is the conformance suite's job
(``tests/conftest.py`` runs it on PostgreSQL too).

Every test works in a schema of its own (``t_<hex>``), dropped afterwards.
Waits are on events and conditions with timeouts, never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import rxqueue
from rxqueue import ManualClock, Status, TaskContext, WorkerBuilder, ops
from rxqueue.errors import (
    BackendClosed,
    BackendError,
    BackendUnavailable,
    InvalidOption,
    SchemaError,
    TaskExists,
    WorkerError,
)

asyncpg = pytest.importorskip("asyncpg")

from rxqueue.backends import _postgres_schema as pg_schema  # noqa: E402
from rxqueue.backends.postgres import (  # noqa: E402
    PostgresBackend,
    PostgresDoorbell,
    schema_sql,
)

URL = os.environ.get("RXQUEUE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[1]
LIMIT = 20.0  # seconds: a hung wait fails its test instead of the suite
T = TypeVar("T")


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop in another thread (from sync code, any time)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _probe() -> None:
    conn = await asyncpg.connect(URL, timeout=5)
    await conn.close()


@pytest.fixture(scope="module", autouse=True)
def server() -> None:
    try:
        in_thread(_probe())
    except Exception as exc:
        reason = f"PostgreSQL not reachable at 127.0.0.1:5432: {type(exc).__name__}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


async def sql(statement: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(URL)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    in_thread(sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time.time())


@pytest.fixture
async def backend(schema: str, clock: ManualClock) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(
        URL, schema=schema, clock=clock, lease_timeout=60, poll_interval=0.002,
        max_poll_interval=0.01,
    ) as b:  # fmt: skip
        yield b


async def eventually(check: Callable[[], Any], timeout: float = LIMIT) -> None:
    """Wait until ``check()`` (or, for a coroutine, its result) is true, re-checked
    every few ms; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)


def bell_of(backend: PostgresBackend) -> PostgresDoorbell:
    bell = backend._bell()
    assert bell is not None
    return bell


def env() -> dict[str, str]:
    variables = dict(os.environ)
    variables["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), variables.get("PYTHONPATH")])
    )
    return variables


# --- construction, URLs, the DDL ---------------------------------------------------------


def test_options_and_urls_are_checked() -> None:
    backend = rxqueue.connect(URL, queue="emails", schema="t_x")
    assert isinstance(backend, PostgresBackend)
    assert (backend.queue, backend.schema, backend.where) == (
        "emails",
        "t_x",
        "PostgreSQL at 127.0.0.1:5432/test",
    )
    assert "sekrit" not in repr(PostgresBackend("postgres://u:sekrit@h/db"))
    for bad in ("bad-name", "1abc", "x;drop", "", "a" * 60):
        with pytest.raises(InvalidOption, match="schema must be an SQL identifier"):
            PostgresBackend(URL, schema=bad)
    with pytest.raises(BackendError, match=r"bad PostgreSQL URL .*port 'abc'") as info:
        rxqueue.connect("postgresql://u:sekrit@host:abc/db")
    assert "sekrit" not in str(info.value)
    with pytest.raises(InvalidOption, match="pool_max_size"):
        PostgresBackend(URL, pool_min_size=5, pool_max_size=2)


def test_schema_sql_is_the_whole_ddl() -> None:
    ddl = schema_sql("tenant_1")
    assert ddl.startswith(f"-- rxqueue schema version {pg_schema.SCHEMA_VERSION}\nBEGIN;")
    for piece in (
        'CREATE SCHEMA IF NOT EXISTS "tenant_1"',
        'CREATE TABLE "tenant_1".tasks',
        'CREATE INDEX tasks_ready ON "tenant_1".tasks (queue, priority DESC, run_at, id)',
        "WHERE status IN ('Pending', 'Failed')",
        'CREATE TABLE "tenant_1".workers',
        f'INSERT INTO "tenant_1".migrations (version) VALUES ({pg_schema.SCHEMA_VERSION})',
    ):
        assert piece in ddl


async def test_schema_sql_applies_and_the_backend_accepts_it(schema: str) -> None:
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(schema_sql(schema))
    finally:
        await conn.close()
    async with PostgresBackend(URL, schema=schema) as backend:
        task_id = await backend.push({"n": 1})
        assert (await backend.stats())[Status.PENDING] == 1
        assert (await backend.get(task_id)) is not None


# --- migrations ------------------------------------------------------------------------------

OPENER = r"""
import asyncio, sys
from rxqueue.backends.postgres import PostgresBackend

async def main() -> None:
    backend = PostgresBackend(sys.argv[1], schema=sys.argv[2])
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    async with backend:
        await backend.push("hello")
    print("ok", flush=True)

asyncio.run(main())
"""


def test_ten_processes_open_a_fresh_schema_at_once(schema: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, URL, schema],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for _ in range(10)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # all at once: they race for the migration
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0] * 10, [err for _, err in outputs]
    assert all(out.strip() == "ok" for out, _ in outputs)
    rows = in_thread(sql(f'SELECT version FROM "{schema}".migrations ORDER BY version'))
    assert [row[0] for row in rows] == list(range(1, pg_schema.SCHEMA_VERSION + 1))
    count = in_thread(sql(f'SELECT count(*) FROM "{schema}".tasks'))
    assert count[0][0] == 10


async def test_a_newer_schema_is_refused_and_left_untouched(schema: str) -> None:
    newer = pg_schema.SCHEMA_VERSION + 1
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".migrations (version integer PRIMARY KEY)')
    await sql(f'INSERT INTO "{schema}".migrations VALUES ({newer})')
    await sql(f'CREATE TABLE "{schema}".tasks (id text, future_column jsonb)')

    async def snapshot() -> list[Any]:
        return await sql(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 ORDER BY 1, 2",
            schema,
        )

    before = await snapshot()
    backend = PostgresBackend(URL, schema=schema)
    for _ in range(2):  # and again: nothing was half-opened
        with pytest.raises(SchemaError, match=rf"version {newer}, newer than .* untouched") as info:
            await backend.push("x")
        assert "\n" not in str(info.value)
    await backend.close()
    assert await snapshot() == before
    assert [row[0] for row in await sql(f'SELECT version FROM "{schema}".migrations')] == [newer]


async def test_foreign_tables_in_the_schema_are_refused(schema: str) -> None:
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".tasks (id text)')
    backend = PostgresBackend(URL, schema=schema)
    with pytest.raises(SchemaError, match="tables rxqueue did not create"):
        await backend.stats()
    await backend.close()


V2_COLUMNS = (
    "id, queue, args, status, attempts, max_attempts, priority, run_at, created_at, lock_by, "
    "lock_at, done_at, last_error, result, metadata::text, unique_key, unique_until"
)
V2_ROWS = [
    ("pending", "default", b'{"n":1}', "Pending", 0, 3, 0, 1.0, 1.0, None, None, None, None,
     None, None, "k-pending", None),
    ("queued", "default", b'{"n":2}', "Queued", 1, 3, 5, 1.0, 2.0, "w1", 1.0, None, "boom",
     None, '{"a": 1}', None, None),
    ("running", "default", b'{"n":4}', "Running", 0, 3, 0, 1.0, 3.0, "w1", 1.0, None, None,
     None, None, "k-running", 9e9),
    ("done", "default", b'{"n":5}', "Done", 1, 3, 0, 1.0, 4.0, None, None, 2.0, None,
     b'"ok"', None, "k-done", 9e9),
    ("failed", "other", b'{"n":6}', "Failed", 1, 3, 0, 1.0, 5.0, None, None, None, "again",
     None, None, None, None),
    ("killed", "default", b'{"n":9}', "Killed", 3, 3, 0, 1.0, 6.0, None, None, 2.0,
     "gave up", None, None, None, None),
]  # fmt: skip


async def test_a_version_2_schema_with_tasks_in_every_status_upgrades_for_cancel(
    schema: str,
) -> None:
    s = pg_schema.quote(schema)
    conn = await asyncpg.connect(URL)
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(pg_schema._VERSION_TABLE.format(s=s))
            for step in (1, 2):
                for statement in pg_schema.MIGRATIONS[step]:
                    await conn.execute(statement.format(s=s))
                await conn.execute(f"INSERT INTO {s}.migrations (version) VALUES ({step})")
            await conn.executemany(
                f"INSERT INTO {s}.tasks ({V2_COLUMNS.replace('::text', '')}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, "
                "$16, $17)",
                V2_ROWS,
            )
        async with PostgresBackend(URL, schema=schema, pool_max_size=2) as b:
            assert (await b.stats())[Status.QUEUED] == 1  # opened: migrated
            columns = f"{V2_COLUMNS}, cancel_reason"
            rows = await conn.fetch(f"SELECT {columns} FROM {s}.tasks ORDER BY id")
            assert [tuple(row) for row in rows] == sorted((*row, None) for row in V2_ROWS)
            versions = await conn.fetch(f"SELECT version FROM {s}.migrations ORDER BY version")
            assert [row[0] for row in versions] == list(range(1, pg_schema.SCHEMA_VERSION + 1))
            finished = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                schema, "tasks_finished",
            )  # fmt: skip
            assert "'Cancelled'" in finished
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE {s}.tasks SET status = 'Lost' WHERE id = 'done'")
            assert await b.push("again", unique_key="k-running") == "running"
            assert await b.push("again", unique_key="k-done") == "done"
            assert await b.cancel("queued", "stop") is Status.QUEUED
            assert await b.heartbeat("w1") == [("queued", "stop")]
            assert await b.cancel("pending", "not needed") is Status.CANCELLED
            assert await b.push("new", unique_key="k-pending") != "pending"  # freed
            assert await b.vacuum() == 3  # Done, Killed and Cancelled
    finally:
        await conn.close()


async def test_a_version_5_schema_upgrades_for_dependencies(schema: str) -> None:
    s = pg_schema.quote(schema)
    conn = await asyncpg.connect(URL)
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(pg_schema._VERSION_TABLE.format(s=s))
            for step in range(1, 6):
                for statement in pg_schema.MIGRATIONS[step]:
                    await conn.execute(statement.format(s=s))
                await conn.execute(f"INSERT INTO {s}.migrations (version) VALUES ({step})")
            await conn.executemany(
                f"INSERT INTO {s}.tasks ({V2_COLUMNS.replace('::text', '')}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, "
                "$16, $17)",
                V2_ROWS,
            )
        async with PostgresBackend(URL, schema=schema, pool_max_size=2) as b:
            assert (await b.stats())[Status.WAITING] == 0  # opened: migrated
            rows = await conn.fetch(
                f"SELECT id, waiting, has_dependencies, has_dependants FROM {s}.tasks"
            )
            assert sorted(tuple(row) for row in rows) == sorted(
                (row[0], 0, False, False) for row in V2_ROWS
            )
            versions = await conn.fetch(f"SELECT version FROM {s}.migrations ORDER BY version")
            assert [row[0] for row in versions] == list(range(1, pg_schema.SCHEMA_VERSION + 1))
            # An old task becomes a dependency; the old Done one counts as done.
            child = rxqueue.Task(args="c", depends_on=("pending", "done"))
            await b.send(child)
            got = await b.get(child.id)
            assert got is not None and got.status is Status.WAITING
            [task] = [t for t in await b._claim("w", 10) if t.id == "pending"]
            await b.report(rxqueue.acks.AckBatch("w", done=[(task, b'"fresh"')]))
            claimed = [t for t in await b._claim("w", 10) if t.id == child.id]
            assert [b.codec.decode(t.args) for t in claimed] == [["fresh", "ok"]]
    finally:
        await conn.close()


# --- dependencies under concurrency ---------------------------------------------------------


async def test_two_workers_finishing_two_parents_of_each_child_release_it_once(
    schema: str,
) -> None:
    """Row locks, not luck: whatever the interleaving, no count-down is lost and no
    child is released twice (a lost one leaves it Waiting; a double, waiting < 0)."""
    async with PostgresBackend(URL, schema=schema, pool_max_size=8) as backend:
        tasks: list[rxqueue.Task[Any]] = []
        for n in range(200):
            left, right = rxqueue.Task(args=n, priority=1), rxqueue.Task(args=-n)
            tasks += [left, right, rxqueue.Task(args="join", depends_on=(left.id, right.id))]
        await backend.send_many(tasks)
        lefts = await backend._claim("a", 200)  # the left parents (priority 1)
        rights = await backend._claim("b", 200)
        assert {backend.codec.decode(task.args) >= 0 for task in lefts} == {True}
        assert len(rights) == 200

        async def finish(worker: str, claimed: list[rxqueue.Task[Any]]) -> None:
            # Both in the same child order, so that they meet on the same children.
            by_child = sorted(claimed, key=lambda task: abs(backend.codec.decode(task.args)))
            for start in range(0, len(by_child), 5):
                chunk = by_child[start : start + 5]
                batch = rxqueue.acks.AckBatch(worker, done=[(task, b"1") for task in chunk])
                assert list(await backend.report(batch)) == []

        await asyncio.gather(finish("a", lefts), finish("b", rights))
        rows = await sql(
            f'SELECT status, waiting, count(*) FROM "{schema}".tasks '
            "WHERE has_dependencies GROUP BY 1, 2"
        )
        assert [tuple(row) for row in rows] == [("Pending", 0, 200)]
        children = await backend._claim("w", 500)
        assert len(children) == 200
        assert {backend.codec.decode(task.args) == [1, 1] for task in children} == {True}


async def test_a_child_pushed_while_its_parent_finishes_is_never_stranded(schema: str) -> None:
    """The push locks its stored parents: a Done in flight is waited for and seen."""
    async with PostgresBackend(URL, schema=schema, pool_max_size=8) as backend:
        parents = [rxqueue.Task(args=n) for n in range(40)]
        await backend.send_many(parents)
        claimed = await backend._claim("w", 40)
        children = [rxqueue.Task(args="c", depends_on=(task.id,)) for task in claimed]
        await asyncio.gather(
            *(backend.report(rxqueue.acks.AckBatch("w", done=[(t, b"2")])) for t in claimed),
            *(backend.send(child) for child in children),
        )
        rows = await sql(
            f'SELECT status, count(*) FROM "{schema}".tasks WHERE has_dependencies GROUP BY 1'
        )
        assert [tuple(row) for row in rows] == [("Pending", 40)]


# --- claiming --------------------------------------------------------------------------------


async def explain(conn: Any, name: str, statement: str, literals: dict[str, str]) -> str:
    """The plan of ``statement`` prepared as ``name`` (under the session's
    plan_cache_mode), each parameter given by the literal for its type (as asyncpg
    names it: ``text[]``, ``float8``); a literal keyed ``"$n"`` sets one parameter."""
    types = [param.name for param in (await conn.prepare(statement)).get_parameters()]
    values = [literals.get(f"${n}", literals[kind]) for n, kind in enumerate(types, 1)]
    await conn.execute(f"PREPARE {name} ({', '.join(types)}) AS {statement}")
    rows = await conn.fetch(f"EXPLAIN EXECUTE {name} ({', '.join(values)})")
    return "\n".join(row[0] for row in rows)


async def test_claims_and_acks_use_their_indexes(backend: PostgresBackend, schema: str) -> None:
    """Under custom and generic plans (asyncpg prepares statements; PostgreSQL
    switches to a generic plan after five runs), before and after ANALYZE."""
    await backend.push_many(range(3000))
    done = await backend._claim("w", 1500)
    await backend.report(rxqueue.acks.AckBatch("w", done=[(task, None) for task in done]))
    held = await backend._claim("w", 1000)  # a worker holding many tasks
    ids = "{" + ",".join(task.id for task in held[:500]) + "}"
    conn = await asyncpg.connect(URL)
    try:
        for analyzed in (False, True):
            if analyzed:
                await conn.execute(f'ANALYZE "{schema}".tasks')
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                name = f"{mode}_{analyzed}"
                # Every array parameter holds the batch's ids: each kind's update
                # is planned against 500 held tasks.
                literals = {
                    "text": "'w'", "text[]": f"'{ids}'", "bytea[]": "'{}'", "float8[]": "'{}'",
                    "int4[]": "'{}'", "float8": f"{backend.clock()}", "bool": "false",
                    "int4": "100", "int8": "100",
                }  # fmt: skip
                claim = await explain(
                    conn, f"claim_{name}", backend._sql.claim, {**literals, "$3": "'default'"}
                )
                assert "Index Scan using tasks_ready" in claim, claim
                assert "tasks_pkey" in claim, claim  # the update finds its rows by key
                assert "Seq Scan" not in claim, claim
                acks = await explain(conn, f"acks_{name}", backend._sql.acks, literals)
                # Never a nested loop that filters every held task against every id
                # of the batch (a generic plan did, with an index on lock_by).
                assert "Join Filter" not in acks and "tasks_held" not in acks, acks
                if mode == "force_generic_plan":  # blind to sizes: by key
                    assert "Seq Scan on tasks" not in acks, acks
                release = await explain(conn, f"release_{name}", backend._sql.release, literals)
                assert "tasks_held" not in release, release
                if mode == "force_generic_plan":
                    assert "tasks_pkey" in release, release
                # The heartbeat reads the worker's cancel requests among its held tasks.
                beat = await explain(conn, f"beat_{name}", backend._sql.heartbeat, literals)
                assert "tasks_held" in beat and "Seq Scan on tasks" not in beat, beat
    finally:
        await conn.close()


async def test_claim_order_limit_and_delay(backend: PostgresBackend, clock: ManualClock) -> None:
    later = await backend.push("later", delay=30)
    low = await backend.push("low")
    high = await backend.push("high", priority=5)
    claimed = await backend._claim("w", 10)
    assert [task.id for task in claimed] == [high, low]
    assert all((t.status, t.lock_by, t.args) == (Status.QUEUED, "w", t.args) for t in claimed)
    assert isinstance(claimed[0].args, bytes)  # still encoded: the worker decodes
    assert await backend._claim("w", 10) == []
    clock.advance(31)
    assert [task.id for task in await backend._claim("w", 10)] == [later]


async def test_two_workers_never_share_a_task(schema: str) -> None:
    backends = [
        PostgresBackend(URL, schema=schema, poll_interval=0.002, max_poll_interval=0.01)
        for _ in range(2)
    ]
    try:
        ids = await backends[0].push_many(range(2000))
        runs: dict[str, Counter[str]] = {"a": Counter(), "b": Counter()}

        def handler_for(name: str) -> Any:
            async def handle(job: int, ctx: TaskContext) -> None:
                runs[name][ctx.task_id] += 1
                if len(runs[name]) % 50 == 0:
                    await asyncio.sleep(0)  # let the other worker in

            return handle

        workers = [
            WorkerBuilder(name).backend(b).concurrency(16).build(handler_for(name))
            for name, b in zip(runs, backends, strict=True)
        ]
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*(worker.run_until_idle() for worker in workers))
    finally:
        for b in backends:
            await b.close()
    total = runs["a"] + runs["b"]
    assert set(total) == set(ids)
    assert set(total.values()) == {1}
    assert runs["a"] and runs["b"], "both workers should have claimed tasks"


# --- pushes ----------------------------------------------------------------------------------


async def test_push_many_is_one_statement_and_all_or_nothing(backend: PostgresBackend) -> None:
    taken = await backend.push("first", task_id="taken")
    tasks = [rxqueue.Task(args=n) for n in range(3)]
    tasks.insert(2, rxqueue.Task(id=taken, args="again"))
    with pytest.raises(TaskExists, match="'taken'"):
        await backend.send_many(tasks)
    stats = await backend.stats()
    assert stats[Status.PENDING] == 1


async def test_a_large_push_many_goes_by_copy_all_or_nothing(backend: PostgresBackend) -> None:
    ids = await backend.push_many([{"n": n} for n in range(1_500)], priority=2)
    stats = await backend.stats()
    assert stats[Status.PENDING] == 1_500
    task = await backend.get(ids[700])
    assert task is not None and (task.args, task.priority) == ({"n": 700}, 2)
    # Alike tasks (same times and options) with one taken id: COPY refuses them all.
    now = backend.clock()
    alike = [rxqueue.Task(args=n, run_at=now, created_at=now) for n in range(1_200)]
    alike[600] = rxqueue.Task(id=ids[0], args="again", run_at=now, created_at=now)
    with pytest.raises(TaskExists, match=ids[0]):
        await backend.send_many(alike)
    assert sum((await backend.stats()).values()) == 1_500
    conn = await asyncpg.connect(URL)
    try:

        class Undo(Exception):
            pass

        with pytest.raises(Undo):
            async with conn.transaction():
                await backend.push_many(list(range(1_100)), connection=conn)
                raise Undo
    finally:
        await conn.close()
    assert sum((await backend.stats()).values()) == 1_500


async def test_transactional_push_commits_and_rolls_back_with_the_caller(
    backend: PostgresBackend,
) -> None:
    conn = await asyncpg.connect(URL)
    try:
        async with conn.transaction():
            kept = await backend.push({"n": 1}, connection=conn)
            many = await backend.push_many([2, 3], connection=conn)
            assert await backend.get(kept) is None  # not committed yet: invisible
        assert (await backend.get(kept)) is not None
        assert all([await backend.get(task_id) for task_id in many])

        class Undo(Exception):
            pass

        with pytest.raises(Undo):
            async with conn.transaction():
                dropped = await backend.push({"n": 4}, connection=conn)
                raise Undo
        assert await backend.get(dropped) is None
        assert (await backend.stats())[Status.PENDING] == 3
        with pytest.raises(TaskExists, match=kept):
            async with conn.transaction():
                await backend.push("x", task_id=kept, connection=conn)
    finally:
        await conn.close()
    with pytest.raises(InvalidOption, match="asyncpg connection"):
        await backend.push("x", connection=object())


# --- LISTEN/NOTIFY -----------------------------------------------------------------------------


async def test_a_committed_push_wakes_an_idle_worker_at_once(schema: str) -> None:
    # Polling every 30 s: only the NOTIFY of the push can explain a prompt start.
    backend = PostgresBackend(URL, schema=schema, poll_interval=30, max_poll_interval=30)
    started = asyncio.Event()
    idles: list[float] = []
    idle_after_listening = asyncio.Event()

    async def handle(job: str) -> None:
        started.set()

    worker = WorkerBuilder("sleeper").backend(backend).build(handle)

    def on_event(event: Any) -> None:
        if isinstance(event, rxqueue.events.Idle):
            idles.append(event.at)
            bell = backend._bell()
            if bell is not None and bell.listening:
                idle_after_listening.set()

    worker.events.subscribe(on_event)
    running = asyncio.create_task(worker.run(handle_signals=False))
    conn = await asyncpg.connect(URL)
    try:
        async with asyncio.timeout(LIMIT):
            await idle_after_listening.wait()  # claimed nothing, listening, waiting
            began = time.perf_counter()
            async with conn.transaction():
                await backend.push("wake up", connection=conn)  # no in-process ring
            await started.wait()
        latency = time.perf_counter() - began
        assert latency < 2.0
    finally:
        await conn.close()
        worker.stop()
        await running
        await backend.close()


async def test_a_rolled_back_push_wakes_nobody(backend: PostgresBackend) -> None:
    bell = bell_of(backend)
    assert await bell.until_listening(LIMIT)
    await bell.wait(0)  # the ring every (re)connection gives
    conn = await asyncpg.connect(URL)
    try:
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await backend.push("never", connection=conn)
                1 / 0  # noqa: B018
        assert not await bell.wait(0.2)
        async with conn.transaction():
            await backend.push("now", connection=conn)
        assert await bell.wait(LIMIT)
    finally:
        await conn.close()


async def test_the_listener_reconnects_after_pg_terminate_backend(schema: str) -> None:
    name = f"listener-{uuid.uuid4().hex[:8]}"
    async with PostgresBackend(URL, schema=schema, worker_name=name) as backend:
        bell = bell_of(backend)
        assert await bell.until_listening(LIMIT)
        assert bell.connections == 1
        killed = await sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            f"rxqueue:{name}",
        )
        assert [row[0] for row in killed] == [True]
        await eventually(lambda: bell.connections == 2 and bell.listening)
        await bell.wait(0)  # the ring that follows a reconnection
        waiting = asyncio.create_task(bell.wait(LIMIT))
        await sql("SELECT pg_notify($1, '')", backend.channel)
        assert await waiting


async def test_wait_for_is_woken_by_the_completion_notify(schema: str) -> None:
    worker_side = PostgresBackend(URL, schema=schema, poll_interval=0.002, max_poll_interval=0.01)
    waiter_side = PostgresBackend(URL, schema=schema)
    waiter_side._channel_key = ("another process",)  # no in-process wake-up between them
    try:
        task_id = await worker_side.push(20)
        waiting = asyncio.create_task(
            waiter_side.wait_for(task_id, timeout=LIMIT, poll_interval=LIMIT)
        )
        await eventually(lambda: sql(f'SELECT 1 FROM "{schema}".waiters'))

        async def handle(n: int) -> int:
            return n + 1

        began = time.perf_counter()
        await WorkerBuilder("w").backend(worker_side).build(handle).run_until_idle()
        finished = await waiting
        assert time.perf_counter() - began < LIMIT / 2  # the poll alone would take LIMIT
        assert (finished.status, finished.result) == (Status.DONE, 21)
        assert await sql(f'SELECT * FROM "{schema}".waiters') == []
    finally:
        await worker_side.close()
        await waiter_side.close()


# --- leases and workers ------------------------------------------------------------------------


async def test_tasks_of_a_dead_worker_are_reclaimed_once(
    backend: PostgresBackend, schema: str, clock: ManualClock
) -> None:
    ids = await backend.push_many(range(3))
    await backend.register_worker("dead")
    assert len(await backend._claim("dead", 3)) == 3
    clock.advance(30)
    assert await backend.reclaim() == 0  # still fresh
    clock.advance(31)
    # Two reclaimers at once (two backends, two pools): each task comes back once.
    other = PostgresBackend(URL, schema=schema, clock=clock, lease_timeout=60)
    try:
        counts = await asyncio.gather(backend.reclaim(), other.reclaim())
    finally:
        await other.close()
    assert sum(counts) == 3
    task = await backend.get(ids[0])
    assert task is not None
    assert (task.status, task.attempts, task.lock_by) == (Status.PENDING, 1, None)
    assert task.last_error == "lease expired: worker 'dead' stopped heartbeating"
    await backend.register_worker("dead")  # a dead name may be taken again
    assert [t.id for t in await backend._claim("dead", 10)] == ids


async def test_a_cancel_wakes_wait_for_in_another_process(schema: str) -> None:
    """Each way a task ends Cancelled sends the completion NOTIFY to waiters."""
    from rxqueue.acks import AckBatch

    here = PostgresBackend(URL, schema=schema)
    there = PostgresBackend(URL, schema=schema)
    there._channel_key = ("another process",)  # no in-process wake-up between them
    try:
        released, acked = await here.push_many(["b", "c"])
        b, c = await here._claim("w", 2)
        waiting = await here.push("a")
        ids = [waiting, released, acked]
        waits = [
            asyncio.create_task(there.wait_for(task_id, timeout=LIMIT, poll_interval=LIMIT))
            for task_id in ids
        ]
        await eventually(lambda: sql(f'SELECT 1 FROM "{schema}".waiters HAVING count(*) = 3'))
        began = time.perf_counter()
        assert await here.cancel(waiting) is Status.CANCELLED
        assert [await here.cancel(task_id) for task_id in (released, acked)] == [Status.QUEUED] * 2
        await here.release([b], "w")
        assert await here.report(AckBatch("w", cancelled=[(c, rxqueue.Cancelled("asked"))])) == []
        ended = await asyncio.gather(*waits)
        assert time.perf_counter() - began < LIMIT / 2  # the poll alone would take LIMIT
        assert [task.status for task in ended] == [Status.CANCELLED] * 3
        assert [task.last_error for task in ended] == [
            "cancelled: cancelled by request", "cancelled: cancelled by request",
            "cancelled: asked",
        ]  # fmt: skip
    finally:
        await here.close()
        await there.close()


async def test_a_corrupt_row_is_killed_at_claim(backend: PostgresBackend, schema: str) -> None:
    bad, good = await backend.push_many(["bad", "good"])
    await sql(f'''UPDATE "{schema}".tasks SET metadata = '[1]' WHERE id = $1''', bad)
    assert [t.id for t in await backend._claim("w", 10)] == [good]
    task = await backend.get(bad)
    assert task is not None and task.status is Status.KILLED
    assert (task.last_error or "").startswith("corrupt task row")


async def test_a_live_name_is_refused(backend: PostgresBackend, clock: ManualClock) -> None:
    await backend.register_worker("twin")
    clock.advance(59)
    with pytest.raises(WorkerError, match=r"'twin' is alive .* heartbeat 59\.0s ago") as info:
        await backend.register_worker("twin")
    assert "\n" not in str(info.value)
    await backend.heartbeat("twin")
    clock.advance(59)
    with pytest.raises(WorkerError):
        await backend.register_worker("twin")
    await backend.unregister_worker("twin")
    await backend.register_worker("twin")


async def test_a_restarted_name_takes_back_its_predecessors_tasks(
    backend: PostgresBackend, clock: ManualClock
) -> None:
    await backend.push_many(range(2))
    await backend.register_worker("w")
    await backend._claim("w", 2)
    clock.advance(61)
    await backend.register_worker("w")
    assert (await backend.stats())[Status.PENDING] == 2


async def test_acks_without_the_lease_are_refused(backend: PostgresBackend) -> None:
    from rxqueue.acks import AckBatch
    from rxqueue.task import Killed, Retry

    await backend.push_many(range(4))
    a, b, c, d = await backend._claim("w1", 4)
    batch = AckBatch(
        "w1",
        started=[a, b],
        done=[(a, b"1"), (c, None)],
        retried=[(b, Retry(backend.clock(), "again"))],
        killed=[(d, Killed("bad"))],
    )
    refused = await backend.report(AckBatch("intruder", done=[(a, None)], started=[b]))
    assert sorted(refused) == sorted([a.id, b.id])
    assert await backend.report(batch) == []
    got = {t.id: t for t in await backend.list()}
    assert [got[t.id].status for t in (a, b, c, d)] == [
        Status.DONE, Status.FAILED, Status.DONE, Status.KILLED,
    ]  # fmt: skip
    assert got[a.id].result == 1 and got[b.id].last_error == "again"
    assert await backend.report(AckBatch("w1", done=[(a, None)])) == [a.id]


# --- connections and errors ----------------------------------------------------------------------


async def test_application_name_is_visible_in_pg_stat_activity(schema: str) -> None:
    name = f"app-{uuid.uuid4().hex[:8]}"
    async with PostgresBackend(URL, schema=schema, worker_name=name) as named:
        assert await bell_of(named).until_listening(LIMIT)
        rows = await sql(
            "SELECT query FROM pg_stat_activity WHERE application_name = $1", f"rxqueue:{name}"
        )
        assert len(rows) >= 2  # the pool and the listener
        assert any(row[0].startswith("LISTEN") for row in rows)
    async with PostgresBackend(URL, schema=schema) as plain:
        await plain.stats()
        pids = await sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rxqueue'")
        assert pids[0][0] >= 1


async def test_an_unreachable_server_fails_fast_in_one_line() -> None:
    backend = rxqueue.connect(
        "postgresql://postgres:sekrit@127.0.0.1:1/test", schema="t_never", connect_timeout=3
    )
    began = time.perf_counter()
    with pytest.raises(BackendUnavailable) as info:
        await backend.push("x")
    assert time.perf_counter() - began < 5
    message = str(info.value)
    assert "\n" not in message and "sekrit" not in message
    assert message.startswith("PostgreSQL at 127.0.0.1:1/test: cannot reach the server")
    await backend.close()


async def test_a_missing_database_and_an_unknown_role_are_permanent() -> None:
    for url, expected in (
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_rxq", "database does not exist"),
        ("postgresql://no_such_role_rxq@127.0.0.1:5432/test", "refused the login"),
    ):
        backend = PostgresBackend(url, schema="t_never")
        with pytest.raises(BackendError) as info:
            await backend.stats()
        assert not isinstance(info.value, BackendUnavailable)
        assert expected in str(info.value) and "\n" not in str(info.value)
        await backend.close()


async def test_a_closed_backend_refuses_work(schema: str) -> None:
    backend = PostgresBackend(URL, schema=schema)
    task_id = await backend.push("x")
    await backend.close()
    with pytest.raises(BackendClosed):
        await backend.push("y")
    with pytest.raises(BackendClosed):
        await backend.report(rxqueue.acks.AckBatch("w", started=[rxqueue.Task(args=1)]))
    with pytest.raises(BackendClosed):
        await backend._claim("w", 1)
    rows = await sql(f'SELECT id FROM "{schema}".tasks')
    assert [row[0] for row in rows] == [task_id]

    async def none_left() -> bool:  # a closed connection's server process ends soon after
        return not await sql(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
            f'%"{schema}"%',
        )

    await eventually(none_left)


async def test_lost_pool_connections_are_transient(schema: str) -> None:
    name = f"lost-{uuid.uuid4().hex[:8]}"
    async with PostgresBackend(URL, schema=schema, worker_name=name, pool_min_size=3) as b:
        await b.push("x")
        killed = await sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"rxqueue:{name}",
        )
        assert len(killed) >= 1
        outcomes: list[str] = []
        for _ in range(5):  # each call works, or fails as BackendUnavailable, never worse
            try:
                stats = await b.stats()
            except BackendUnavailable as exc:
                assert "the connection to the server was lost" in str(exc)
                outcomes.append("unavailable")
            else:
                outcomes.append("ok")
                assert stats[Status.PENDING] == 1
        assert outcomes[-1] == "ok"


async def test_workers_survive_every_connection_being_terminated_twice(schema: str) -> None:
    """Every rxqueue connection (found by application_name) is terminated twice
    while a worker runs: it reconnects (the fetcher through ops.retry) and every
    task ends Done."""
    name = f"fault-{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(
        URL, schema=schema, worker_name=name, poll_interval=0.005, max_poll_interval=0.05
    )
    runs: Counter[str] = Counter()
    marks = {500: asyncio.Event(), 1500: asyncio.Event()}
    problems: list[Any] = []

    async def handle(job: int, ctx: TaskContext) -> None:
        runs[ctx.task_id] += 1
        if sum(runs.values()) in marks:
            marks[sum(runs.values())].set()
        await asyncio.sleep(0.0005)

    def on_event(event: Any) -> None:
        if isinstance(event, rxqueue.events.FetcherError | rxqueue.events.AckError):
            problems.append(event)

    try:
        ids = await backend.push_many(range(3000))
        worker = WorkerBuilder("w").backend(backend.pipe(ops.retry())).concurrency(8).build(handle)
        worker.events.subscribe(on_event)
        running = asyncio.create_task(worker.run_until_idle())
        async with asyncio.timeout(LIMIT):
            for mark in marks.values():
                await mark.wait()
                killed = await sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    f"rxqueue:{name}",
                )
                assert killed, "the worker's connections should have been found"
            await running
        stats = await backend.stats()
    finally:
        await backend.close()
    assert stats[Status.DONE] == 3000
    assert set(runs) == set(ids)
    for event in problems:  # reported as events, as lost connections
        assert "BackendUnavailable" in event.error, event


# --- the stateful model, on PostgreSQL --------------------------------------------------------


def _postgres_machine() -> type:
    """The SQLite backend's hypothesis state machine (tests/test_sqlite_stateful.py),
    run against a PostgresBackend in a schema of its own per example."""
    from hypothesis import settings
    from hypothesis.stateful import RuleBasedStateMachine

    from tests import test_sqlite_stateful as stateful

    class PostgresMachine(stateful.SqliteMachine):
        def __init__(self) -> None:
            RuleBasedStateMachine.__init__(self)
            self.loop = asyncio.new_event_loop()
            self.dir = Path(".")  # nothing on disk; the parent's teardown is not used
            self.clock = ManualClock()
            self.schema = f"t_{uuid.uuid4().hex[:12]}"
            self.backend = PostgresBackend(  # type: ignore[assignment]
                URL, schema=self.schema, clock=self.clock, lease_timeout=stateful.LEASE
            )
            self.tasks = {}
            self.seen = {}
            self.claimed = {name: [] for name in stateful.WORKERS}
            for name in stateful.WORKERS:
                self.run(self.backend.register_worker(name))
                self.seen[name] = self.clock()

        def teardown(self) -> None:
            try:
                self.run(self.backend.close())
                self.run(sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            finally:
                self.loop.close()

    PostgresMachine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=30, deadline=None
    )
    return PostgresMachine


TestPostgresMachine = _postgres_machine().TestCase


# --- a worker process killed mid-run -------------------------------------------------------

# A worker process: URL SCHEMA RUNS NAME PROGRESS DELAY. Prints "ready", waits for a
# line on stdin (so several start together), works until idle, prints "done"; after
# PROGRESS runs it prints "progress" (the cue to kill it).
WORKER = r"""
import asyncio, os, sys
from rxqueue import TaskContext, WorkerBuilder
from rxqueue.backends.postgres import PostgresBackend

url, schema, runs_path, name = sys.argv[1:5]
progress, delay = int(sys.argv[5]), float(sys.argv[6])

async def main() -> None:
    runs = os.open(runs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    count = 0

    async def handler(job: object, ctx: TaskContext) -> None:
        nonlocal count
        os.write(runs, f"{ctx.task_id}\n".encode())  # one unbuffered write per run
        count += 1
        if count == progress:
            print("progress", flush=True)
        if delay:
            await asyncio.sleep(delay)

    async with PostgresBackend(url, schema=schema, worker_name=name) as backend:
        await backend.stats()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        worker = WorkerBuilder(name).backend(backend).concurrency(8).build(handler)
        await worker.run_until_idle()
    print("done", flush=True)

asyncio.run(main())
"""


@pytest.mark.slow
def test_a_sigkilled_worker_process_loses_nothing(schema: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"

    async def fill() -> list[str]:
        async with PostgresBackend(URL, schema=schema) as b:
            return await b.push_many(range(2000))

    ids = in_thread(fill())
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, URL, schema, str(runs), "doomed", "300", "0.002"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "progress"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    in_flight = {
        row[0]
        for row in in_thread(
            sql(f"SELECT id FROM \"{schema}\".tasks WHERE status IN ('Queued', 'Running')")
        )
    }
    ran_before = Counter(runs.read_text().split())
    assert 300 <= sum(ran_before.values()) < 2000

    async def survive() -> tuple[int, dict[Status, int]]:
        heir_clock = ManualClock(time.time() + 61)  # past the dead worker's 60 s lease
        records = os.open(runs, os.O_WRONLY | os.O_APPEND)

        async def handler(job: int, ctx: TaskContext) -> None:
            os.write(records, f"{ctx.task_id}\n".encode())

        try:
            async with PostgresBackend(URL, schema=schema, clock=heir_clock) as b:
                reclaimed = await b.reclaim()
                worker = WorkerBuilder("heir").backend(b).concurrency(8).build(handler)
                await worker.run_until_idle()
                return reclaimed, await b.stats()
        finally:
            os.close(records)

    reclaimed, stats = in_thread(survive())
    assert reclaimed == len(in_flight) > 0
    assert stats[Status.DONE] == 2000
    counts = Counter(runs.read_text().split())
    assert set(counts) == set(ids)
    twice = {task_id for task_id, n in counts.items() if n > 1}
    assert twice <= in_flight  # only tasks in flight at the kill ran again
    assert all(n <= 2 for n in counts.values())


@pytest.mark.slow
def test_four_worker_processes_run_each_of_20000_tasks_once(schema: str, tmp_path: Path) -> None:
    async def fill() -> list[str]:
        async with PostgresBackend(URL, schema=schema) as b:
            return await b.push_many(range(20_000))

    ids = in_thread(fill())
    runs = [tmp_path / f"runs-{n}.txt" for n in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, URL, schema, str(path), f"w{n}", "0", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for n, path in enumerate(runs)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0] * 4
    assert all(out.split() == ["done"] for out in outputs)
    per_process = [Counter(path.read_text().split()) for path in runs]
    assert sum(1 for counts in per_process if counts) >= 2, "the work should have been shared"
    counts = sum(per_process, Counter())
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    rows = in_thread(sql(f'SELECT status, count(*) FROM "{schema}".tasks GROUP BY status'))
    assert [tuple(row) for row in rows] == [("Done", 20_000)]
