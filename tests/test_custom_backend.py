"""BackendBuilder: the apalis custom-backend page, in Python."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import reactivex
from reactivex.subject import Subject

from examples import custom_sqlite_backend as example
from rxqueue import (
    BackendBuilder,
    BackendError,
    BuildError,
    Cancelled,
    Capability,
    CustomBackend,
    Done,
    InvalidOption,
    Killed,
    ManualClock,
    Status,
    Task,
    TaskId,
    UnsupportedOperation,
    WorkerBuilder,
    WorkerError,
    ops,
)
from rxqueue.acks import AckBatch


@dataclass
class Config:
    batch_size: int


def test_build_names_every_missing_part() -> None:
    with pytest.raises(
        BuildError, match=r"no database and no fetcher and no sink given.*\.database\(\.\.\.\)"
    ):
        BackendBuilder().build()
    with pytest.raises(
        BuildError, match=r"no sink given; call \.sink\(\.\.\.\) before \.build\(\)"
    ):
        BackendBuilder().database(None).fetcher(lambda d, c, w: reactivex.empty()).build()


async def test_observable_fetcher_observer_sink_and_acker_share_db_and_config() -> None:
    db: dict[str, Any] = {"rows": [], "acks": []}
    config = Config(batch_size=2)
    seen_config: list[Config] = []
    sink_subject: Subject[Task[Any]] = Subject()
    sink_subject.subscribe(on_next=lambda task: db["rows"].append(task))

    def fetcher(database: Any, cfg: Config, worker: Any) -> Any:
        seen_config.append(cfg)
        rows, database["rows"] = database["rows"], []
        return reactivex.from_iterable(rows)  # completes: the worker drains and stops

    async def ack(database: Any, cfg: Config, task: Task[Any], outcome: Any) -> None:
        database["acks"].append((task.id, outcome))

    backend = (
        BackendBuilder.new_with_cfg(config)
        .database(db)
        .fetcher(fetcher)
        .sink(lambda database, cfg: sink_subject)  # a reactivex Observer is a sink
        .ack(ack)
        .build()
    )
    first = await backend.push({"n": 1})
    second = await backend.push({"n": 2})
    assert [task.args for task in db["rows"]] == [b'{"n":1}', b'{"n":2}']  # stored encoded
    handled: list[int] = []

    async def handle(job: dict[str, int]) -> int:
        handled.append(job["n"])
        return job["n"]

    summary = await WorkerBuilder("w").backend(backend).build(handle).run(handle_signals=False)
    assert handled == [1, 2] and summary.done == 2
    assert db["acks"] == [(first, Done(b"1")), (second, Done(b"2"))]  # results encoded
    assert seen_config == [config]


async def test_a_failing_sink_fails_send_and_reports_nothing_stored() -> None:
    async def sink(task: Task[Any]) -> None:
        raise OSError("disk full")

    backend = (
        BackendBuilder()
        .database(None)
        .fetcher(lambda d, c, w: reactivex.never())
        .sink(lambda d, c: sink)
        .build()
    )
    with pytest.raises(BackendError, match=r"sink failed to store task .*disk full"):
        await backend.push({"n": 1})


async def test_a_fetcher_of_the_wrong_type_is_explained() -> None:
    backend = (
        BackendBuilder()
        .database(None)
        .fetcher(lambda d, c, w: [1, 2])
        .sink(lambda d, c: print)
        .build()
    )

    async def handle(job: Any) -> None: ...

    with pytest.raises(
        WorkerError, match="must return a reactivex Observable or an async iterable"
    ):
        await WorkerBuilder("w").backend(backend).build(handle).run(handle_signals=False)


async def test_pipe_keeps_store_sink_and_acker_and_composes_the_fetcher() -> None:
    rows: list[Task[Any]] = []
    backend = (
        BackendBuilder()
        .database(rows)
        .fetcher(lambda database, c, w: reactivex.from_iterable(list(database)))
        .sink(lambda database, c: database.append)
        .build()
    )
    piped = backend.pipe(ops.batch(3, 0.01))
    await piped.push({"n": 1})
    assert len(rows) == 1 and piped.db is backend.db
    assert piped.batch_size_hint == 3 and backend.batch_size_hint == 1
    with pytest.raises(UnsupportedOperation, match="does not support get"):
        await piped.get("x")


async def test_ops_retry_over_an_async_generator_fetcher_gets_a_fresh_generator() -> None:
    """The README's custom-backend style (an async generator) under ops.retry: each
    resubscription calls the fetcher factory again instead of ending in silence."""
    rows: list[Task[Any]] = []
    made = 0

    def fetcher(db: list[Task[Any]], cfg: Any, worker: Any) -> Any:
        nonlocal made
        made += 1
        attempt = made

        async def fetch() -> Any:
            if attempt == 1 and db:
                yield db.pop(0)
                raise ConnectionError("the store blinked")
            while db:
                yield db.pop(0)

        return fetch()

    async def sink(task: Task[Any]) -> None:
        rows.append(task)

    backend = (
        BackendBuilder().database(rows).fetcher(fetcher).sink(lambda db, cfg: sink).build()
    )
    await backend.push_many([{"n": n} for n in range(5)])
    seen: list[int] = []

    async def handle(job: dict[str, int]) -> None:
        seen.append(job["n"])

    piped = backend.pipe(ops.retry(3, backoff=lambda attempt: 0.0))
    summary = await WorkerBuilder("w").backend(piped).build(handle).run(handle_signals=False)
    assert sorted(seen) == [0, 1, 2, 3, 4] and summary.done == 5
    assert made == 2


async def test_an_async_generator_object_subscribed_twice_says_so() -> None:
    from rxqueue import from_async_iterable

    async def gen() -> Any:
        yield 1

    source = from_async_iterable(gen())
    errors: list[Exception] = []
    source.subscribe(on_error=errors.append)
    source.subscribe(on_error=errors.append)
    assert errors and "already iterated" in str(errors[0])


# --- Capability.DEPENDENCIES: workflows over a custom store ----------------------------------


def test_build_refuses_dependencies_without_the_pieces_they_need() -> None:
    def base() -> BackendBuilder[Any, None]:
        return (
            BackendBuilder()
            .database(None)
            .fetcher(lambda d, c, w: reactivex.never())
            .sink(lambda d, c: print)
            .declare(Capability.DEPENDENCIES)
        )

    with pytest.raises(
        BuildError,
        match=r"Capability.DEPENDENCIES \(workflows\) also needs \.getter\(\.\.\.\) \(a push "
        r"checks that its dependencies are stored\) and \.family\(\.\.\.\) \(workflow status "
        r"lists a run's steps\) and \.ack\(\.\.\.\) \(a Done releases the tasks that wait for "
        r"it\); give them before \.build\(\)",
    ):
        base().build()
    with pytest.raises(BuildError, match=r"needs \.ack\(\.\.\.\) \(a Done releases"):
        base().getter(lambda d, c, i: None).family(lambda d, c, i: []).build()
    built = base().getter(lambda d, c, i: None).family(lambda d, c, i: []).ack(print).build()
    assert Capability.DEPENDENCIES in built.capabilities


async def test_family_needs_its_lister_and_returns_tasks() -> None:
    rows = [Task(id="run", args=b"1"), Task(id="run/a", args=b"2")]
    plain = BackendBuilder().database(rows).fetcher(lambda d, c, w: reactivex.never())
    without = plain.sink(lambda d, c: d.append).build()
    with pytest.raises(UnsupportedOperation, match=r"give the builder \.family\(fn\)"):
        await without.family("run")
    listed = plain.sink(lambda d, c: d.append).family(lambda d, c, run: list(d)).build()
    assert [(task.id, task.args) for task in await listed.family("run")] == [
        ("run", 1),
        ("run/a", 2),
    ]  # decoded, as get() shows them
    wrong = plain.sink(lambda d, c: d.append).family(lambda d, c, run: ["run"]).build()
    with pytest.raises(BackendError, match="must return a list of Task"):
        await wrong.family("run")


async def test_the_acker_gets_done_with_its_spawn_and_join_and_when_it_ended() -> None:
    acks: list[tuple[Task[Any], Any]] = []
    clock = ManualClock(1000.0)
    backend = (
        BackendBuilder()
        .database(None)
        .fetcher(lambda d, c, w: reactivex.never())
        .sink(lambda d, c: print)
        .ack(lambda d, c, task, outcome: acks.append((task, outcome)))
        .clock(clock)
        .build()
    )
    parent, other = Task(id="p", args=b"0"), Task(id="q", args=b"0")
    spawned = (Task(id="s", args=b"1"),)
    updates = [(parent, Done(b"7", spawned, "j")), (other, Killed("boom"))]
    assert await backend.report(AckBatch.of("w", updates)) == []
    assert [(task.id, task.done_at, outcome) for task, outcome in acks] == [
        ("p", 1000.0, Done(b"7", spawned, "j")),
        ("q", 1000.0, Killed("boom")),
    ]


@dataclass
class Store:
    """The page's example backend, driven step by step: claims and acks are explicit."""

    backend: CustomBackend
    clock: ManualClock

    async def send(self, *tasks: Task[Any]) -> None:
        await self.backend.send_many(tasks)

    async def claim(self) -> dict[str, Task[Any]]:
        b = self.backend
        claimed = await example.fetch_pending_tasks(b.db, b.config, "w", 100, self.clock())
        return {task.id: task for task in claimed}

    async def ack(self, *updates: tuple[Task[Any], Any]) -> list[TaskId]:
        return list(await self.backend.report(AckBatch.of("w", updates)))

    async def get(self, task_id: TaskId) -> Task[Any]:
        task = await self.backend.get(task_id)
        assert task is not None, f"{task_id} is not stored"
        return task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = await example.open_backend(tmp_path / "deps.db")
    clock = ManualClock(time.time() + 60)  # tasks built now are due; time moves when told
    backend.clock = clock
    yield Store(backend, clock)
    await backend.db.close()


def job(task_id: str, *depends_on: str, **fields: Any) -> Task[Any]:
    return Task(id=task_id, args=task_id, depends_on=depends_on, **fields)


async def test_example_a_dependant_waits_then_runs_on_its_parents_results(store: Store) -> None:
    now = store.clock()
    # Sent before its parents, in one call: stored after them, waiting for both.
    child = job("c", "b", "a", created_at=now, run_at=now + 5)
    await store.send(child, job("a"), job("b"))
    assert (await store.get("c")).status is Status.WAITING
    first = await store.claim()
    assert sorted(first) == ["a", "b"]
    assert await store.ack((first["a"], Done(b"1"))) == []
    assert (await store.get("c")).status is Status.WAITING  # b is not Done yet
    store.clock.advance(100)
    assert await store.ack((first["b"], Done(b'"two"'))) == []
    released = await store.get("c")
    assert (released.status, released.run_at) == (Status.PENDING, store.clock() + 5)
    assert await store.backend.has_work(0) is True  # once: an ack may have released tasks
    assert await store.backend.has_work(0) is None
    assert await store.claim() == {}  # its delay counts from its release
    store.clock.advance(5)
    claimed = await store.claim()
    assert claimed["c"].args == b'["two",1]'  # its parents' results, in depends_on order


async def test_example_refuses_unknown_dependencies_and_cycles_storing_nothing(
    store: Store,
) -> None:
    with pytest.raises(
        InvalidOption,
        match=r"task 'b' depends on 'nope', which is not stored: push the tasks it depends "
        r"on first, or in the same call",
    ):
        await store.send(job("a"), job("b", "a", "nope"))
    with pytest.raises(InvalidOption, match=r"tasks '.' and '.' wait for each other"):
        await store.send(job("x", "y"), job("y", "x"))
    for task_id in ("a", "b", "x", "y"):
        assert await store.backend.get(task_id) is None


async def test_example_a_failure_kills_what_waits_for_it_all_the_way_down(store: Store) -> None:
    await store.send(job("a"), job("b", "a"), job("c", "b"), job("d"), job("e", "d"))
    claimed = await store.claim()
    store.clock.advance(10)
    assert await store.ack((claimed["a"], Killed("boom")), (claimed["d"], Cancelled("stop"))) == []
    a = await store.get("a")
    for task_id in ("b", "c"):
        task = await store.get(task_id)
        assert (task.status, task.last_error, task.done_at) == (
            Status.KILLED,
            "dependency a ended Killed: boom",
            a.done_at,
        )
    e = await store.get("e")
    assert (e.status, e.last_error) == (
        Status.KILLED,
        "dependency d ended Cancelled: cancelled: stop",
    )
    # Stored after its dependency failed: killed at once, with the same reason.
    await store.send(job("late", "b"))
    late = await store.get("late")
    assert (late.status, late.last_error) == (Status.KILLED, "dependency a ended Killed: boom")


async def test_example_a_dependency_done_already_counts_as_done(store: Store) -> None:
    await store.send(job("a"))
    assert await store.ack(((await store.claim())["a"], Done(b"1"))) == []
    now = store.clock()
    await store.send(job("b", "a", created_at=now, run_at=now + 3))
    b = await store.get("b")
    assert (b.status, b.run_at) == (Status.PENDING, now + 3)


async def test_example_a_done_spawns_tasks_that_its_join_waits_for(store: Store) -> None:
    await store.send(job("p"), job("j", "p"))
    parent = (await store.claim())["p"]
    spawned = (Task(id="s1", args=b"10"), Task(id="s2", args=b"20"))
    # A Done no longer ours (another claim's attempts) spawns nothing.
    assert await store.ack((parent.evolve(attempts=3), Done(b"0", spawned, "j"))) == ["p"]
    assert await store.backend.get("s1") is None
    assert await store.ack((parent, Done(b"0", spawned, "j"))) == []
    assert (await store.get("j")).status is Status.WAITING  # now for s1 and s2 too
    fan_out = await store.claim()
    assert sorted(fan_out) == ["s1", "s2"]
    assert await store.ack((fan_out["s2"], Done(b"2")), (fan_out["s1"], Done(b"1"))) == []
    assert (await store.claim())["j"].args == b"[0,1,2]"  # p's result, then spawn order


async def test_example_family_lists_a_run_and_its_steps_oldest_first(store: Store) -> None:
    now = store.clock()
    await store.send(
        job("run/b", created_at=now + 2),
        job("run", created_at=now),
        job("run/a", created_at=now + 1),
        job("runner", created_at=now),
    )
    assert [task.id for task in await store.backend.family("run")] == ["run", "run/a", "run/b"]
