"""Unique tasks: ``push(payload, unique_key=...)`` stores a task once per key.

While a task with the key is unfinished (Pending, Queued, Running, Failed
awaiting a retry), or for ``unique_for`` seconds after its push, pushing the key
again stores nothing and returns the holder's id. The conformance tests run on
every backend in ``conftest.FACTORIES`` that declares ``Capability.UNIQUE``; the
last tests race processes for the same keys on one SQLite file and on one
PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxqueue import (
    Capability,
    InvalidOption,
    ManualClock,
    MemoryBackend,
    Status,
    Task,
    TaskContext,
    TaskExists,
    UnsupportedOperation,
    WorkerBuilder,
    layers,
)
from rxqueue.backends import _sqlite_schema
from rxqueue.backends.sqlite import SqliteBackend
from rxqueue.backoff import constant
from tests.conftest import BackendKit, reachable_postgres, require
from tests.together import release_together

RUN_LIMIT = 20.0
ROOT = Path(__file__).resolve().parents[1]
UNFINISHED = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING, Status.FAILED})


@dataclass
class Job:
    n: int
    fail: bool = False


async def run_idle(backend: Any, name: str = "w") -> Any:
    """Run every ready task; a payload with ``fail`` fails its first attempt (retry in 10 s)."""

    async def handle(job: Job, ctx: TaskContext) -> None:
        if job.fail and ctx.attempt == 1:
            raise ConnectionError("first attempt fails")

    builder = (
        WorkerBuilder(name)
        .backend(backend)
        .idle_horizon(0)
        .layer(layers.retry(backoff=constant(10)))
    )
    async with asyncio.timeout(RUN_LIMIT):
        return await builder.build(handle).run_until_idle()


async def count(backend: Any) -> int:
    return sum((await backend.stats()).values())


# --- conformance ------------------------------------------------------------------------------


async def test_a_second_push_returns_the_first_id_and_stores_nothing(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    first = await backend.push(Job(1), unique_key="invoice:42")
    again = await backend.push(Job(2), unique_key="invoice:42")
    with_id = await backend.push(Job(3), unique_key="invoice:42", task_id="another-id")
    other = await backend.push(Job(4), unique_key="invoice:43")
    plain = await backend.push(Job(5))
    assert again == with_id == first
    assert len({first, other, plain}) == 3
    assert await count(backend) == 3
    stored = await backend.get(first)
    assert stored is not None and stored.args == {"n": 1, "fail": False}
    assert stored.unique_key == "invoice:42"
    assert await backend.get("another-id") is None


def sibling(backend: Any, queue: str) -> Any:
    """Another backend on the same store (file, schema), for ``queue``; None for memory."""
    if isinstance(backend, SqliteBackend):
        return SqliteBackend(backend.path, queue=queue)
    if type(backend).__name__ == "PostgresBackend":
        return type(backend)(
            backend._server.dsn, schema=backend.schema, queue=queue, pool_max_size=2
        )
    return None


async def test_keys_are_per_queue(kit: BackendKit) -> None:
    emails = await kit.make(queue="emails")
    require(emails, Capability.UNIQUE, Capability.LIST)
    first = await emails.push(Job(1), unique_key="k")
    sms = sibling(emails, "sms")
    if sms is None:
        pytest.skip(f"a {type(emails).__name__} holds one queue")
    kit.created.append(sms)
    second = await sms.push(Job(2), unique_key="k")
    assert second != first
    assert await emails.push(Job(3), unique_key="k") == first
    assert (await count(emails), await count(sms)) == (1, 1)


async def test_the_key_frees_when_its_task_is_done_or_killed(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.MANAGE, Capability.LIST)
    first = await backend.push(Job(1), unique_key="k")
    await run_idle(backend)
    assert (await backend.get(first)).status is Status.DONE  # type: ignore[union-attr]
    second = await backend.push(Job(2), unique_key="k")
    assert second != first
    assert await backend.push(Job(3), unique_key="k") == second
    await backend.kill(second)
    third = await backend.push(Job(4), unique_key="k")
    assert third not in (first, second)
    assert await count(backend) == 3


async def test_a_task_failed_awaiting_retry_keeps_its_key(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.UNIQUE, Capability.RETRY, Capability.LIST)
    first = await backend.push(Job(1, fail=True), unique_key="k")
    summary = await run_idle(backend)
    assert summary.retried == 1
    assert (await backend.get(first)).status is Status.FAILED  # type: ignore[union-attr]
    assert await backend.push(Job(2), unique_key="k") == first
    clock.advance(10)
    await run_idle(backend, "w2")
    assert (await backend.get(first)).status is Status.DONE  # type: ignore[union-attr]
    assert await backend.push(Job(3), unique_key="k") != first


async def test_unique_for_holds_the_key_after_the_task_is_done(kit: BackendKit) -> None:
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.UNIQUE, Capability.LIST)
    first = await backend.push(Job(1), unique_key="k", unique_for=60)
    task = await backend.get(first)
    assert task is not None and task.unique_until == clock() + 60
    await run_idle(backend)
    clock.advance(59)
    assert await backend.push(Job(2), unique_key="k") == first
    clock.advance(1)
    second = await backend.push(Job(3), unique_key="k", unique_for=0)
    assert second != first
    # unique_for does not shorten an unfinished task's hold: it holds until it ends.
    clock.advance(3600)
    assert await backend.push(Job(4), unique_key="k") == second
    assert await count(backend) == 2


async def test_push_many_returns_new_and_existing_ids_in_order(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    a = await backend.push(Job(0), unique_key="a")
    c = await backend.push(Job(0), unique_key="c")
    ids = await backend.push_many(
        [Job(1), Job(2), Job(3), Job(4), Job(5)], unique_keys=["a", "b", None, "c", "d"]
    )
    assert ids[0] == a and ids[3] == c
    assert len({a, c, ids[1], ids[2], ids[4]}) == 5
    assert await count(backend) == 5
    for task_id, n in zip([ids[1], ids[2], ids[4]], [2, 3, 5], strict=True):
        task = await backend.get(task_id)
        assert task is not None and task.args["n"] == n
    # Everything taken: nothing stored, the holders' ids come back.
    assert await backend.push_many([Job(6), Job(7)], unique_keys=["d", "b"]) == [ids[4], ids[1]]
    assert await count(backend) == 5


async def test_the_same_key_twice_in_one_call_stores_the_first(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    ids = await backend.push_many(
        [Job(1), Job(2), Job(3), Job(4)], unique_keys=["x", "y", "x", "x"], unique_for=5
    )
    assert ids[0] == ids[2] == ids[3] != ids[1]
    assert await count(backend) == 2
    task = await backend.get(ids[0])
    assert task is not None and task.args["n"] == 1
    sent = await backend.send_many(
        [Task(args=Job(5), unique_key="z"), Task(args=Job(6), unique_key="z")]
    )
    assert sent[0] == sent[1]
    assert await backend.send(Task(args=Job(7), unique_key="z")) == sent[0]
    assert await count(backend) == 3


async def test_a_taken_id_still_raises_when_the_key_is_free(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    await backend.push(Job(1), task_id="order-7")
    with pytest.raises(TaskExists, match="order-7"):
        await backend.push(Job(2), task_id="order-7", unique_key="fresh")
    assert await count(backend) == 1
    assert await backend.push(Job(3), unique_key="fresh") != "order-7"


BAD_UNIQUE = st.one_of(
    st.fixed_dictionaries({"unique_key": st.one_of(
        st.just(""), st.integers(), st.binary(min_size=1, max_size=3),
        st.text(min_size=256, max_size=300),
    )}),
    st.fixed_dictionaries({"unique_key": st.just("k"), "unique_for": st.one_of(
        st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf),
        st.text(min_size=1, max_size=3), st.booleans(),
    )}),
)  # fmt: skip


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=BAD_UNIQUE)
async def test_bad_unique_options_are_refused_naming_them(
    kit: BackendKit, options: dict[str, Any]
) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    name = "unique_for" if "unique_for" in options else "unique_key"
    with pytest.raises(InvalidOption, match=name):
        await backend.push(Job(0), **options)
    many: dict[str, Any] = {"unique_keys": [None, options["unique_key"]]}
    if "unique_for" in options:
        many["unique_for"] = options["unique_for"]
    with pytest.raises(InvalidOption, match=name if name == "unique_for" else "unique_keys"):
        await backend.push_many([Job(1), Job(2)], **many)
    assert await count(backend) == 0
    await backend.close()  # at once: PostgreSQL would run out of connections over many examples


async def test_unique_options_that_do_not_fit_together_are_refused(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.LIST)
    with pytest.raises(InvalidOption, match="unique_for needs a unique_key"):
        await backend.push(Job(0), unique_for=5)
    with pytest.raises(InvalidOption, match="unique_for needs unique_keys"):
        await backend.push_many([Job(1)], unique_for=5)
    with pytest.raises(InvalidOption, match="unique_keys holds 1 keys for 2 payloads"):
        await backend.push_many([Job(1), Job(2)], unique_keys=["a"])
    with pytest.raises(InvalidOption, match="unique_keys must be a list"):
        await backend.push_many([Job(1)], unique_keys="a")
    with pytest.raises(InvalidOption, match="unique_key must be a non-empty string"):
        await backend.send_many([Task(args=Job(1)), Task(args=Job(2), unique_key="")])
    with pytest.raises(InvalidOption, match="unique_until must be a finite number"):
        await backend.send(Task(args=Job(3), unique_key="k", unique_until=math.nan))
    assert await count(backend) == 0


async def test_a_backend_without_the_capability_refuses_a_key(kit: BackendKit) -> None:
    backend = await kit.make()
    if Capability.UNIQUE in backend.capabilities:
        pytest.skip(f"{type(backend).__name__} declares unique")
    with pytest.raises(UnsupportedOperation, match="unique"):
        await backend.push(Job(1), unique_key="k")
    with pytest.raises(UnsupportedOperation, match=r"Capability\.UNIQUE"):
        await backend.send(Task(args=Job(1), unique_key="k"))


# --- the property: at most one unfinished task per key ------------------------------------------

KEYS = ("a", "b")
Step = tuple[Any, ...]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from(KEYS), st.sampled_from([None, None, 0, 8]),
                  st.booleans()),
        st.tuples(st.just("push"), st.sampled_from(KEYS), st.just(None), st.just(True)),
        st.tuples(st.just("push_many"),
                  st.lists(st.one_of(st.none(), st.sampled_from(KEYS)), min_size=1, max_size=4)),
        st.tuples(st.just("run")),
        st.tuples(st.just("kill"), st.sampled_from(KEYS)),
        st.tuples(st.just("advance")),
    ),
    min_size=6,
    max_size=16,
)  # fmt: skip


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
async def test_any_interleaving_keeps_at_most_one_unfinished_task_per_key(
    kit: BackendKit, steps: list[Step]
) -> None:
    """Pushes (one, many; with and without unique_for; some failing their first
    attempt, so Failed awaiting a retry), worker runs, kills and time passing: after
    each step every key has at most one holder (unfinished, or within its
    unique_for), and a push returned the holder's id exactly when there was one."""
    clock = ManualClock()
    backend = await kit.make(clock=clock)
    require(backend, Capability.UNIQUE, Capability.LIST, Capability.MANAGE, Capability.RETRY)
    try:  # closed at once: PostgreSQL would run out of connections over many examples
        await check_interleaving(backend, clock, steps)
    finally:
        await backend.close()


async def check_interleaving(backend: Any, clock: ManualClock, steps: list[Step]) -> None:
    pushed: dict[str, tuple[str, float | None]] = {}  # id -> (key, unique_until)
    serial = 0

    async def holders() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {key: [] for key in KEYS}
        for task in await backend.list(limit=10_000):
            key, until = pushed.get(task.id, ("", None))
            if not key:
                continue
            if task.status in UNFINISHED or (until is not None and until > clock()):
                found[key].append(task.id)
        return found

    for step in steps:
        before = await holders()
        total = await count(backend)
        if step[0] in ("push", "push_many"):
            if step[0] == "push":
                _, key, unique_for, fail = step
                keys = [key]
                serial += 1
                ids = [await backend.push(Job(serial, fail), unique_key=key, unique_for=unique_for)]
            else:
                keys = step[1]
                jobs = [Job(serial + i) for i in range(len(keys))]
                serial += len(keys)
                ids = await backend.push_many(jobs, unique_keys=keys)
                unique_for = None
            new = 0
            given_now: dict[str, str] = {}
            for key, task_id in zip(keys, ids, strict=True):
                if key is None:
                    assert task_id not in pushed
                    pushed[task_id] = ("", None)
                    new += 1
                elif before[key]:
                    assert task_id == before[key][0], (key, before)
                elif key in given_now:
                    assert task_id == given_now[key]
                else:
                    assert task_id not in pushed
                    until = None if unique_for is None else clock() + unique_for
                    pushed[task_id] = (key, until)
                    given_now[key] = task_id
                    new += 1
            assert await count(backend) == total + new
        elif step[0] == "run":
            await run_idle(backend, f"w{serial}-{clock()}")
        elif step[0] == "kill":
            for task_id in before[step[1]]:
                task = await backend.get(task_id)
                if task is not None and task.status in UNFINISHED:
                    await backend.kill(task_id, "by the property")
        else:
            clock.advance(6)
        after = await holders()
        assert all(len(ids) <= 1 for ids in after.values()), (step, after)


# --- schema upgrades keep old tasks and add keys ------------------------------------------------


async def test_a_version_1_sqlite_file_is_upgraded_for_unique_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for statement in _sqlite_schema.MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tasks (id, queue, args, max_attempts, run_at, created_at) "
            "VALUES ('old-1', 'default', '{\"n\":1}', 3, 0, 0)"
        )
        conn.execute("PRAGMA user_version = 1")
    async with SqliteBackend(path) as backend:
        old = await backend.get("old-1")
        assert old is not None and old.unique_key is None and old.args == {"n": 1}
        first = await backend.push(Job(2), unique_key="k")
        assert await backend.push(Job(3), unique_key="k") == first
        assert await count(backend) == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sqlite_schema.SCHEMA_VERSION


async def test_a_version_1_postgres_schema_is_upgraded_for_unique_keys() -> None:
    url = await reachable_postgres()
    import asyncpg

    from rxqueue.backends import _postgres_schema as pg_schema
    from rxqueue.backends.postgres import PostgresBackend

    schema = f"t_{uuid.uuid4().hex[:12]}"
    s = pg_schema.quote(schema)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(pg_schema._VERSION_TABLE.format(s=s))
            for statement in pg_schema.MIGRATIONS[1]:
                await conn.execute(statement.format(s=s))
            await conn.execute(f"INSERT INTO {s}.migrations (version) VALUES (1)")
            await conn.execute(
                f"INSERT INTO {s}.tasks (id, queue, args, max_attempts, run_at, created_at) "
                "VALUES ('old-1', 'default', '{\"n\":1}', 3, 0, 0)"
            )
        async with PostgresBackend(url, schema=schema, pool_max_size=2) as backend:
            old = await backend.get("old-1")
            assert old is not None and old.unique_key is None and old.args == {"n": 1}
            first = await backend.push(Job(2), unique_key="k")
            assert await backend.push(Job(3), unique_key="k") == first
            assert await count(backend) == 2
        versions = await conn.fetch(f"SELECT version FROM {s}.migrations ORDER BY version")
        assert [row[0] for row in versions] == list(range(1, pg_schema.SCHEMA_VERSION + 1))
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        await conn.close()


# --- processes racing for the same keys ---------------------------------------------------------

PUSHER = r"""
import asyncio, json, random, sys
import rxqueue

async def main() -> None:
    url, schema, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = {"schema": schema, "pool_max_size": 4} if url.startswith("postgres") else {}
    backend = await rxqueue.connect(url, **options).open()
    keys = [f"key-{n}" for n in range(1000)]
    random.Random(seed).shuffle(keys)
    batches = [keys[i:i + 50] for i in range(0, len(keys), 50)]
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    answers = {}

    async def push(batch: list) -> None:
        if len(batch) % 2:  # one by one, interleaved with the batches
            for key in batch:
                answers[key] = await backend.push({"key": key}, unique_key=key)
        else:
            ids = await backend.push_many([{"key": key} for key in batch], unique_keys=batch)
            answers.update(zip(batch, ids))

    for start in range(0, len(batches), 4):
        await asyncio.gather(*(push(batch) for batch in batches[start:start + 4]))
    await backend.close()
    print(json.dumps(answers), flush=True)

asyncio.run(main())
"""


def race(url: str, schema: str) -> list[dict[str, str]]:
    """Four processes push the same 1,000 keys at once (each in its own order, in
    batches of 50 and one by one); returns each process's key -> id answers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUSHER, url, schema, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(4)
    ]
    outputs = release_together(procs)
    return [json.loads(out) for out, _ in outputs]


def check_race(answers: list[dict[str, str]], stored: dict[str, str]) -> None:
    """Exactly 1,000 tasks, one per key, and every process got that task's id."""
    assert len(stored) == 1000
    assert sorted(stored) == sorted(f"key-{n}" for n in range(1000))
    for answer in answers:
        assert answer == stored


@pytest.mark.slow
def test_four_processes_pushing_the_same_keys_store_each_once_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "race.db"  # created by the four processes at once
    answers = race(f"sqlite:///{path}", "")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT unique_key, id FROM tasks").fetchall()
    assert len(rows) == 1000
    check_race(answers, dict(rows))


@pytest.mark.slow
async def test_four_processes_pushing_the_same_keys_store_each_once_in_postgres() -> None:
    url = await reachable_postgres()
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        answers = await asyncio.to_thread(race, url, schema)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(f'SELECT unique_key, id FROM "{schema}".tasks')
        finally:
            await conn.close()
        assert len(rows) == 1000
        check_race(answers, {row[0]: row[1] for row in rows})
    finally:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def test_a_custom_backend_cannot_declare_unique() -> None:
    from rxqueue import BackendBuilder, BuildError

    with pytest.raises(BuildError, match=r"cannot declare Capability\.UNIQUE"):
        BackendBuilder().declare(Capability.UNIQUE)
    assert Capability.UNIQUE in MemoryBackend.capabilities


async def test_a_key_pushed_in_your_transaction_is_taken_only_if_it_commits(
    kit: BackendKit,
) -> None:
    backend = await kit.make()
    require(backend, Capability.UNIQUE, Capability.TRANSACTIONS, Capability.LIST)
    import asyncpg

    conn = await asyncpg.connect(backend._server.dsn)  # type: ignore[attr-defined]
    try:
        with pytest.raises(RuntimeError, match="rolled back"):
            async with conn.transaction():
                await backend.push(Job(1), unique_key="k", connection=conn)
                raise RuntimeError("rolled back")
        async with conn.transaction():
            first = await backend.push(Job(2), unique_key="k", connection=conn)
            assert await backend.push(Job(3), unique_key="k", connection=conn) == first
    finally:
        await conn.close()
    assert await backend.push(Job(4), unique_key="k") == first
    assert await count(backend) == 1
