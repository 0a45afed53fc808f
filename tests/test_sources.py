"""rxqueue.sources: cron and periodic Observables of tasks.

Time is virtual (a ``VirtualTimeScheduler`` whose clock is epoch seconds) except
in the subprocess test, which runs two real processes against one SQLite file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import reactivex
from reactivex import Observable
from reactivex import operators as rx_ops
from reactivex.scheduler import VirtualTimeScheduler

from rxqueue import (
    BuildError,
    InvalidOption,
    MemoryBackend,
    Status,
    Task,
    TaskContext,
    TaskExists,
    WorkerBuilder,
    events,
    sources,
)
from rxqueue.backends.sqlite import SqliteBackend

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
SETTLE = 1e-3  # advance_by(0) runs nothing: this runs what is due now, and no later tick


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Recorder:
    """Subscribes to a source; records (virtual time of emission, task) and errors."""

    def __init__(self, source: Observable[Task[Any]], scheduler: VirtualTimeScheduler) -> None:
        self.scheduler = scheduler
        self.seen: list[tuple[float, Task[Any]]] = []
        self.errors: list[Exception] = []
        self.subscription = source.subscribe(
            on_next=lambda task: self.seen.append((self.now(), task)),
            on_error=self.errors.append,
        )

    def now(self) -> float:
        return self.scheduler.to_seconds(self.scheduler.now)

    @property
    def ticks(self) -> list[float]:
        return [task.run_at for _, task in self.seen]

    @property
    def ids(self) -> list[str]:
        return [task.id for _, task in self.seen]


def run(source_factory: Any, start_at: float, seconds: float, **options: Any) -> Recorder:
    scheduler = VirtualTimeScheduler(start_at)
    recorder = Recorder(source_factory(scheduler=scheduler, **options), scheduler)
    scheduler.advance_by(seconds or SETTLE)
    return recorder


# --- every ------------------------------------------------------------------------------


def test_every_ticks_at_whole_multiples_of_the_period_since_the_epoch() -> None:
    start = T0 + 3.7
    rec = run(lambda **kw: sources.every(5, payload={"n": 1}, name="beat", **kw), start, 16)
    assert rec.ticks == [T0 + 5, T0 + 10, T0 + 15]
    assert [at for at, _ in rec.seen] == rec.ticks  # each emitted at its tick, not before
    _, first = rec.seen[0]
    assert first.id == "beat@2024-01-01T00:00:05Z"
    assert first.args == {"n": 1} and first.status is Status.PENDING
    assert first.metadata == {"source": "beat", "tick": "2024-01-01T00:00:05Z"}
    assert all(sources.is_tick_task(task) for _, task in rec.seen)


def test_every_agrees_on_tick_ids_whenever_a_subscription_starts() -> None:
    def beats(**kw: Any) -> Observable[Task[Any]]:
        return sources.every(0.2, name="beat", **kw)

    early = run(beats, T0 + 0.05, 1.0)
    late = run(beats, T0 + 0.51, 0.54)
    assert early.ids[2:5] == late.ids  # the ticks both saw have the same ids
    assert late.ids == [
        "beat@2024-01-01T00:00:00.600000Z",
        "beat@2024-01-01T00:00:00.800000Z",
        "beat@2024-01-01T00:00:01Z",
    ]
    assert all(t == round(t / 0.2) * 0.2 for t in early.ticks)  # k * period, exactly


def test_the_payload_may_be_a_callable_of_the_tick() -> None:
    rec = run(
        lambda **kw: sources.every(60, payload=lambda tick: tick.isoformat(), name="m", **kw),
        T0 + 1,
        120,
    )
    assert [task.args for _, task in rec.seen] == [
        "2024-01-01T00:01:00+00:00",
        "2024-01-01T00:02:00+00:00",
    ]


def test_a_payload_callable_that_raises_ends_the_source_with_the_error() -> None:
    calls = []

    def payload(tick: datetime) -> int:
        calls.append(tick)
        if len(calls) == 2:
            raise RuntimeError("no payload today")
        return len(calls)

    rec = run(lambda **kw: sources.every(10, payload=payload, name="p", **kw), T0 + 1, 100)
    assert [task.args for _, task in rec.seen] == [1]
    assert [str(error) for error in rec.errors] == ["no payload today"]
    assert len(calls) == 2  # no tick after the error


def test_disposing_the_subscription_stops_the_ticks() -> None:
    scheduler = VirtualTimeScheduler(T0)
    rec = Recorder(sources.every(10, name="d", scheduler=scheduler), scheduler)
    scheduler.advance_by(25)
    rec.subscription.dispose()
    scheduler.advance_by(100)
    assert rec.ticks == [T0, T0 + 10, T0 + 20]


def test_a_timer_that_fires_early_waits_again_and_never_emits_before_the_tick() -> None:
    class EarlyTimers(VirtualTimeScheduler):
        def schedule_relative(self, duetime: Any, action: Any, state: Any = None) -> Any:
            return super().schedule_relative(self.to_seconds(duetime) * 0.5, action, state)

    scheduler = EarlyTimers(T0 + 1)
    rec = Recorder(sources.every(10, name="e", scheduler=scheduler), scheduler)
    scheduler.advance_by(25)
    assert rec.ticks == [T0 + 10, T0 + 20]
    assert all(
        at >= tick - 1e-6 for at, tick in zip([a for a, _ in rec.seen], rec.ticks, strict=True)
    )


# --- cron -------------------------------------------------------------------------------


def test_cron_with_five_fields_ticks_where_the_expression_matches() -> None:
    rec = run(lambda **kw: sources.cron("*/5 * * * *", name="digest", **kw), T0 + 61, 16 * 60)
    assert rec.ticks == [T0 + 300, T0 + 600, T0 + 900]
    assert [at for at, _ in rec.seen] == rec.ticks
    assert rec.ids[0] == "digest@2024-01-01T00:05:00Z"


def test_cron_with_six_fields_takes_seconds_last() -> None:
    rec = run(lambda **kw: sources.cron("* * * * * */15", name="s", **kw), T0 + 1, 60)
    assert rec.ticks == [T0 + 15, T0 + 30, T0 + 45, T0 + 60]


def test_cron_keywords_work() -> None:
    rec = run(lambda **kw: sources.cron("@hourly", name="h", **kw), T0 + 1, 2 * 3600)
    assert rec.ticks == [T0 + 3600, T0 + 7200]


def test_cron_reads_the_expression_in_its_time_zone_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")

    def nine_am(**kw: Any) -> Observable[Task[Any]]:
        return sources.cron(
            "0 9 * * *", payload=lambda tick: tick, name="b", tz="Europe/Berlin", **kw
        )

    rec = run(nine_am, utc("2024-03-30T00:00:00"), 2 * 86400)
    # 09:00 in Berlin is 08:00 UTC before the change (CET) and 07:00 UTC after (CEST).
    assert rec.ticks == [utc("2024-03-30T08:00:00"), utc("2024-03-31T07:00:00")]
    assert rec.ids == ["b@2024-03-30T08:00:00Z", "b@2024-03-31T07:00:00Z"]  # ids are UTC
    local = [task.args for _, task in rec.seen]
    assert [(t.hour, t.utcoffset()) for t in local] == [
        (9, timedelta(hours=1)),
        (9, timedelta(hours=2)),
    ]
    assert all(t.tzinfo == berlin for t in local)
    utc_rec = run(
        lambda **kw: sources.cron("0 9 * * *", name="u", **kw), utc("2024-03-30T00:00:00"), 86400
    )
    assert utc_rec.ticks == [utc("2024-03-30T09:00:00")]  # the default tz is UTC


# --- catch-up: ticks in [start, now) when the source is subscribed ------------------------

NOW = T0 + 35.5  # subscribed here; start=T0 + 1 means ticks T0+10, +20, +30 were missed


@pytest.mark.parametrize(
    ("catch_up", "missed"),
    [
        ("latest", [T0 + 30]),
        ("none", []),
        ("all", [T0 + 10, T0 + 20, T0 + 30]),
    ],
)
def test_catch_up_decides_which_missed_ticks_are_enqueued(
    catch_up: str, missed: list[float]
) -> None:
    rec = run(
        lambda **kw: sources.every(10, name="c", start=T0 + 1, catch_up=catch_up, **kw), NOW, 20
    )
    assert rec.ticks == [*missed, T0 + 40, T0 + 50]
    assert [at for at, _ in rec.seen][: len(missed)] == [NOW] * len(missed)  # at once


@pytest.mark.parametrize(("catch_up", "count"), [("latest", 1), ("none", 0), ("all", 3)])
def test_catch_up_works_for_cron_and_a_datetime_start(catch_up: str, count: int) -> None:
    start = datetime.fromtimestamp(T0 + 60, UTC) - timedelta(minutes=15)
    rec = run(
        lambda **kw: sources.cron("*/5 * * * *", name="c", start=start, catch_up=catch_up, **kw),
        T0 + 60,
        0,
    )
    assert rec.ticks == [T0 - 600, T0 - 300, T0][3 - count :]


def test_by_default_nothing_is_missed_and_the_default_rule_is_latest() -> None:
    rec = run(lambda **kw: sources.every(10, name="d", **kw), NOW, 0)
    assert rec.ticks == []  # start defaults to now: nothing before it was missed
    rec = run(lambda **kw: sources.every(10, name="d", start=T0, **kw), NOW, 0)
    assert rec.ticks == [T0 + 30]


def test_a_start_in_the_future_delays_the_first_tick() -> None:
    rec = run(lambda **kw: sources.every(10, name="f", start=T0 + 100, **kw), T0, 125)
    assert rec.ticks == [T0 + 100, T0 + 110, T0 + 120]


@pytest.mark.parametrize(
    ("catch_up", "ticks"),
    [
        ("latest", [T0 + 10, T0 + 60, T0 + 70]),
        ("none", [T0 + 10, T0 + 60, T0 + 70]),
        ("all", [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50, T0 + 60, T0 + 70]),
    ],
)
def test_a_source_that_falls_behind_coalesces_overdue_ticks_unless_all(
    catch_up: str, ticks: list[float]
) -> None:
    scheduler = VirtualTimeScheduler(T0 + 1)
    rec = Recorder(sources.every(10, name="b", catch_up=catch_up, scheduler=scheduler), scheduler)
    scheduler.advance_by(10)  # the tick at T0+10
    scheduler.sleep(55)  # the loop is blocked (or the machine asleep) until T0+66
    scheduler.advance_by(5)
    assert rec.ticks == ticks


def test_without_a_scheduler_or_a_running_loop_subscribing_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match=r"sources\.every\(\) needs a scheduler"):
        sources.every(1, name="x").subscribe()


# --- bad arguments fail at construction -------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sources.cron("61 * * * *", name="x"), "bad cron expression"),
        (lambda: sources.cron("not a cron", name="x"), "has 3 fields"),
        (lambda: sources.cron("* * * * * * *", name="x"), "has 7 fields"),
        (lambda: sources.cron("0 0 31 2 *", name="x"), "bad cron expression"),
        (lambda: sources.cron("", name="x"), "needs a cron expression"),
        (lambda: sources.cron("* * * * *", name="x", tz="Mars/Olympus_Mons"), "unknown time zone"),
        (lambda: sources.cron("* * * * *", name="x", tz=""), "tz= must be"),
        (lambda: sources.every(0, name="x"), "finite period"),
        (lambda: sources.every(-1, name="x"), "finite period"),
        (lambda: sources.every(math.nan, name="x"), "finite period"),
        (lambda: sources.every(math.inf, name="x"), "finite period"),
        (lambda: sources.every(0.0001, name="x"), "finite period >= 0.001"),
        (lambda: sources.every("5", name="x"), "needs seconds as a number"),  # type: ignore[arg-type]
        (lambda: sources.every(True, name="x"), "needs seconds as a number"),
        (lambda: sources.every(5, name=""), "non-empty name"),
        (lambda: sources.every(5, name="   "), "non-empty name"),
        (lambda: sources.cron("* * * * *", name=None), "non-empty name"),  # type: ignore[arg-type]
        (lambda: sources.every(5, name="x" * 201), "longer than 200"),
        (lambda: sources.every(5, name="x", catch_up="some"), "catch_up= must be one of"),  # type: ignore[arg-type]
        (lambda: sources.every(5, name="x", start="yesterday"), "start= must be"),  # type: ignore[arg-type]
        (lambda: sources.every(5, name="x", start=math.nan), "start= must be finite"),
        (lambda: sources.every(5, name="x", max_attempts=0), "max_attempts"),
        (lambda: sources.every(5, name="x", priority=1.5), "priority"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_invalid_option_at_construction(make: Any, message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        make()


def test_worker_builder_cron_takes_only_an_observable() -> None:
    with pytest.raises(BuildError, match=r"cron\(\) takes an Observable"):
        WorkerBuilder("w").cron("*/5 * * * *")  # type: ignore[arg-type]


# --- one task per tick across "processes" -------------------------------------------------


async def test_two_sources_on_one_sqlite_file_store_one_task_per_tick(tmp_path: Path) -> None:
    db = tmp_path / "ticks.db"
    async with SqliteBackend(db) as first, SqliteBackend(db) as second:
        sinks = [first.sink(), second.sink()]
        schedulers = [VirtualTimeScheduler(T0 + 95), VirtualTimeScheduler(T0 + 95)]
        for sink, scheduler in zip(sinks, schedulers, strict=True):  # two "processes"
            sources.every(
                10, payload="beat", name="beat", start=T0, catch_up="all", scheduler=scheduler
            ).subscribe(sink)
        schedulers[0].advance_by(SETTLE)  # the first catches up (10 ticks, one batch) ...
        await sinks[0].flush()
        schedulers[1].advance_by(SETTLE)  # ... then the second: every one is a duplicate
        await sinks[1].flush()
        for step in range(3):  # live ticks: both push each one
            for sink, scheduler in zip(sinks, schedulers, strict=True):
                scheduler.advance_by(10 if step else 5 - SETTLE)
                await sink.flush()
        stored = await first.list(limit=1000)
    expected = [T0 + 10 * n for n in range(13)]
    assert sorted(task.run_at for task in stored) == expected
    assert sorted(task.id for task in stored) == [sources.tick_task_id("beat", t) for t in expected]
    assert [sink.errors for sink in sinks] == [[], []]  # duplicates are not errors
    assert [sink.stored for sink in sinks] == [13, 0]
    assert [sink.existing for sink in sinks] == [0, 13]


async def test_interleaved_batches_with_duplicates_store_each_tick_once(tmp_path: Path) -> None:
    db = tmp_path / "ticks.db"
    async with SqliteBackend(db) as first, SqliteBackend(db) as second:
        a, b = first.sink(), second.sink()
        scheduler = VirtualTimeScheduler(T0 + 5.5)
        source = sources.every(1, name="x", start=T0, catch_up="all", scheduler=scheduler)
        source.subscribe(a)
        scheduler.advance_by(SETTLE)
        half = VirtualTimeScheduler(T0 + 2.5)  # b saw only the first three ticks so far
        sources.every(1, name="x", start=T0, catch_up="all", scheduler=half).subscribe(b)
        half.advance_by(SETTLE)
        await b.flush()
        await a.flush()  # a's batch of six holds b's three: split, three stored, three existing
        stats = await first.stats()
    assert stats[Status.PENDING] == 6
    assert (a.stored + b.stored, a.existing + b.existing) == (6, 3)
    assert a.errors == b.errors == []


async def test_a_taken_id_of_an_ordinary_task_is_still_an_error_and_fails_alone() -> None:
    backend = MemoryBackend()
    await backend.send(Task(id="taken", args=1))
    reported: list[Exception] = []
    sink = backend.sink(on_error=reported.append)
    imposter = Task(
        id="beat@2024-01-01T00:00:00Z",
        args=0,
        metadata={"source": "other", "tick": "2024-01-01T00:00:00Z"},
    )
    await backend.send(imposter)
    reactivex.from_iterable(
        [Task(id="fresh", args=2), Task(id="taken", args=3), imposter.evolve(args=9)]
    ).subscribe(sink)
    await sink.flush()
    assert [type(error) for error in reported] == [TaskExists, TaskExists]
    assert (sink.stored, sink.existing) == (1, 0)  # "fresh" is stored despite the others
    assert not sources.is_tick_task(imposter)  # its id is not the one its metadata gives


@pytest.mark.slow
def test_two_processes_running_one_source_store_exactly_one_task_per_tick(tmp_path: Path) -> None:
    db = tmp_path / "ticks.db"
    sqlite3.connect(db).close()
    root = Path(__file__).resolve().parents[1]
    script = Path(__file__).with_name("sources_proc.py")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(db), "0.2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        begin = time.time()
        window = f"{begin} {begin + 1.5}\n"
        for proc in procs:  # both start together: every tick of the window is pushed twice
            assert proc.stdin is not None
            proc.stdin.write(window)
            proc.stdin.flush()
        reports = [json.loads(proc.communicate(timeout=30)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0]
    with sqlite3.connect(db) as conn:
        rows = sorted(conn.execute("SELECT id, run_at FROM tasks"), key=lambda row: row[1])
    ids = [task_id for task_id, _ in rows]
    run_ats = [run_at for _, run_at in rows]
    assert len(ids) == len(set(ids)) >= 6  # one task per tick, ~1.5 s of 0.2 s ticks
    steps = {round((b - a) / 0.2) for a, b in itertools.pairwise(run_ats)}
    assert steps == {1}  # consecutive ticks, none missing
    assert all(t == round(t / 0.2) * 0.2 for t in run_ats)  # whole multiples of the period
    assert [report["errors"] for report in reports] == [[], []]
    assert set().union(*(report["emitted"] for report in reports)) == set(ids)
    for report in reports:  # every tick a process emitted was stored by it or found stored
        assert report["stored"] + report["existing"] == len(report["emitted"])
    assert sum(report["stored"] for report in reports) == len(ids)
    assert sum(report["existing"] for report in reports) > 0  # the windows overlapped


# --- beside a worker -----------------------------------------------------------------------


def started_event(worker_events: list[Any]) -> tuple[asyncio.Event, Any]:
    """An Event set when the worker says Started (its sources are subscribed right after,
    before the run first yields), and the listener that sets it."""
    started = asyncio.Event()

    def listen(event: Any) -> None:
        worker_events.append(event)
        if isinstance(event, events.Started):
            started.set()

    return started, listen


async def test_worker_builder_cron_runs_the_source_beside_the_worker_and_stops_it() -> None:
    backend = MemoryBackend()
    scheduler = VirtualTimeScheduler(T0 + 1)  # explicit: it wins over the worker's own
    emitted: list[str] = []
    handled: list[str] = []
    two_handled = asyncio.Event()
    started, listen = started_event([])

    async def handle(job: dict[str, Any], ctx: TaskContext) -> None:
        handled.append(ctx.task_id)
        if len(handled) == 2:
            two_handled.set()

    source = sources.every(10, payload={"kind": "beat"}, name="beat", scheduler=scheduler)
    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .cron(source.pipe(rx_ops.do_action(lambda task: emitted.append(task.id))))
        .on_event(listen)
        .build(handle)
    )
    running = asyncio.ensure_future(worker.run(handle_signals=False))
    await started.wait()
    scheduler.advance_by(20)  # two ticks go to the sink, then to the handler
    await asyncio.wait_for(two_handled.wait(), 10)
    worker.stop()
    summary = await running
    assert summary.done == 2
    assert handled == emitted == ["beat@2024-01-01T00:00:10Z", "beat@2024-01-01T00:00:20Z"]
    scheduler.advance_by(100)  # the run ended and disposed its subscription: no more ticks
    assert len(emitted) == 2
    assert (await backend.stats())[Status.PENDING] == 0


async def test_a_failing_source_is_reported_as_an_event_and_the_worker_goes_on() -> None:
    backend = MemoryBackend()
    scheduler = VirtualTimeScheduler(T0 + 1)
    seen: list[Any] = []
    started, listen = started_event(seen)

    def broken(tick: datetime) -> Any:
        raise ValueError("cannot build the payload")

    async def handle(job: Any) -> None:
        pass

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .cron(sources.every(10, payload=broken, name="broken", scheduler=scheduler))
        .on_event(listen)
        .build(handle)
    )
    running = asyncio.ensure_future(worker.run(handle_signals=False))
    await started.wait()
    scheduler.advance_by(10)
    assert worker.is_running
    worker.stop()
    await running
    errors = [event for event in seen if isinstance(event, events.SourceError)]
    assert [event.error for event in errors] == ["ValueError: cannot build the payload"]
