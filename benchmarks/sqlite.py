"""SQLite: rxqueue's backend against a hand-written aiosqlite loop and its peers.

Parts (``--only``), each beside its baseline, measured in the same invocation:

* ``e2e``: draining seeded tasks at ``.concurrency(100)`` and ``.concurrency(16)``
  with the defaults, and ``.prefetch(100)``, against the hand-written loop;
* ``push``: push rates against a bare ``executemany``;
* ``latency``: push -> handler start after the worker idled, pushed from another
  process (socket doorbell), from the same process, and with polling only;
* ``idle``: CPU of an idle worker process, with and without the doorbell, and of
  an event loop that only sleeps;
* ``memory``: RSS of a worker over a million pending tasks;
* ``peers``: huey and persist-queue in the e2e table.

Every database lives in a fresh directory under /tmp; a queue is seeded once
into a template directory that each run copies, so every run starts from the
same file.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import shutil
import subprocess
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import loop, probes
from benchmarks.common import (
    PROBES,
    ROOT,
    SQLITE_MISSING,
    Measure,
    Report,
    Row,
    Skipped,
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
    round_ratios,
    rows_of,
    spread,
    sqlite_backend_available,
    sqlite_url,
    temp_dir,
)

PARTS = ("e2e", "push", "latency", "idle", "memory", "peers")
LOOP = "aiosqlite hand-written loop (claims of 100)"
RX_C100 = "rxqueue .concurrency(100), defaults"
RX_C16 = "rxqueue .concurrency(16), defaults"
RX_P100 = "rxqueue .concurrency(16).prefetch(100)"
HUEY, PERSIST_QUEUE = "huey SqliteHuey (dequeue/execute)", "persist-queue SQLiteAckQueue"
E2E_TARGET, MEMORY_TARGET = 0.6, 50 * 2**20
P50_TARGET, P99_TARGET, SAME_P50_TARGET = 0.005, 0.020, 0.002
IDLE_TARGET = 0.01


@dataclass(frozen=True)
class Sizes:
    n: int = 50_000  # end-to-end tasks (e2e, peers)
    push: int = 100_000
    single_pushes: int = 10_000
    pushers: int = 100
    latency_count: int = 200  # tasks pushed, one every `interval`
    interval: float = 0.02
    idle_before: float = 2.0  # the worker idles this long before the first push
    idle_seconds: float = 5.0  # idle CPU measured over this long...
    idle_settle: float = 2.0  # ...after this long (the poll has backed off to 1 s)
    big: int = 1_000_000  # tasks in the memory probe's database
    big_run: int = 50_000  # tasks the memory probe's worker processes


QUICK = Sizes(5_000, 10_000, 1_000, 100, 30, 0.02, 1.2, 1.0, 1.2, 100_000, 10_000)
PEER_MODULES = {HUEY: "huey", PERSIST_QUEUE: "persistqueue"}  # name -> module to import
INSTALL_PEERS = "not installed (pip install -e '.[bench]')"


def missing_peers() -> list[Skipped]:
    return [
        Skipped(name, INSTALL_PEERS)
        for name, module in PEER_MODULES.items()
        if importlib.util.find_spec(module) is None
    ]


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
    """e2e (rxqueue at the defaults and tuned, against the loop) and peers, interleaved."""
    n, items = sizes.n, payloads(sizes.n)

    def seed_rxqueue(directory: Path) -> None:
        asyncio.run(probes.seed(db_url(directory), loop.QUEUE, n))

    def run_rxqueue(concurrency: int, prefetch: int | None) -> Callable[[Path], tuple[int, float]]:
        def run(directory: Path) -> tuple[int, float]:
            return asyncio.run(
                probes.end_to_end(db_url(directory), loop.QUEUE, concurrency, prefetch)
            )

        return run

    def seed_loop(directory: Path) -> None:
        asyncio.run(loop.seed(directory / "tasks.db", items))

    def run_loop(directory: Path) -> tuple[int, float]:
        return asyncio.run(loop.run(directory / "tasks.db"))

    contenders: list[tuple[str, Callable[[Path], None], Callable[[Path], tuple[int, float]]]] = []
    if "e2e" in parts:
        contenders.append((LOOP, seed_loop, run_loop))
    if "e2e" in parts and rx:
        contenders.append((RX_C100, seed_rxqueue, run_rxqueue(100, None)))
        contenders.append((RX_C16, seed_rxqueue, run_rxqueue(16, None)))
        contenders.append((RX_P100, seed_rxqueue, run_rxqueue(16, loop.BATCH)))
    skipped = missing_peers() if "peers" in parts else []
    if "peers" in parts and not skipped:
        from benchmarks import peers

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
    reference = LOOP if LOOP in results else next(iter(results))
    table = rate_table(
        f"SQLite end to end: {n:,} no-op tasks, median of {repeat}",
        results,
        reference,
        label="loop",
        per_reference=True,
    )
    table.notes += [
        "claim + run + ack of tasks already in the database, opening the file included; "
        "loop: batches of 100, UPDATE ... RETURNING claim, one executemany ack",
        "rxqueue: run_until_idle (its idle detection included); "
        "defaults: prefetch = concurrency (x the pipe's batch size)",
        "persist-queue's get() scans past acked rows (kept until clear_acked_data()): "
        "it slows down as a run goes on",
        *(f"{s.name}: {s.reason}" for s in skipped),
    ]
    verdicts: list[Verdict] = []
    if not rx:
        table.notes.append(SQLITE_MISSING)
    elif "e2e" in parts:
        for name, target in ((RX_C100, E2E_TARGET), (RX_C16, None), (RX_P100, None)):
            r = ratio(results, name, LOOP)
            verdicts.append(
                Verdict(
                    f"sqlite e2e: {name} / loop",
                    fmt_ratio(r),
                    "" if target is None else f">= {target}x",
                    None if target is None else r >= target,
                    spread(round_ratios(results, name, LOOP), fmt_ratio),
                )
            )
            if target is not None:
                table.notes.append(f"{name} / loop = {fmt_ratio(r)} (target >= {target}x)")
    for name, runs_ in results.items():
        verdicts.append(
            Verdict(
                f"sqlite e2e: {name}, tasks/s",
                fmt_rate(median(runs_)),
                spread=spread(runs_, fmt_rate),
            )
        )
    rows = rows_of(
        results,
        {LOOP: "baseline", HUEY: "peer", PERSIST_QUEUE: "peer"},
        "tasks/s",
        group=f"end to end, {n:,} no-op tasks",
        ratio_to=LOOP,
        notes={RX_C100: f"target >= {E2E_TARGET}x the loop"},
    )
    return Report([table], verdicts, rows, skipped)


def push(sizes: Sizes, repeat: int) -> Report:
    def fresh(run: Callable[[Path], float]) -> Measure:
        def measure() -> float:
            with temp_dir("push") as directory:
                return run(directory)

        return measure

    n, pushes, pushers = sizes.push, sizes.single_pushes, sizes.pushers
    chunked = "push_many in chunks of 10,000"
    single = f"await push() x{pushes:,} from {pushers} concurrent pushers"
    floor = "floor: aiosqlite executemany, chunks of 10,000"
    results = interleave(
        {
            chunked: fresh(lambda d: asyncio.run(probes.push_many_rate(db_url(d), n, 10_000))),
            "push_many, one call": fresh(
                lambda d: asyncio.run(probes.push_many_rate(db_url(d), n, n))
            ),
            single: fresh(
                lambda d: asyncio.run(probes.concurrent_push_rate(db_url(d), pushes, pushers))
            ),
            floor: fresh(lambda d: asyncio.run(loop.insert_rate(d / "tasks.db", n, 10_000))),
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
    rows = rows_of(
        results, {floor: "baseline"}, "tasks/s", group=f"push, {n:,} tasks", ratio_to=floor
    )
    return Report([table], verdicts, rows)


POLL_ONLY = "another process, poll only (no doorbell)"
LATENCY_RUNS = {
    # name: (from another process, cross-process doorbell)
    "another process (defaults: socket doorbell)": (True, True),
    "same process": (False, True),
    POLL_ONLY: (True, False),
}


def latency(sizes: Sizes, repeat: int) -> Report:
    """Push -> handler start after the worker idled; rounds interleaved."""

    def measure(other_process: bool, doorbell: bool) -> list[float]:
        with temp_dir("latency") as directory:
            return asyncio.run(
                probes.latency(
                    db_url(directory),
                    count=sizes.latency_count,
                    interval=sizes.interval,
                    idle_before=sizes.idle_before,
                    other_process=other_process,
                    doorbell=doorbell,
                )
            )

    runs: dict[str, list[list[float]]] = {name: [] for name in LATENCY_RUNS}
    for _ in range(repeat):
        for name, (other_process, doorbell) in LATENCY_RUNS.items():
            runs[name].append(measure(other_process, doorbell))
    rows = latency_rows(
        "SQLite", runs, {POLL_ONLY: "baseline"}, ratio_to=POLL_ONLY, complete=sizes.latency_count
    )
    table = Table(
        f"SQLite latency, push -> handler start: worker idle {sizes.idle_before:g} s, then "
        f"{sizes.latency_count} pushes, one every {sizes.interval * 1000:g} ms; "
        f"median of {repeat}",
        ("pushed from", "p50", "p50 per run", "p99", "p99 per run", "max", "tasks seen"),
    )
    verdicts: list[Verdict] = []
    for name, samples in runs.items():
        p50s = [percentile(s, 50) for s in samples]
        p99s = [percentile(s, 99) for s in samples]
        p50, p99 = median(p50s), median(p99s)
        worst = max((max(s) for s in samples if s), default=math.nan)
        seen = " / ".join(str(len(s)) for s in samples)
        table.add(
            name,
            fmt_ms(p50),
            " / ".join(fmt_ms(v) for v in p50s),
            fmt_ms(p99),
            " / ".join(fmt_ms(v) for v in p99s),
            fmt_ms(worst),
            f"{seen} of {sizes.latency_count}",
        )
        figure = f"p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}"
        runs_spread = f"p50 {spread(p50s, fmt_ms)}; p99 {spread(p99s, fmt_ms)}"
        complete = all(len(s) == sizes.latency_count for s in samples)
        if name.endswith("(defaults: socket doorbell)"):
            target = f"p50 < {fmt_ms(P50_TARGET)}, p99 < {fmt_ms(P99_TARGET)}"
            met = complete and p50 < P50_TARGET and p99 < P99_TARGET
        elif name == "same process":
            target = f"p50 < {fmt_ms(SAME_P50_TARGET)}"
            met = complete and p50 < SAME_P50_TARGET
        else:
            target, met = "", None
        verdicts.append(Verdict(f"sqlite latency, {name}", figure, target, met, runs_spread))
    table.notes += [
        "each payload carries time.time() taken just before its push(); the handler records "
        "time.time() - that on entry. p50 / p99: medians over runs of each run's percentile",
        "the pushing subprocess opens its backend before its first push, as a web process has",
        "poll only: the worker's backend keeps the in-process doorbell only, as before the "
        "socket doorbell; it polls every 50 ms, backing off to 1 s while idle",
    ]
    return Report([table], verdicts, rows)


def latency_rows(
    store: str,
    runs: dict[str, list[list[float]]],
    kinds: dict[str, Any],
    *,
    ratio_to: str,
    complete: int,
) -> list[Row]:
    """p50 and p99 rows (milliseconds, one value per run) of each latency run."""
    rows: list[Row] = []
    for label, q in (("p50", 50), ("p99", 99)):
        per_run = {
            f"{name}, {label}": [percentile(s, q) * 1000 for s in samples]
            for name, samples in runs.items()
        }
        notes = {
            f"{name}, {label}": f"only {min(map(len, samples))} of {complete} tasks seen"
            for name, samples in runs.items()
            if any(len(s) < complete for s in samples)
        }
        rows += rows_of(
            per_run,
            {f"{name}, {label}": kind for name, kind in kinds.items()},
            "ms",
            group=f"{store} push -> handler start, {label}",
            ratio_to=f"{ratio_to}, {label}",
            higher_is_better=False,
            notes=notes,
        )
    return rows


IDLE_FLOOR = "floor: an asyncio loop that only sleeps"
IDLE_MODES = {
    "worker at the defaults (socket doorbell)": "doorbell",
    "worker, poll only (no doorbell)": "poll-only",
    IDLE_FLOOR: "asyncio",
}


def idle(sizes: Sizes, repeat: int) -> Report:
    """CPU of an idle worker in its own process; the modes of a round run side by side
    (idle processes do not compete for the two cores), rounds one after another."""

    def round_(directory: Path) -> dict[str, dict[str, Any]]:
        url = db_url(directory)
        probes_ = {
            name: subprocess.Popen(
                [*PROBES, "idle", url, f"idle-{mode}", str(sizes.idle_seconds),
                 str(sizes.idle_settle), mode],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name, mode in IDLE_MODES.items()
        }  # fmt: skip
        figures = {}
        for name, child in probes_.items():
            out, _ = child.communicate(timeout=sizes.idle_settle + sizes.idle_seconds + 60)
            if child.returncode != 0:
                raise RuntimeError(f"idle probe {name!r} failed ({child.returncode})")
            figures[name] = json.loads(out.splitlines()[-1])
        return figures

    shares: dict[str, list[float]] = {name: [] for name in IDLE_MODES}
    listening: dict[str, list[Any]] = {name: [] for name in IDLE_MODES}
    with temp_dir("idle") as directory:
        asyncio.run(probes.prepare(db_url(directory)))  # the schema, once
        for _ in range(repeat):
            for name, figure in round_(directory).items():
                shares[name].append(figure["cpu"] / figure["wall"])
                listening[name].append(figure["listening"])
    table = Table(
        f"SQLite idle worker: CPU over {sizes.idle_seconds:g} s of idleness "
        f"(after {sizes.idle_settle:g} s), own process, median of {repeat}",
        ("process", "% of one core (median)", "all runs", "doorbell socket bound"),
    )
    verdicts: list[Verdict] = []
    for name, values in shares.items():
        value = median(values)
        bound = {True: "yes", False: "no", None: "-"}
        table.add(
            name,
            f"{value:.3%}",
            " / ".join(f"{v:.3%}" for v in values),
            " / ".join(bound[b] for b in listening[name]),
        )
        if IDLE_MODES[name] == "doorbell":
            ok = value < IDLE_TARGET and all(listening[name])
            target, met = f"< {IDLE_TARGET:.0%}, socket bound", ok
        else:
            target, met = "", None
        pct = "{:.3%}".format
        verdicts.append(
            Verdict(f"sqlite idle CPU: {name}", f"{pct(value)} of a core", target, met,
                    spread(values, pct))
        )  # fmt: skip
    table.notes += [
        "time.process_time() (user + system, all threads) / wall time, inside the probe",
        "the worker: concurrency 16, a 1 s poll once backed off, a heartbeat every 10 s",
    ]
    rows = rows_of(
        {f"SQLite {name}": [v * 100 for v in values] for name, values in shares.items()},
        {f"SQLite {IDLE_FLOOR}": "baseline"},
        "% of one core",
        group="idle CPU",
        higher_is_better=False,
        notes={f"SQLite {next(iter(IDLE_MODES))}": f"target < {IDLE_TARGET:.0%}"},
    )
    return Report([table], verdicts, rows)


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
    grown_row = f"rxqueue worker: peak RSS - RSS at start ({sizes.big_run:,} processed)"
    start_row = "for scale: RSS at start (Python, rxqueue and the backend imported)"
    rows = rows_of(
        {grown_row: [g / mib for g in grown], start_row: [r["start"] / mib for r in runs]},
        {start_row: "baseline"},
        "MiB",
        group=f"SQLite worker over {sizes.big:,} pending tasks",
        higher_is_better=False,
        notes={grown_row: f"target < {MEMORY_TARGET // mib} MiB; {fmt_rate(rate)} tasks/s"},
    )
    return Report([table], [verdict], rows)


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
