"""BackendBuilder: the apalis custom-backend page, in Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import reactivex
from reactivex.subject import Subject

from rxqueue import (
    BackendBuilder,
    BackendError,
    BuildError,
    Done,
    Task,
    UnsupportedOperation,
    WorkerBuilder,
    WorkerError,
    ops,
)


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
