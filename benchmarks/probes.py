"""rxqueue's side of the SQLite benchmarks: throughput, latency, idle CPU, memory.

Also run as a subprocess, for work that must come from another process:

    python -m benchmarks.probes pusher URL QUEUE COUNT INTERVAL
    python -m benchmarks.probes rss URL QUEUE TASKS               # prints one JSON line
    python -m benchmarks.probes idle URL QUEUE SECONDS SETTLE MODE  # prints one JSON line

``idle`` MODE: ``doorbell`` (a worker at the defaults), ``poll-only`` (a worker
whose backend has no cross-process doorbell, as before it existed) or
``asyncio`` (an event loop that only sleeps: the floor).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import rxqueue
from benchmarks.common import PROBES, ROOT, noop, payloads
from rxqueue.streams import Doorbell, Wakeup

CONCURRENCY = 16
SEED_CHUNK = 10_000


def build(
    backend: rxqueue.Backend,
    handler: Any,
    name: str = "bench",
    prefetch: int | None = None,
    concurrency: int = CONCURRENCY,
) -> rxqueue.Worker:
    """``WorkerBuilder(name).concurrency(concurrency)`` (16 unless given), the defaults
    otherwise (prefetch: concurrency x batch size), or ``.prefetch(prefetch)``."""
    builder = rxqueue.WorkerBuilder(name).backend(backend).concurrency(concurrency)
    if prefetch is not None:
        builder = builder.prefetch(prefetch)
    return builder.build(handler)


def connect(url: str, queue: str, *, doorbell: bool = True) -> rxqueue.Backend:
    """``rxqueue.connect(url, queue=queue)``; ``doorbell=False``: a SQLite backend that
    hears pushes of its own process only and finds the others by polling."""
    if doorbell:
        return rxqueue.connect(url, queue=queue)
    from rxqueue.backends.sqlite import SqliteBackend

    class PollOnly(SqliteBackend):
        def _make_doorbell(self) -> Doorbell:
            return Wakeup()

    return PollOnly.from_url(url, queue=queue)


def doorbell_listening(backend: rxqueue.Backend) -> bool:
    """Is a cross-process doorbell socket of this process bound for ``backend``'s queue?
    (Call it in the worker's event loop.)"""
    directory = getattr(backend._local().doorbell, "directory", None)
    if not isinstance(directory, str):
        return False  # an in-process doorbell only
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return any(name.startswith(f"{os.getpid()}-") and name.endswith(".sock") for name in names)


async def seed(url: str, queue: str, n: int) -> None:
    backend = rxqueue.connect(url, queue=queue)
    for first in range(0, n, SEED_CHUNK):
        await backend.push_many(payloads(min(SEED_CHUNK, n - first), first))
    await backend.close()


async def prepare(url: str) -> None:
    """Create the database and its schema."""
    backend = rxqueue.connect(url)
    await backend.open()
    await backend.close()


async def end_to_end(
    url: str, queue: str, concurrency: int = CONCURRENCY, prefetch: int | None = None
) -> tuple[int, float]:
    """Drain a seeded queue with ``run_until_idle``: (tasks done, seconds, opening included)."""
    backend = rxqueue.connect(url, queue=queue)
    worker = build(backend, noop, prefetch=prefetch, concurrency=concurrency)
    start = time.perf_counter()
    summary = await worker.run_until_idle()
    elapsed = time.perf_counter() - start
    await backend.close()
    return summary.done, elapsed


async def push_many_rate(url: str, n: int, chunk: int) -> float:
    backend = rxqueue.connect(url, queue="push")
    await backend.push({"warm": True})  # opens the file and creates the schema
    items = payloads(n)
    start = time.perf_counter()
    for first in range(0, n, chunk):
        await backend.push_many(items[first : first + chunk])
    elapsed = time.perf_counter() - start
    await backend.close()
    return n / elapsed


async def concurrent_push_rate(url: str, n: int, pushers: int) -> float:
    """``n`` single ``await push()`` calls from ``pushers`` coroutines at once."""
    backend = rxqueue.connect(url, queue="push")
    await backend.push({"warm": True})

    async def pusher(count: int) -> None:
        for i in range(count):
            await backend.push({"i": i})

    start = time.perf_counter()
    await asyncio.gather(*(pusher(n // pushers) for _ in range(pushers)))
    elapsed = time.perf_counter() - start
    await backend.close()
    return (n // pushers * pushers) / elapsed


async def push_periodically(backend: rxqueue.Backend, count: int, interval: float) -> None:
    """``count`` tasks carrying their push time, one every ``interval`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        await backend.push({"t": time.time()})
        await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))


async def latency(
    url: str,
    *,
    count: int,
    interval: float,
    idle_before: float,
    other_process: bool,
    doorbell: bool = True,
) -> list[float]:
    """Push -> handler start, in seconds, of ``count`` tasks pushed one every
    ``interval`` seconds, here or by a subprocess, to a worker (at the defaults,
    concurrency 16) that was idle ``idle_before`` seconds first (its poll backed off)."""
    queue = "latency"
    backend = connect(url, queue, doorbell=doorbell)
    samples: list[float] = []
    all_seen = asyncio.Event()

    async def handler(job: dict[str, float]) -> None:
        samples.append(time.time() - job["t"])
        if len(samples) >= count:
            all_seen.set()

    worker = build(backend, handler, "latency")
    running = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(idle_before)  # the worker is up, idle, and its poll backed off
    if other_process:
        args = ["pusher", url, queue, str(count), str(interval)]
        child = await asyncio.create_subprocess_exec(*PROBES, *args, cwd=ROOT)
        await child.wait()
    else:
        await push_periodically(backend, count, interval)
    try:
        async with asyncio.timeout(10):
            await all_seen.wait()
    except TimeoutError:
        print(f"latency: only {len(samples)} of {count} tasks seen", file=sys.stderr)
    worker.stop()
    await running
    await backend.close()
    return samples


async def idle_cpu(
    url: str, queue: str, seconds: float, settle: float, mode: str
) -> dict[str, Any]:
    """CPU seconds this process spends over ``seconds`` of idleness, after ``settle``
    seconds (the poll backs off to its longest interval); see the module docstring."""
    if mode == "asyncio":
        await asyncio.sleep(settle)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        return {
            "cpu": time.process_time() - cpu,
            "wall": time.perf_counter() - wall,
            "listening": None,
        }
    backend = connect(url, queue, doorbell=mode == "doorbell")
    worker = build(backend, noop, "idle")
    running = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(settle)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    listening = doorbell_listening(backend)
    worker.stop()
    await running
    await backend.close()
    return {"cpu": cpu, "wall": wall, "listening": listening}


async def rss_probe(url: str, queue: str, tasks: int) -> dict[str, float]:
    """Run a worker for ``tasks`` tasks; RSS at start and its peak (bytes)."""
    import psutil  # type: ignore[import-untyped]  # in the bench extra only

    process = psutil.Process()
    backend = rxqueue.connect(url, queue=queue)
    done = 0

    async def handler(job: Any) -> None:
        nonlocal done
        done += 1
        if done == tasks:
            worker.stop()

    worker = build(backend, handler, f"rss-{time.time_ns()}")
    start_rss = peak = process.memory_info().rss

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    began = time.perf_counter()
    summary = await worker.run(handle_signals=False)
    elapsed = time.perf_counter() - began
    sampler.cancel()
    # Not ru_maxrss: Linux carries the parent's high-water mark across fork + exec.
    peak = max(peak, process.memory_info().rss)
    await backend.close()
    return {"start": start_rss, "peak": peak, "done": summary.done, "elapsed": elapsed}


async def run_pusher(url: str, queue: str, count: int, interval: float) -> None:
    backend = rxqueue.connect(url, queue=queue)
    await backend.open()  # as a web process's: connected before its first push
    await push_periodically(backend, count, interval)
    await backend.close()


def cli(argv: list[str]) -> None:
    match argv:
        case ["pusher", url, queue, count, interval]:
            asyncio.run(run_pusher(url, queue, int(count), float(interval)))
        case ["rss", url, queue, tasks]:
            print(json.dumps(asyncio.run(rss_probe(url, queue, int(tasks)))))
        case ["idle", url, queue, seconds, settle, ("doorbell" | "poll-only" | "asyncio") as mode]:
            figures = asyncio.run(idle_cpu(url, queue, float(seconds), float(settle), mode))
            print(json.dumps(figures))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    cli(sys.argv[1:])
