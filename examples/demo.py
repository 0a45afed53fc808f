"""The main job, on embedded SQLite: ``make demo``.

Pushes 10,000 email tasks into a SQLite file, then runs a worker over the
backend composed with ``throttle``, ``batch`` and ``retry``. The handler
fails some attempts at random so retries and a few kills show. Prints a
live progress bar and a final table.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import rxqueue
from rxqueue import Status, WorkerBuilder, events, ops
from rxqueue.backoff import exponential


@dataclass
class Email:
    to: str
    subject: str


class Progress:
    """Counts outcomes from worker events and draws a one-line bar."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = self.retried = self.killed = 0
        self.waits: list[float] = []  # push -> start, first attempts only

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Succeeded):
            self.done += 1
            if event.attempt == 1:
                self.waits.append(event.started_at - event.enqueued_at)
        elif isinstance(event, events.Retrying):
            self.retried += 1
        elif isinstance(event, events.Killed):
            self.killed += 1

    def line(self) -> str:
        finished = self.done + self.killed
        width = 40
        filled = width * finished // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        return (
            f"[{bar}] {finished:>6}/{self.total}  done {self.done}  "
            f"retried {self.retried}  killed {self.killed}"
        )


async def draw(progress: Progress, stop: asyncio.Event) -> None:
    """Redraw in place on a terminal; print a line a second elsewhere (CI logs)."""
    live = sys.stdout.isatty()
    while not stop.is_set():
        if live:
            print("\r" + progress.line(), end="", flush=True)
        try:
            async with asyncio.timeout(0.1 if live else 1.0):
                await stop.wait()
        except TimeoutError:
            if not live:
                print(progress.line(), flush=True)
    print(("\r" if live else "") + progress.line(), flush=True)


async def main(path: Path, total: int, failure_rate: float, seed: int) -> None:
    rng = random.Random(seed)
    async with rxqueue.connect(f"sqlite:///{path}", queue="emails") as backend:
        started = time.perf_counter()
        await backend.push_many(
            [Email(to=f"user{n}@example.com", subject="Welcome!") for n in range(total)],
            max_attempts=3,
        )
        print(f"pushed {total:,} tasks into {path} in {time.perf_counter() - started:.2f}s")

        async def deliver(batch: list[Email]) -> None:
            await asyncio.sleep(0.001)  # the SMTP round trip, for 50 emails at once
            if rng.random() < failure_rate:
                raise ConnectionError("SMTP server timed out")

        pipeline = backend.pipe(
            ops.throttle(20_000),  # never more than 20k claims a second
            ops.batch(50, timeout=0.02),  # 50 emails per SMTP session
            ops.retry(5),  # resubscribe if the database hiccups
        )
        progress = Progress(total)
        worker = (
            WorkerBuilder("demo-worker")
            .backend(pipeline)
            .concurrency(4)
            .layer(rxqueue.layers.retry(backoff=exponential(base=0.05, max=0.5)))
            .on_event(progress.on_event)
            .build(deliver)
        )
        stop = asyncio.Event()
        drawing = asyncio.create_task(draw(progress, stop))
        summary = await worker.run_until_idle()
        stop.set()
        await drawing
        stats = await backend.stats()

    waits = sorted(progress.waits)
    p50 = statistics.median(waits) if waits else 0.0
    p99 = waits[int(0.99 * (len(waits) - 1))] if waits else 0.0
    rows = [
        ("done", f"{stats[Status.DONE]:,}"),
        ("retried (attempts)", f"{summary.retried:,}"),
        ("killed", f"{stats[Status.KILLED]:,}"),
        ("tasks/s", f"{summary.tasks_per_second:,.0f}"),
        ("push -> start p50", f"{p50 * 1000:,.1f} ms"),
        ("push -> start p99", f"{p99 * 1000:,.1f} ms"),
        ("elapsed", f"{summary.elapsed:.2f} s"),
    ]
    print()
    print("| metric | value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db", type=Path, help="database file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.db or Path(folder) / "demo.db"
        asyncio.run(main(path, args.tasks, args.failure_rate, args.seed))


if __name__ == "__main__":
    cli()
