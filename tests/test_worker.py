"""The worker and its handler pipeline, on the memory backend."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st

from rxqueue import (
    BuildError,
    Done,
    HandlerTimeout,
    MemoryBackend,
    Monitor,
    Status,
    Task,
    TaskContext,
    WorkerBuilder,
    WorkerError,
    events,
    layers,
    ops,
)
from rxqueue.backoff import constant

FAST = {"poll_interval": 0.002, "max_poll_interval": 0.01}


@dataclass
class Job:
    n: int


def memory() -> MemoryBackend:
    return MemoryBackend(**FAST)


async def run_idle(worker: Any) -> Any:
    async with asyncio.timeout(20):
        return await worker.run_until_idle()


# --- building -----------------------------------------------------------------------


def test_builder_names_what_is_missing_or_wrong() -> None:
    async def handle(job: Job) -> None: ...

    with pytest.raises(BuildError, match=r"no backend; add \.backend\(b\)"):
        WorkerBuilder("w").build(handle)
    with pytest.raises(BuildError, match="non-empty name"):
        WorkerBuilder("  ")
    with pytest.raises(BuildError, match="concurrency must be a whole number >= 1"):
        WorkerBuilder("w").concurrency(0)
    with pytest.raises(BuildError, match=r"prefetch must be a whole number >= 1, got 2\.5"):
        WorkerBuilder("w").prefetch(2.5)  # type: ignore[arg-type]
    with pytest.raises(BuildError, match="takes a function"):
        from rxqueue import BackendBuilder

        BackendBuilder().fetcher("not callable")  # type: ignore[arg-type]
    with pytest.raises(BuildError, match=r"cannot be called as handler\(payload\)"):
        WorkerBuilder("w").backend(memory()).build(lambda: None)
    with pytest.raises(BuildError, match="takes an rxqueue Backend"):
        WorkerBuilder("w").backend(object())  # type: ignore[arg-type]


# --- handlers and context ---------------------------------------------------------------


async def test_context_gives_task_facts_and_shared_data() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), metadata={"trace": "abc"})

    class Mailer:
        pass

    mailer = Mailer()
    seen: dict[str, Any] = {}

    async def handle(job: Job, ctx: TaskContext) -> None:
        seen.update(
            task_id=ctx.task_id,
            attempt=ctx.attempt,
            queue=ctx.queue,
            worker=ctx.worker_name,
            mailer=ctx.data(Mailer),
            metadata=dict(ctx.metadata),
        )

    worker = WorkerBuilder("mail-worker").backend(backend).data(mailer).build(handle)
    await run_idle(worker)
    assert seen == {
        "task_id": task_id,
        "attempt": 1,
        "queue": "default",
        "worker": "mail-worker",
        "mailer": mailer,
        "metadata": {"trace": "abc"},
    }


async def test_missing_data_fails_the_task_with_a_hint() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), max_attempts=1)

    async def handle(job: Job, ctx: TaskContext) -> None:
        ctx.data(int)

    await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    task = await backend.get(task_id)
    assert task is not None and task.status is Status.KILLED
    assert "add it with WorkerBuilder(...).data(obj)" in (task.last_error or "")


async def test_plain_function_runs_in_a_thread() -> None:
    backend = memory()
    await backend.push_many([Job(1), Job(2)])
    threads: set[int] = set()

    def handle(job: Job) -> int:
        threads.add(threading.get_ident())
        return job.n

    summary = await run_idle(WorkerBuilder("w").backend(backend).build(handle))
    assert summary.done == 2
    assert threading.get_ident() not in threads


@settings(max_examples=30, deadline=None)
@given(outcomes=st.lists(st.sampled_from(["ok", "raise", "type", "abort", "slow"]), max_size=30))
async def test_no_handler_failure_ever_stops_the_worker(outcomes: list[str]) -> None:
    backend = memory()
    await backend.push_many([{"n": i} for i in range(len(outcomes))], max_attempts=1)

    async def handle(job: Job) -> None:
        kind = outcomes[job.n]
        if kind == "raise":
            raise RuntimeError("boom")
        if kind == "type":
            raise TypeError("bad")
        if kind == "abort":
            from rxqueue import Abort

            raise Abort("no")
        if kind == "slow":
            await asyncio.sleep(0)

    summary = await run_idle(WorkerBuilder("w").backend(backend).concurrency(3).build(handle))
    expected_done = sum(kind in ("ok", "slow") for kind in outcomes)
    assert (summary.done, summary.killed) == (expected_done, len(outcomes) - expected_done)
    stats = await backend.stats()
    assert stats[Status.DONE] + stats[Status.KILLED] == len(outcomes)


# --- layers ---------------------------------------------------------------------------------


async def test_layers_wrap_in_the_order_added() -> None:
    backend = memory()
    await backend.push(Job(1))
    trail: list[str] = []

    def tracing(name: str) -> layers.Layer:
        async def layer(next: layers.Next, task: Task[Any], ctx: TaskContext) -> Any:
            trail.append(f"{name}>")
            outcome = await next(task, ctx)
            trail.append(f"<{name}")
            return outcome

        return layer

    async def handle(job: Job) -> None:
        trail.append("handler")

    builder = WorkerBuilder("w").backend(backend).layer(tracing("outer")).layer(tracing("inner"))
    await run_idle(builder.build(handle))
    assert trail == ["outer>", "inner>", "handler", "<inner", "<outer"]


async def test_timeout_layer_fails_the_attempt() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), max_attempts=1)

    async def handle(job: Job) -> None:
        await asyncio.Event().wait()

    worker = WorkerBuilder("w").backend(backend).layer(layers.timeout(0.01)).build(handle)
    summary = await run_idle(worker)
    assert summary.killed == 1
    task = await backend.get(task_id)
    assert task is not None and (task.last_error or "").startswith(HandlerTimeout.__name__)


async def test_timeout_layer_passes_a_handlers_own_timeout_error_through() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), max_attempts=1)

    async def handle(job: Job) -> None:
        raise TimeoutError("upstream api timed out")

    worker = WorkerBuilder("w").backend(backend).layer(layers.timeout(10)).build(handle)
    await run_idle(worker)
    task = await backend.get(task_id)
    assert (
        task is not None
        and task.last_error == "TimeoutError: upstream api timed out (attempt 1 of 1)"
    )


def test_failure_outcome_policy() -> None:
    from rxqueue import Abort, CodecError, Killed, Retry, RetryAfter

    task: Task[Any] = Task(args=None, attempts=0, max_attempts=3)
    assert layers.failure_outcome(task, ValueError("x"), now=100, backoff=constant(5)) == Retry(
        105, "ValueError: x"
    )
    assert layers.failure_outcome(task, RetryAfter(7), now=100) == Retry(
        107, "RetryAfter: retry requested after 7s"
    )
    assert isinstance(layers.failure_outcome(task, Abort("no"), now=100), Killed)
    assert isinstance(layers.failure_outcome(task, CodecError("bad"), now=100), Killed)
    last = task.evolve(attempts=2)
    assert layers.failure_outcome(last, ValueError("x"), now=100) == Killed(
        "ValueError: x (attempt 3 of 3)"
    )
    assert isinstance(
        layers.failure_outcome(task, ValueError("x"), now=100, max_attempts=1), Killed
    )


async def test_rate_limit_layer_spaces_starts() -> None:
    backend = memory()
    await backend.push_many([Job(n) for n in range(4)])
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def handle(job: Job) -> None:
        starts.append(loop.time())

    worker = WorkerBuilder("w").backend(backend).layer(layers.rate_limit(2, 0.1)).build(handle)
    await run_idle(worker)
    # Two may start at once (the burst); the next ones wait for the window.
    assert starts[3] - starts[0] >= 0.09


# --- batches, events, fetcher errors ---------------------------------------------------------


async def test_batch_handler_gets_typed_lists_and_each_task_is_acked() -> None:
    backend = memory()
    await backend.push_many([Job(n) for n in range(10)])
    batches: list[list[int]] = []

    async def handle(jobs: list[Job]) -> None:
        assert all(isinstance(job, Job) for job in jobs)
        batches.append([job.n for job in jobs])

    piped = backend.pipe(ops.batch(4, 0.01))
    summary = await run_idle(WorkerBuilder("w").backend(piped).build(handle))
    assert sorted(n for batch in batches for n in batch) == list(range(10))
    assert all(len(batch) <= 4 for batch in batches)
    assert summary.done == 10
    assert (await backend.stats())[Status.DONE] == 10


async def test_events_tell_the_story_of_a_run() -> None:
    backend = memory()
    await backend.push_many([Job(1), Job(2)], max_attempts=2)

    async def handle(job: Job, ctx: TaskContext) -> None:
        if job.n == 2:
            raise ValueError("nope")

    seen: list[Any] = []
    builder = WorkerBuilder("w").backend(backend).layer(layers.retry(backoff=constant(0)))
    worker = builder.on_event(seen.append).build(handle)
    summary = await run_idle(worker)
    kinds = Counter(type(event).__name__ for event in seen)
    assert kinds["Started"] == 1 and kinds["Stopped"] == 1
    assert kinds["Succeeded"] == 1
    assert (kinds["Failed"], kinds["Retrying"], kinds["Killed"]) == (2, 1, 1)
    assert isinstance(seen[-1], events.Stopped) and seen[-1].summary == summary
    succeeded = next(e for e in seen if isinstance(e, events.Succeeded))
    assert succeeded.finished_at >= succeeded.started_at >= succeeded.enqueued_at


async def test_events_as_an_async_iterable() -> None:
    backend = memory()
    await backend.push(Job(1))

    async def handle(job: Job) -> None: ...

    worker = WorkerBuilder("w").backend(backend).build(handle)
    collected: list[str] = []

    stream = worker.iter_events()

    async def collect() -> None:
        async for event in stream:
            collected.append(type(event).__name__)
            if isinstance(event, events.Stopped):
                return

    collector = asyncio.create_task(collect())
    await run_idle(worker)
    async with asyncio.timeout(5):
        await collector
    assert collected[0] == "Started" and collected[-1] == "Stopped" and "Succeeded" in collected


def broken_store(error: Exception) -> Any:
    """A custom backend whose fetcher fails at once with ``error``."""
    from rxqueue import BackendBuilder

    return (
        BackendBuilder()
        .database(None)
        .fetcher(lambda db, cfg, ctx: reactivex.throw(error))
        .sink(lambda db, cfg: lambda task: None)
        .build()
    )


async def test_a_failing_fetcher_stops_the_worker_with_a_hint() -> None:
    backend = broken_store(ConnectionError("db gone"))

    async def handle(job: Any) -> None: ...

    with pytest.raises(WorkerError, match=r"ConnectionError: db gone.*ops\.retry"):
        await WorkerBuilder("w").backend(backend).build(handle).run(handle_signals=False)


async def test_ops_retry_resubscribes_a_failing_fetcher() -> None:
    from rxqueue import BackendBuilder

    subscriptions = 0
    task: Task[Any] = Task(args=b'{"n": 5}')

    def fetcher(db: Any, cfg: Any, ctx: Any) -> Any:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            nonlocal subscriptions
            subscriptions += 1
            if subscriptions < 3:
                observer.on_error(ConnectionError("flaky"))
            else:
                observer.on_next(task)
                observer.on_completed()

        return reactivex.create(subscribe)

    backend = BackendBuilder().database(None).fetcher(fetcher).sink(lambda d, c: print).build()
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)

    piped = backend.pipe(ops.retry(5, backoff=constant(0.001)))
    summary = await WorkerBuilder("w").backend(piped).build(handle).run(handle_signals=False)
    assert (seen, summary.done, subscriptions) == ([5], 1, 3)


# --- stopping ---------------------------------------------------------------------------


async def stop_once_started(backend: MemoryBackend, handle: Any, started: asyncio.Event) -> Any:
    """Run a worker with a 10 ms shutdown timeout; stop it once ``started`` is set."""
    worker = WorkerBuilder("w").backend(backend).shutdown_timeout(0.01).build(handle)
    running = asyncio.create_task(worker.run(handle_signals=False))
    async with asyncio.timeout(10):
        await started.wait()
        worker.stop()
        return await running


async def test_stop_past_the_shutdown_timeout_cancels_and_requeues_the_attempt() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), max_attempts=3)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    summary = await stop_once_started(backend, handle, started)
    assert cancelled.is_set() and summary.retried == 1
    task = await backend.get(task_id)
    assert task is not None and (task.status, task.attempts) == (Status.FAILED, 1)
    assert task.last_error == "WorkerStopped: the worker stopped during the attempt"


async def test_a_worker_cannot_run_twice_at_once() -> None:
    backend = memory()

    async def handle(job: Job) -> None: ...

    worker = WorkerBuilder("w").backend(backend).build(handle)
    running = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(0)
    with pytest.raises(WorkerError, match="already running"):
        await worker.run(handle_signals=False)
    worker.stop()
    await running


async def test_monitor_runs_workers_and_reports_a_crash() -> None:
    good_backend = memory()
    await good_backend.push(Job(1))
    broken = broken_store(RuntimeError("broken store"))
    handled = asyncio.Event()

    async def handle(job: Job) -> None:
        handled.set()

    crashes: list[str] = []
    good = WorkerBuilder("good").backend(good_backend).build(handle)
    bad = WorkerBuilder("bad").backend(broken).build(handle)
    monitor = Monitor(on_crash=lambda worker, exc: crashes.append(worker.name)).register(good, bad)
    running = asyncio.create_task(monitor.run())
    async with asyncio.timeout(10):
        await handled.wait()
        monitor.stop()
        results = await running
    assert crashes == ["bad"]
    assert isinstance(results["bad"], WorkerError)
    assert results["good"].done == 1  # type: ignore[union-attr]


# --- the hot path ---------------------------------------------------------------------------


async def test_no_asyncio_task_is_created_per_job() -> None:
    backend = memory()
    await backend.push_many([Job(n) for n in range(500)])
    created = 0
    loop = asyncio.get_running_loop()

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def handle(job: Job) -> None:
        await asyncio.sleep(0)

    loop.set_task_factory(counting_factory)
    try:
        summary = await run_idle(WorkerBuilder("w").backend(backend).concurrency(8).build(handle))
    finally:
        loop.set_task_factory(None)
    assert summary.done == 500
    assert created < 50, f"{created} asyncio tasks for 500 jobs"


# --- the sink as an Observer ----------------------------------------------------------


async def test_an_observable_feeds_the_queue_through_the_sink_observer() -> None:
    backend = memory()
    sink = backend.sink()
    reactivex.from_iterable([Job(1), Job(2), Task(args={"n": 3}, priority=5)]).subscribe(sink)
    await sink.flush()
    assert sink.stored == 3 and sink.errors == []
    stats = await backend.stats()
    assert stats[Status.PENDING] == 3
    seen: list[int] = []

    async def handle(job: Job) -> None:
        seen.append(job.n)

    await run_idle(WorkerBuilder("w").backend(backend).prefetch(1).build(handle))
    assert seen == [3, 1, 2]  # the Task kept its priority


async def test_sink_observer_reports_storage_errors_and_goes_on() -> None:
    backend = memory()
    reported: list[Exception] = []
    sink = backend.sink(on_error=reported.append)
    reactivex.from_iterable([Job(1), object(), Job(2)]).subscribe(sink)
    await sink.flush()
    assert len(reported) == 1 and "cannot encode" in str(reported[0])
    assert sink.stored == 2  # the bad payload fails alone
    assert (await backend.stats())[Status.PENDING] == 2


@settings(max_examples=40, deadline=None)
@given(payloads=st.lists(st.binary(max_size=24), max_size=20))
async def test_any_payload_bytes_fail_at_most_their_own_task(payloads: list[bytes]) -> None:
    from rxqueue import BackendBuilder

    tasks = [Task(args=payload) for payload in payloads]
    outcomes: dict[str, Any] = {}

    async def ack(db: Any, cfg: Any, task: Task[Any], outcome: Any) -> None:
        outcomes[task.id] = outcome

    backend = (
        BackendBuilder()
        .database(None)
        .fetcher(lambda d, c, w: reactivex.from_iterable(tasks))
        .sink(lambda d, c: print)
        .ack(ack)
        .build()
    )

    async def handle(job: Job) -> None:
        assert isinstance(job, Job)

    summary = await WorkerBuilder("w").backend(backend).build(handle).run(handle_signals=False)
    assert set(outcomes) == {task.id for task in tasks}  # every task got one outcome
    assert summary.done + summary.killed == len(tasks)
    for task in tasks:
        from rxqueue import Done, Killed

        outcome = outcomes[task.id]
        assert isinstance(outcome, Done | Killed)
        if isinstance(outcome, Killed):
            assert outcome.error.startswith("CodecError")


async def test_an_interrupted_last_attempt_kills_the_task() -> None:
    backend = memory()
    task_id = await backend.push(Job(1), max_attempts=1)
    started = asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    summary = await stop_once_started(backend, handle, started)
    task = await backend.get(task_id)
    assert summary.killed == 1 and task is not None and task.status is Status.KILLED


# --- the end of a run: every outcome recorded, or reported --------------------------------


def _slow_acker_backend(delay: float, fail: BaseException | None = None) -> tuple[Any, list[Any]]:
    """A BackendBuilder backend whose acker awaits, as every networked store's does."""
    from rxqueue import BackendBuilder

    rows: list[Task[Any]] = []
    acks: list[Any] = []
    calls = {"n": 0}

    def fetcher(db: Any, cfg: Any, worker: Any) -> Any:
        async def fetch() -> Any:
            while db:
                yield db.pop(0)

        return fetch()

    async def sink(task: Task[Any]) -> None:
        rows.append(task)

    async def ack(db: Any, cfg: Any, task: Task[Any], outcome: Any) -> None:
        calls["n"] += 1
        await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        acks.append((task.id, outcome))

    backend = (
        BackendBuilder().database(rows).fetcher(fetcher).sink(lambda db, cfg: sink).ack(ack).build()
    )
    return backend, [acks, calls]


async def test_a_run_ends_with_a_complete_flush_even_with_a_slow_acker() -> None:
    backend, (acks, _) = _slow_acker_backend(0.05)
    await backend.push_many([{"n": n} for n in range(10)])

    async def handle(job: dict[str, int]) -> None:
        if job["n"] == 9:
            await asyncio.sleep(0.06)  # the last one finishes while a flush is in flight

    worker = WorkerBuilder("w").backend(backend).concurrency(4).build(handle)
    summary = await worker.run(handle_signals=False)  # the fetcher ends: the run ends
    done = [outcome for _, outcome in acks if isinstance(outcome, Done)]
    assert summary.done == len(done) == 10


async def test_a_cancelled_run_still_records_every_outcome() -> None:
    backend, (acks, _) = _slow_acker_backend(0.05)
    await backend.push_many([{"n": n} for n in range(5)])
    finished = asyncio.Event()
    count = 0

    async def handle(job: dict[str, int]) -> None:
        nonlocal count
        count += 1
        if count == 5:
            finished.set()
        await asyncio.sleep(0)

    worker = WorkerBuilder("w").backend(backend).build(handle)
    running = asyncio.create_task(worker.run(handle_signals=False))
    await finished.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert len([o for _, o in acks if isinstance(o, Done)]) == 5


async def test_a_permanent_ack_error_is_reported_once_and_counted_as_lost() -> None:
    from rxqueue import BackendError, BackendUnavailable

    for error, expected_calls in ((BackendError("read-only"), 1), (BackendUnavailable("busy"), 4)):
        backend, (_, calls) = _slow_acker_backend(0.0, fail=error)
        await backend.push({"n": 1})
        worker = WorkerBuilder("w").backend(backend).build(lambda job: None)
        seen: list[events.Event] = []
        worker.events.subscribe(on_next=seen.append)
        summary = await worker.run(handle_signals=False)
        errors = [event for event in seen if isinstance(event, events.AckError)]
        assert calls["n"] == expected_calls  # transient errors are retried, permanent not
        assert (summary.done, summary.lost) == (0, 1)
        assert len(errors) == 1 and type(error).__name__ in errors[0].error


async def test_one_running_attempt_can_be_cancelled_and_its_consumer_goes_on() -> None:
    backend = memory()
    slow = await backend.push({"n": 0})
    await backend.push_many([{"n": n} for n in range(1, 4)])
    started = asyncio.Event()
    seen: list[int] = []

    async def handle(job: dict[str, int], ctx: TaskContext) -> None:
        if job["n"] == 0:
            started.set()
            await asyncio.sleep(60)
        seen.append(job["n"])

    worker = WorkerBuilder("w").backend(backend).build(handle)  # concurrency 1
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(10):
        await started.wait()
        assert worker.cancel(slow, "user asked") is True
        assert worker.cancel("not-running", "x") is False
        summary = await running
    assert seen == [1, 2, 3] and (summary.done, summary.cancelled, summary.killed) == (3, 1, 0)
    task = await backend.get(slow)
    assert task is not None and (task.status, task.last_error) == (
        Status.CANCELLED,
        "cancelled: user asked",
    )
