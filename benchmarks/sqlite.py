"""SQLite: rxqueue's backend against a hand-written aiosqlite loop and its peers.

Parts (``--only``): e2e, push, latency, idle, memory, peers. Every database
lives in a fresh directory under /tmp; a queue is seeded once into a template
directory that each run copies, so every run starts from the same file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchmarks import loop, peers, probes
from benchmarks.common import (
    PROBES,
    ROOT,
    SQLITE_MISSING,
    Measure,
    Report,
    Table,
    Verdict,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    interleave,
    median,
    payloads,
    percentile,
    rate_table,
    ratio,
    sqlite_backend_available,
    sqlite_url,
    temp_dir,
)

PARTS = ("e2e", "push", "latency", "idle", "memory", "peers")
RXQUEUE, LOOP = "rxqueue sqlite (concurrency 16)", "aiosqlite hand-written loop"
RXQUEUE_100 = "rxqueue sqlite, .prefetch(100) (claims of 100, as the loop)"
HUEY, PERSIST_QUEUE = "huey SqliteHuey (dequeue/execute)", "persist-queue SQLiteAckQueue"
E2E_TARGET, P50_TARGET, IDLE_TARGET, MEMORY_TARGET = 0.6, 0.002, 0.01, 50 * 2**20


@dataclass(frozen=True)
class Sizes:
    n: int = 50_000  # end-to-end tasks (e2e, peers)
    push: int = 100_000
    single_pushes: int = 10_000
    pushers: int = 100
    latency_seconds: float = 5.0
    interval: float = 0.01
    idle_seconds: float = 10.0
    big: int = 1_000_000  # tasks in the memory probe's database
    big_run: int = 50_000  # tasks the memory probe's worker processes


QUICK = Sizes(5_000, 10_000, 1_000, 100, 1.0, 0.01, 3.0, 100_000, 10_000)


def db_url(directory: Path) -> str:
    return sqlite_url(directory / "tasks.db")


def on_copy(template: Path, run: Callable[[Path], tuple[int, float]], expected: int) -> Measure:
    """A measure that runs ``run`` on a fresh copy of ``template``; tasks/s."""

    def measure() -> float:
        with temp_dir("run") as directory:
            shutil.copytree(template, directory, dirs_exist_ok=True)
            done, elapsed = run(directory)
        if done != expected:
            raise RuntimeError(f"expected {expected} tasks done, got {done}")
        return done / elapsed

    return measure


def throughput(sizes: Sizes, repeat: int, parts: Collection[str], rx: bool) -> Report:
    """e2e (rxqueue vs the loop) and peers, interleaved in one table."""
    n, items = sizes.n, payloads(sizes.n)

    def seed_rxqueue(directory: Path) -> None:
        asyncio.run(probes.seed(db_url(directory), loop.QUEUE, n))

    def run_rxqueue(directory: Path) -> tuple[int, float]:
        return asyncio.run(probes.end_to_end(db_url(directory), loop.QUEUE))

    def run_rxqueue_100(directory: Path) -> tuple[int, float]:
        return asyncio.run(probes.end_to_end(db_url(directory), loop.QUEUE, loop.BATCH))

    def seed_loop(directory: Path) -> None:
        asyncio.run(loop.seed(directory / "tasks.db", items))

    def run_loop(directory: Path) -> tuple[int, float]:
        return asyncio.run(loop.run(directory / "tasks.db"))

    contenders: list[tuple[str, Callable[[Path], None], Callable[[Path], tuple[int, float]]]] = []
    if "e2e" in parts and rx:
        contenders.append((RXQUEUE, seed_rxqueue, run_rxqueue))
        contenders.append((RXQUEUE_100, seed_rxqueue, run_rxqueue_100))
    if "e2e" in parts:
        contenders.append((LOOP, seed_loop, run_loop))
    if "peers" in parts:
        contenders.append((HUEY, partial(peers.seed_huey, payloads=items), peers.run_huey))
        seed_pq = partial(peers.seed_persist_queue, payloads=items)
        contenders.append((PERSIST_QUEUE, seed_pq, peers.run_persist_queue))
    runs: dict[str, Measure] = {}
    with temp_dir("templates") as templates:
        for slot, (name, seed, run) in enumerate(contenders):
            template = templates / str(slot)
            template.mkdir()
            seed(template)
            runs[name] = on_copy(template, run, n)
        results = interleave(runs, repeat)
    table = rate_table(
        f"SQLite end to end: {n:,} no-op tasks, median of {repeat}", results, RXQUEUE
    )
    table.notes += [
        "claim + run + ack of tasks already in the database; loop: batches of 100, "
        "UPDATE ... RETURNING claim, one executemany ack",
        "rxqueue claims up to its prefetch per transaction: 16 with the worker's defaults",
        "persist-queue's get() scans past acked rows (kept until clear_acked_data()): "
        "it slows down as a run goes on",
    ]
    verdicts: list[Verdict] = []
    if not rx:
        table.notes.append(SQLITE_MISSING)
    elif "e2e" in parts:
        r = ratio(results, RXQUEUE, LOOP)
        table.notes.append(f"rxqueue / loop = {fmt_ratio(r)} (target >= {E2E_TARGET}x)")
        verdicts.append(
            Verdict(
                "sqlite e2e: rxqueue / aiosqlite loop",
                fmt_ratio(r),
                f">= {E2E_TARGET}x",
                r >= E2E_TARGET,
            )
        )
        r100 = ratio(results, RXQUEUE_100, LOOP)
        verdicts.append(Verdict("sqlite e2e: rxqueue .prefetch(100) / loop", fmt_ratio(r100)))
    for name, runs_ in results.items():
        verdicts.append(Verdict(f"sqlite e2e: {name} tasks/s", fmt_rate(median(runs_))))
    return Report([table], verdicts)


def push(sizes: Sizes, repeat: int) -> Report:
    def fresh(run: Callable[[Path], float]) -> Measure:
        def measure() -> float:
            with temp_dir("push") as directory:
                return run(directory)

        return measure

    n, pushes, pushers = sizes.push, sizes.single_pushes, sizes.pushers
    chunked = "push_many in chunks of 10,000"
    single = f"await push() x{pushes:,} from {pushers} concurrent pushers"
    results = interleave(
        {
            chunked: fresh(lambda d: asyncio.run(probes.push_many_rate(db_url(d), n, 10_000))),
            "push_many, one call": fresh(
                lambda d: asyncio.run(probes.push_many_rate(db_url(d), n, n))
            ),
            single: fresh(
                lambda d: asyncio.run(probes.concurrent_push_rate(db_url(d), pushes, pushers))
            ),
            "floor: aiosqlite executemany, chunks of 10,000": fresh(
                lambda d: asyncio.run(loop.insert_rate(d / "tasks.db", n, 10_000))
            ),
        },
        repeat,
    )
    title = f"SQLite push: {n:,} tasks, median of {repeat}"
    table = rate_table(title, results, chunked, label="push_many chunks")
    table.notes.append("floor: the loop's table, orjson payloads and ids made in the timing")
    verdicts = [
        Verdict(f"sqlite push: {name}", f"{fmt_rate(median(r))} tasks/s")
        for name, r in results.items()
    ]
    return Report([table], verdicts)


def latency(sizes: Sizes, repeat: int) -> Report:
    def measure(other: bool) -> list[float]:
        with temp_dir("latency") as directory:
            return asyncio.run(
                probes.latency(db_url(directory), sizes.latency_seconds, sizes.interval, other)
            )

    count = round(sizes.latency_seconds / sizes.interval)
    title = f"SQLite latency, push -> handler start: one task every {sizes.interval * 1000:g} ms"
    table = Table(
        f"{title}, {count} tasks, median of {repeat}",
        ("pushed from", "p50", "p99", "max", "p50 per run"),
    )
    verdicts: list[Verdict] = []
    runs: dict[str, list[list[float]]] = {"same process": [], "another process": []}
    for _ in range(repeat):
        for where in runs:
            runs[where].append(measure(where == "another process"))
    for where, samples in runs.items():
        p50 = median([percentile(s, 50) for s in samples])
        p99 = median([percentile(s, 99) for s in samples])
        worst = max(max(s, default=float("nan")) for s in samples)
        each = " / ".join(fmt_ms(percentile(s, 50)) for s in samples)
        table.add(where, fmt_ms(p50), fmt_ms(p99), fmt_ms(worst), each)
        figure = f"p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}"
        if where == "same process":
            verdicts.append(
                Verdict(
                    "sqlite latency, same process",
                    figure,
                    f"p50 < {fmt_ms(P50_TARGET)}",
                    p50 < P50_TARGET,
                )
            )
        else:
            verdicts.append(Verdict("sqlite latency, another process", figure))
    table.notes.append("p50 / p99: medians over runs of each run's percentile")
    return Report([table], verdicts)


def idle(sizes: Sizes, repeat: int) -> Report:
    def measure() -> float:
        with temp_dir("idle") as directory:
            return asyncio.run(probes.idle_cpu(db_url(directory), sizes.idle_seconds))

    shares = interleave({"idle": measure}, repeat)["idle"]
    value = median(shares)
    table = Table(
        f"SQLite idle worker: CPU over {sizes.idle_seconds:g} s, median of {repeat}",
        ("measure", "% of one core (median)", "all runs"),
    )
    table.add(
        "worker.run() on an empty queue", f"{value:.2%}", " / ".join(f"{s:.2%}" for s in shares)
    )
    table.notes.append("process CPU time (user + system) / wall time, after a 0.5 s settle")
    verdict = Verdict(
        "sqlite idle CPU", f"{value:.2%} of a core", f"< {IDLE_TARGET:.0%}", value < IDLE_TARGET
    )
    return Report([table], [verdict])


def memory(sizes: Sizes, repeat: int) -> Report:
    with temp_dir("memory") as directory:
        url = db_url(directory)
        asyncio.run(probes.seed(url, "big", sizes.big))
        runs = []
        for _ in range(repeat):
            command = [*PROBES, "rss", url, "big", str(sizes.big_run)]
            output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
            runs.append(json.loads(output.stdout.splitlines()[-1]))
    grown = [r["peak"] - r["start"] for r in runs]
    value = median(grown)
    mib = 2**20
    table = Table(
        f"SQLite memory: worker over {sizes.big:,} pending tasks, "
        f"{sizes.big_run:,} processed, median of {repeat}",
        ("measure", "MiB (median)", "all runs"),
    )
    table.add(
        "peak RSS - RSS at start", f"{value / mib:.1f}", " / ".join(f"{g / mib:.1f}" for g in grown)
    )
    table.add("RSS at start", f"{median([r['start'] for r in runs]) / mib:.1f}", "")
    rate = median([r["done"] / r["elapsed"] for r in runs])
    table.notes.append(
        f"fresh process per run; RSS (psutil) sampled every 50 ms; {fmt_rate(rate)} tasks/s"
    )
    verdict = Verdict(
        "sqlite memory growth",
        f"{value / mib:.1f} MiB",
        f"< {MEMORY_TARGET // mib} MiB",
        value < MEMORY_TARGET,
    )
    return Report([table], [verdict])


def main(only: Collection[str] = PARTS, sizes: Sizes = Sizes(), repeat: int = 3) -> Report:
    rx = sqlite_backend_available()
    report = Report()
    if not rx:
        print(f"note: {SQLITE_MISSING}; printing the baselines only\n", flush=True)
    if {"e2e", "peers"} & set(only):
        report.publish(throughput(sizes, repeat, only, rx))
    steps = {"push": push, "latency": latency, "idle": idle, "memory": memory}
    for part, step in steps.items():
        if part not in only:
            continue
        if not rx:
            report.publish(Report([Table(f"SQLite {part}", ("status",), [(SQLITE_MISSING,)])]))
            continue
        report.publish(step(sizes, repeat))
    return report
