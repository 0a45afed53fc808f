"""rxqueue's side of the SQLite benchmarks: throughput, latency, idle CPU, memory.

Also run as a subprocess, for work that must come from another process:

    python -m benchmarks.probes pusher URL QUEUE COUNT INTERVAL
    python -m benchmarks.probes rss URL QUEUE TASKS      # prints one JSON line
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import psutil  # type: ignore[import-untyped]

import rxqueue
from benchmarks.common import PROBES, ROOT, noop, payloads

CONCURRENCY = 16
SEED_CHUNK = 10_000


def build(
    backend: rxqueue.Backend, handler: Any, name: str = "bench", prefetch: int | None = None
) -> rxqueue.Worker:
    """A worker with concurrency 16 and otherwise the defaults (prefetch: 16)."""
    builder = rxqueue.WorkerBuilder(name).backend(backend).concurrency(CONCURRENCY)
    if prefetch is not None:
        builder = builder.prefetch(prefetch)
    return builder.build(handler)


async def seed(url: str, queue: str, n: int) -> None:
    backend = rxqueue.connect(url, queue=queue)
    for first in range(0, n, SEED_CHUNK):
        await backend.push_many(payloads(min(SEED_CHUNK, n - first), first))
    await backend.close()


async def end_to_end(url: str, queue: str, prefetch: int | None = None) -> tuple[int, float]:
    """Drain a seeded queue with ``run_until_idle``: (tasks done, seconds)."""
    backend = rxqueue.connect(url, queue=queue)
    worker = build(backend, noop, prefetch=prefetch)
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


async def latency(url: str, seconds: float, interval: float, other_process: bool) -> list[float]:
    """Push -> handler start, in seconds, for tasks pushed here or by a subprocess."""
    queue = "latency"
    count = round(seconds / interval)
    backend = rxqueue.connect(url, queue=queue)
    samples: list[float] = []
    all_seen = asyncio.Event()

    async def handler(job: dict[str, float]) -> None:
        samples.append(time.time() - job["t"])
        if len(samples) >= count:
            all_seen.set()

    worker = build(backend, handler, "latency")
    running = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(0.5)  # the worker is up, idle, and backing off
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


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def idle_cpu(url: str, seconds: float) -> float:
    """Share of one core a worker uses on an empty queue (after a 0.5 s settle)."""
    backend = rxqueue.connect(url, queue="idle")
    worker = build(backend, noop, "idle")
    running = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.sleep(0.5)
    process = psutil.Process()
    cpu, wall = cpu_seconds(process), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = cpu_seconds(process) - cpu, time.perf_counter() - wall
    worker.stop()
    await running
    await backend.close()
    return cpu / wall


async def rss_probe(url: str, queue: str, tasks: int) -> dict[str, float]:
    """Run a worker for ``tasks`` tasks; RSS at start and its peak (bytes)."""
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
    await push_periodically(backend, count, interval)
    await backend.close()


def cli(argv: list[str]) -> None:
    match argv:
        case ["pusher", url, queue, count, interval]:
            asyncio.run(run_pusher(url, queue, int(count), float(interval)))
        case ["rss", url, queue, tasks]:
            print(json.dumps(asyncio.run(rss_probe(url, queue, int(tasks)))))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    cli(sys.argv[1:])
