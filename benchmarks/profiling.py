"""Where a task's microseconds go.

``python -m benchmarks.profiling [memory|sqlite] [--n N] [--repeat R] [--top K]
[--tool cprofile|pyinstrument]``

``memory`` (the default):

1. **Variations**: µs per task of the memory run (100,000 no-op tasks,
   concurrency 16) at the defaults and with one setting changed, interleaved,
   medians: what a claim size or an event listener costs.
2. **Profile** of one run at the defaults: cProfile's self time per function,
   as a share of the total and as µs per task scaled to the unprofiled run
   (cProfile slows call-heavy code most, so the scaled figures are estimates;
   the shares rank the costs), or pyinstrument's call tree (``pip install
   pyinstrument`` in the venv; it is not a project dependency).
3. **Micro-costs** of the pieces every task passes through, timed alone.

``sqlite``: the profile of the e2e run at ``.concurrency(100)`` and the
defaults (50,000 seeded tasks), event-loop thread only (the connection's thread
shows as time waiting in ``select``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import math
import operator
import pstats
import shutil
import sqlite3
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import rxqueue
from benchmarks import loop, probes
from benchmarks.common import (
    Table,
    code_version,
    fmt_rate,
    fmt_us,
    interleave,
    median,
    noop,
    payloads,
    sqlite_url,
    temp_dir,
)
from benchmarks.memory import CONCURRENCY, run_rxqueue

T = TypeVar("T")
ROOT = str(Path(__file__).resolve().parent.parent)


async def run_with(n: int, configure: Callable[[rxqueue.WorkerBuilder], Any]) -> float:
    """Seconds of ``run_until_idle`` over ``n`` no-op tasks, builder tweaked by ``configure``."""
    backend = rxqueue.connect("memory://")
    await backend.push_many(payloads(n))
    builder = rxqueue.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY)
    configure(builder)
    worker = builder.build(noop)
    start = time.perf_counter()
    summary = await worker.run_until_idle()
    elapsed = time.perf_counter() - start
    assert summary.done == n, summary
    return elapsed


def variations(n: int, repeat: int) -> Table:
    def listen(builder: rxqueue.WorkerBuilder) -> None:
        builder.on_event(lambda event: None)

    cases: dict[str, Callable[[rxqueue.WorkerBuilder], Any]] = {
        "defaults (prefetch 16)": lambda b: None,
        ".prefetch(64)": lambda b: b.prefetch(64),
        ".prefetch(256)": lambda b: b.prefetch(256),
        ".ack_batch(1024, 0.05)": lambda b: b.ack_batch(1024, 0.05),
        ".on_event(listener): events observed": listen,
    }
    runs = {
        name: (lambda configure=configure: asyncio.run(run_with(n, configure)))
        for name, configure in cases.items()
    }
    runs["one task (fixed cost of a run)"] = lambda: asyncio.run(run_with(1, lambda b: None))
    snapshot = fast_snapshot()
    if snapshot is not None:

        def patched() -> float:
            from rxqueue.backends.memory import _Row

            saved = _Row.snapshot
            _Row.snapshot = snapshot  # type: ignore[method-assign]
            try:
                return asyncio.run(run_with(n, lambda b: None))
            finally:
                _Row.snapshot = saved  # type: ignore[method-assign]

        runs["what if: _Row.snapshot were one generated function"] = patched
    seconds = interleave(runs, repeat)
    fixed = median(seconds.pop("one task (fixed cost of a run)"))
    base = median(seconds["defaults (prefetch 16)"])
    table = Table(
        f"Memory run variations: {n:,} no-op tasks, concurrency {CONCURRENCY}, median of {repeat}",
        ("worker", "µs per task", "net of fixed cost", "vs defaults", "all runs"),
    )
    for name, runs_ in seconds.items():
        value = median(runs_)
        table.add(
            name,
            fmt_us(value / n),
            fmt_us((value - fixed) / n),
            "-" if value == base else f"{(value - base) / n * 1e6:+.2f} µs",
            " / ".join(fmt_us(r / n) for r in runs_),
        )
    table.notes += [
        f"fixed cost of a run (one task): {fixed * 1e3:.1f} ms",
        "what if: rxqueue's memory backend patched in this process only (see Micro-costs)",
    ]
    return table


def fast_snapshot() -> Callable[[Any], Any] | None:
    """The memory backend's ``_Row.snapshot`` as one straight-line function, or None
    if the internals it relies on moved."""
    try:
        from rxqueue.task import FIELDS, Task
    except ImportError:
        return None
    return unrolled_snapshot(FIELDS, Task)


def where(path: str, line: int, name: str) -> str:
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(ROOT):
        path = path[len(ROOT) + 1 :]
    elif path.startswith("~") or path.startswith("<"):
        return name
    else:
        path = Path(path).name
    return f"{path}:{line}({name})"


Prepare = Callable[[], Awaitable[rxqueue.Worker]]


def memory_worker(n: int) -> Prepare:
    """A worker at the defaults (concurrency 16) over ``n`` pushed memory tasks."""

    async def prepare() -> rxqueue.Worker:
        backend = rxqueue.connect("memory://")
        await backend.push_many(payloads(n))
        return rxqueue.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY).build(noop)

    return prepare


def sqlite_worker(url: str, concurrency: int) -> Prepare:
    """A worker at the defaults with ``concurrency`` over a seeded SQLite queue."""

    async def prepare() -> rxqueue.Worker:
        backend = rxqueue.connect(url, queue=loop.QUEUE)
        await backend.open()
        return probes.build(backend, noop, concurrency=concurrency)

    return prepare


async def timed_run(prepare: Prepare, hook: Callable[[bool], None] = lambda on: None) -> float:
    """Seconds of ``run_until_idle``; ``hook(True)`` / ``hook(False)`` around it."""
    worker = await prepare()
    hook(True)
    start = time.perf_counter()
    await worker.run_until_idle()
    elapsed = time.perf_counter() - start
    hook(False)
    await worker.backend.close()
    return elapsed


def cprofile_table(prepare: Prepare, what: str, n: int, top: int, unprofiled: float) -> Table:
    profiler = cProfile.Profile()
    elapsed = asyncio.run(
        timed_run(prepare, lambda on: profiler.enable() if on else profiler.disable())
    )
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    scale = unprofiled / total
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    table = Table(
        f"cProfile of one {what} run ({n:,} tasks, event-loop thread): top {top} by self time",
        ("function", "calls / task", "self %", "self µs / task (scaled)", "cum µs / task (scaled)"),
    )
    for (path, line, name), (_, calls, tottime, cumtime, _) in rows:
        table.add(
            where(path, line, name),
            f"{calls / n:.2f}",
            f"{tottime / total:.1%}",
            f"{tottime * scale / n * 1e6:.2f}",
            f"{cumtime * scale / n * 1e6:.2f}",
        )
    table.notes.append(
        f"profiled run {elapsed:.2f} s against {unprofiled:.2f} s unprofiled: figures scaled "
        f"by {scale:.2f}; cProfile inflates Python calls more than C calls"
    )
    return table


def pyinstrument_tree(prepare: Prepare) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    asyncio.run(timed_run(prepare, lambda on: profiler.start() if on else profiler.stop()))
    return str(profiler.output_text(unicode=True, color=False))


def unrolled_snapshot(fields: tuple[str, ...], cls: type) -> Callable[[Any], Any]:
    """What a snapshot could be: one straight-line function, no loop, no tuple."""
    setters = {f"_set_{name}": getattr(cls, name).__set__ for name in fields}
    body = "".join(f"    _set_{name}(task, row.{name})\n" for name in fields)
    source = f"def snapshot(row):\n    task = _new(_cls)\n{body}    return task\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(source, namespace)
    return namespace["snapshot"]  # type: ignore[no-any-return]


def micro_costs() -> Table:
    """The pieces of a task's path timed alone (µs per call, best of 5)."""
    table = Table("Micro-costs of a task's path (best of 5)", ("piece", "µs per call"))

    def timed(label: str, call: Callable[[], Any], number: int = 200_000) -> None:
        best = min(timeit.repeat(call, number=number, repeat=5))
        table.add(label, f"{best / number * 1e6:.3f}")

    try:
        from rxqueue.backends.memory import _Row
        from rxqueue.task import FIELDS, Task, task_reader
    except ImportError as exc:  # internals moved: the profile above still stands
        table.add(f"(unavailable: {exc})", "-")
        return table
    task = Task(args={"i": 1})
    row = _Row(task, b'{"i":1}')
    read = task_reader(FIELDS)
    every_field = operator.attrgetter(*FIELDS)
    timed("memory _Row.snapshot() (claim: one Task per row)", row.snapshot)
    timed(
        "  tuple(getattr(row, f) for f in FIELDS)", lambda: tuple(getattr(row, f) for f in FIELDS)
    )
    timed("  operator.attrgetter(*FIELDS)(row)", lambda: every_field(row))
    timed(
        "  task_reader(FIELDS)(attrgetter(row)): as the claim could", lambda: read(every_field(row))
    )
    unrolled = unrolled_snapshot(FIELDS, Task)
    timed("  one generated function: a setter per field, row read directly", lambda: unrolled(row))
    timed("Task.evolve(status=...) (dataclasses.replace)", lambda: task.evolve(status="Queued"))
    timed("object.__new__(Task)", lambda: object.__new__(Task))

    loop = asyncio.new_event_loop()
    try:

        async def hops(count: int) -> None:
            for _ in range(count):
                await asyncio.sleep(0)

        number = 20_000
        start = time.perf_counter()
        loop.run_until_complete(hops(number))
        table.add(
            "asyncio.sleep(0): one event-loop round trip",
            fmt_us((time.perf_counter() - start) / number).removesuffix(" µs"),
        )
    finally:
        loop.close()
    return table


def profile_memory(args: argparse.Namespace) -> None:
    print(variations(args.n, args.repeat).render(), flush=True)
    unprofiled = median([asyncio.run(run_rxqueue(args.n)) for _ in range(3)])
    print(f"unprofiled run: {fmt_us(unprofiled / args.n)} per task\n", flush=True)
    prepare = memory_worker(args.n)
    if args.tool == "pyinstrument":
        print(pyinstrument_tree(prepare), flush=True)
    else:
        print(cprofile_table(prepare, "memory", args.n, args.top, unprofiled).render(), flush=True)
    print(micro_costs().render())


def profile_sqlite(args: argparse.Namespace) -> None:
    """The e2e run at ``.concurrency(100)``, defaults: a copy of one seeded file per run."""
    n = min(args.n, 50_000)
    with temp_dir("profile") as root:
        template, loop_template = root / "template", root / "loop"
        template.mkdir()
        loop_template.mkdir()
        asyncio.run(probes.seed(sqlite_url(template / "tasks.db"), loop.QUEUE, n))
        asyncio.run(loop.seed(loop_template / "tasks.db", payloads(n)))

        def on_copy(run: Callable[[Prepare], T]) -> T:
            with temp_dir("run") as directory:
                shutil.copytree(template, directory, dirs_exist_ok=True)
                return run(sqlite_worker(sqlite_url(directory / "tasks.db"), 100))

        try:
            print(what_if_sqlite(template, n, args.repeat).render(), flush=True)
        except (ImportError, AttributeError) as exc:  # rxqueue's internals moved
            print(f"(what-ifs unavailable: {exc})\n", flush=True)
        unprofiled = median(
            [on_copy(lambda prepare: asyncio.run(timed_run(prepare))) for _ in range(3)]
        )
        print(f"unprofiled run: {fmt_us(unprofiled / n)} per task\n", flush=True)
        if args.tool == "pyinstrument":
            print(on_copy(pyinstrument_tree), flush=True)
        else:
            table = on_copy(
                lambda prepare: cprofile_table(prepare, "SQLite", n, args.top, unprofiled)
            )
            print(table.render(), flush=True)
        try:
            for part in connection_thread(template, loop_template, n, args.repeat):
                print(part.render(), flush=True)
        except (ImportError, AttributeError) as exc:
            print(f"(connection-thread tables unavailable: {exc})", flush=True)


@dataclass(frozen=True)
class SqliteInternals:
    """The SQLite backend's private pieces these tables time; they move as it evolves."""

    module: Any  # rxqueue.backends.sqlite, whose global ``reader_name`` the claim calls
    reader_name: str
    columns: tuple[str, ...]
    claim_order: Callable[[Any], Any]
    payload: Callable[[Any], bytes]
    metadata: Callable[[Any], Any]

    @property
    def reader(self) -> Callable[[Any], Any]:
        return getattr(self.module, self.reader_name)  # type: ignore[no-any-return]


def sqlite_internals() -> SqliteInternals:
    """Found where they live now (``backends/_rows.py``) or lived (``sqlite.py``);
    AttributeError/ImportError if they moved again."""
    from rxqueue.backends import sqlite as rs

    try:
        from rxqueue.backends import _rows
    except ImportError:
        return SqliteInternals(
            rs, "_CLAIMED", rs._COLUMN_NAMES, rs._claim_order, rs._payload, rs._strict_metadata
        )
    return SqliteInternals(
        rs,
        "read_claimed",
        _rows.COLUMN_NAMES,
        _rows.claim_order,
        _rows.payload_bytes,
        _rows._strict_metadata,
    )


def what_if_sqlite(template: Path, n: int, repeat: int) -> Table:
    """The e2e run at ``.concurrency(100)`` with rxqueue changed in this process only:
    a straight-line row reader for claims, and the vacuum index dropped."""
    found = sqlite_internals()
    rs = found.module

    def case(*, reader: bool = False, drop: str | None = None) -> Callable[[], float]:
        def run() -> float:
            with temp_dir("what-if") as directory:
                shutil.copytree(template, directory, dirs_exist_ok=True)
                if drop is not None:
                    with contextlib.closing(sqlite3.connect(directory / "tasks.db")) as conn:
                        conn.execute(f"DROP INDEX {drop}")
                saved = found.reader
                if reader:
                    setattr(rs, found.reader_name, fast_reader(found))
                try:
                    prepare = sqlite_worker(sqlite_url(directory / "tasks.db"), 100)
                    return asyncio.run(timed_run(prepare))
                finally:
                    setattr(rs, found.reader_name, saved)

        return run

    seconds = interleave(
        {
            "as is": case(),
            "what if: claimed rows read by one generated function": case(reader=True),
            "what if: no tasks_finished index (vacuum's)": case(drop="tasks_finished"),
            "what if: both": case(reader=True, drop="tasks_finished"),
        },
        repeat,
    )
    base = median(seconds["as is"])
    table = Table(
        f"SQLite e2e what-ifs: {n:,} tasks, .concurrency(100), defaults, median of {repeat}",
        ("rxqueue", "tasks/s", "µs per task", "vs as is", "all runs (tasks/s)"),
    )
    for name, runs in seconds.items():
        value = median(runs)
        table.add(
            name,
            fmt_rate(n / value),
            fmt_us(value / n),
            "-" if name == "as is" else f"{(value - base) / n * 1e6:+.2f} µs",
            " / ".join(fmt_rate(n / r) for r in runs),
        )
    table.notes.append("changed in this benchmark process only; rxqueue's files are untouched")
    return table


def connection_thread(
    template: Path, loop_template: Path, n: int, repeat: int
) -> tuple[Table, Table]:
    """What the SQLite connection's thread does per task, timed synchronously with sqlite3
    (no event loop): rxqueue's claim and ack statements and row reading, beside the
    loop's, and what each index costs (dropped on a copy)."""
    from rxqueue.acks import AckBatch
    from rxqueue.task import Done

    found = sqlite_internals()
    rs = found.module

    def fresh(source: Path, directory: Path, drop: tuple[str, ...]) -> sqlite3.Connection:
        shutil.copy(source / "tasks.db", directory / "tasks.db")
        conn = sqlite3.connect(directory / "tasks.db", isolation_level=None)
        for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "temp_store = MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        for index in drop:
            conn.execute(f"DROP INDEX {index}")
        return conn

    def rx(drop: tuple[str, ...] = ()) -> Callable[[Path], dict[str, float]]:
        def run(directory: Path) -> dict[str, float]:
            conn = fresh(template, directory, drop)
            spent = dict.fromkeys(("claim statement", "rows -> Tasks", "ack (batch + SQL)"), 0.0)
            while True:
                start, now = time.perf_counter(), time.time()
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(rs._CLAIM, ("w", now, loop.QUEUE, now, loop.BATCH)).fetchall()
                conn.execute("COMMIT")
                read = time.perf_counter()
                tasks = sorted((found.reader(row) for row in rows), key=found.claim_order)
                acked = time.perf_counter()
                spent["claim statement"] += read - start
                spent["rows -> Tasks"] += acked - read
                if not rows:
                    break
                conn.execute("BEGIN IMMEDIATE")
                rs._apply_acks(conn, AckBatch.of("w", [(t, Done()) for t in tasks]), time.time())
                conn.execute("COMMIT")
                spent["ack (batch + SQL)"] += time.perf_counter() - acked
            conn.close()
            return spent

        return run

    def by_hand(directory: Path) -> dict[str, float]:
        conn = fresh(loop_template, directory, ())
        spent = {"claim statement": 0.0, "rows -> Tasks": math.nan, "ack (batch + SQL)": 0.0}
        while True:
            start, now = time.perf_counter(), time.time()
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(loop.CLAIM, ("loop", now, loop.QUEUE, now, loop.BATCH)).fetchall()
            conn.execute("COMMIT")
            acked = time.perf_counter()
            spent["claim statement"] += acked - start
            if not rows:
                break
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(loop.ACK, [(time.time(), task_id) for task_id, _ in rows])
            conn.execute("COMMIT")
            spent["ack (batch + SQL)"] += time.perf_counter() - acked
        conn.close()
        return spent

    cases = {
        "hand-written loop's statements": by_hand,
        "rxqueue's": rx(),
        "rxqueue's, without index tasks_leases": rx(("tasks_leases",)),
        "rxqueue's, without index tasks_finished": rx(("tasks_finished",)),
        "rxqueue's, without both": rx(("tasks_leases", "tasks_finished")),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, case in cases.items():
            with temp_dir("thread") as directory:
                results[name].append(case(directory))
    columns = ("claim statement", "rows -> Tasks", "ack (batch + SQL)")
    table = Table(
        f"SQLite connection thread, per task ({n:,} tasks, claims of {loop.BATCH}, "
        f"sqlite3 without an event loop), median of {repeat}",
        ("statements", *columns, "total"),
    )
    for name, runs in results.items():
        cells = [median([run[c] for run in runs]) / n for c in columns]
        total = median([math.fsum(v for v in run.values() if v == v) for run in runs]) / n
        table.add(name, *(fmt_us(c) for c in cells), fmt_us(total))
    table.notes += [
        "rxqueue's claim runs in the connection thread together with reading its rows "
        "into Tasks (task_reader), holding the GIL; the e2e run's event-loop thread "
        "mostly waits for this thread (select.epoll in the profile above)",
        "index costs: each claim adds a tasks_leases entry and each ack removes it and "
        "adds a tasks_finished entry",
    ]
    reader = Table("Reading one claimed row into a Task (best of 5)", ("reader", "µs per row"))
    row = (
        "0190a1b2-0000-7000-8000-000000000000", loop.QUEUE, b'{"i":1}', "Queued", 0, 3, 0,
        time.time(), time.time(), "w", time.time(), None, None, None, None,
    )  # fmt: skip
    number = 200_000
    for label, read in (
        (f"rxqueue's {found.reader_name} (task_reader with converters)", found.reader),
        ("one generated function: Status by dict, metadata parsed only if set", fast_reader(found)),
    ):
        best = min(timeit.repeat(lambda read=read: read(row), number=number, repeat=5))
        reader.add(label, f"{best / number * 1e6:.3f}")
    return table, reader


def fast_reader(found: SqliteInternals) -> Callable[[Any], Any]:
    """What the SQLite claim's row reader could be: straight-line, same result."""
    from rxqueue.task import Status, Task

    names = found.columns
    value = {
        "args": "_payload(r[{i}])",
        "status": "_status[r[{i}]]",
        "metadata": "(_metadata(r[{i}]) if r[{i}] else {{}})",
    }
    body = "".join(
        f"    _set_{name}(t, {value.get(name, 'r[{i}]').format(i=i)})\n"
        for i, name in enumerate(names)
    )
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_cls": Task,
        "_payload": found.payload,
        "_status": {status.value: status for status in Status},
        "_metadata": found.metadata,
        **{f"_set_{name}": getattr(Task, name).__set__ for name in names},
    }
    exec(f"def read(r):\n    t = _new(_cls)\n{body}    return t\n", namespace)
    return namespace["read"]  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("backend", nargs="?", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tool", choices=("cprofile", "pyinstrument"), default="cprofile")
    args = parser.parse_args(argv)
    print(f"# rxqueue {code_version()}: where a task's time goes\n", flush=True)
    if args.backend == "sqlite":
        profile_sqlite(args)
    else:
        profile_memory(args)


if __name__ == "__main__":
    main()
