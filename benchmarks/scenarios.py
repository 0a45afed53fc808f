"""The named scenarios ``python -m benchmarks --scenario NAME`` runs.

A scenario measures rxqueue beside its baselines and peers in one invocation
and returns a :class:`~benchmarks.common.Report` whose rows become
``benchmarks/results/<name>.{json,md,png}``. Add one by writing a function
``(Settings) -> Report`` and registering it in :data:`SCENARIOS`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.common import Report, Skipped


@dataclass(frozen=True)
class Settings:
    """What one scenario runs with: ``size`` (its main count, None where it has
    none), ``repeat`` (interleaved runs per figure) and ``quick``."""

    size: int | None
    repeat: int
    quick: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Settings], Report]
    size: tuple[int, int] | None  # (full, --quick) default of --size; None: not sized
    repeat: tuple[int, int]  # (full, --quick) default of --repeat
    packages: tuple[str, ...] = ()  # distributions whose versions the results record
    size_help: str = "tasks per run"

    def settings(self, size: int | None, repeat: int | None, quick: bool) -> Settings:
        default = None if self.size is None else self.size[quick]
        return Settings(
            size=None if self.size is None else size or default,
            repeat=repeat or self.repeat[quick],
            quick=quick,
        )


def run_memory(s: Settings) -> Report:
    from benchmarks import memory

    assert s.size is not None
    return memory.main(s.size, s.repeat)


def run_sqlite(s: Settings) -> Report:
    from benchmarks import sqlite

    assert s.size is not None
    sizes = dataclasses.replace(sqlite.QUICK if s.quick else sqlite.Sizes(), n=s.size)
    return sqlite.main(("e2e", "peers", "push"), sizes, s.repeat)


def run_postgres(s: Settings) -> Report:
    from benchmarks import postgres

    assert s.size is not None
    sizes = dataclasses.replace(postgres.QUICK if s.quick else postgres.Sizes(), n=s.size)
    return postgres.main(("e2e", "push", "big"), sizes, s.repeat)


def run_latency(s: Settings) -> Report:
    from benchmarks import postgres, sqlite

    assert s.size is not None
    report = Report()
    lite = dataclasses.replace(sqlite.QUICK if s.quick else sqlite.Sizes(), latency_count=s.size)
    report.extend(sqlite.main(("latency",), lite, s.repeat))
    pg = dataclasses.replace(postgres.QUICK if s.quick else postgres.Sizes(), latency_count=s.size)
    report.extend(postgres.main(("latency",), pg, s.repeat))
    return report


def run_idle(s: Settings) -> Report:
    from benchmarks import postgres, sqlite

    report = Report()
    report.extend(sqlite.main(("idle",), sqlite.QUICK if s.quick else sqlite.Sizes(), s.repeat))
    pg = postgres.QUICK if s.quick else postgres.Sizes()
    report.extend(postgres.main(("idle",), pg, s.repeat))
    return report


def run_memory_growth(s: Settings) -> Report:
    from benchmarks import sqlite

    assert s.size is not None
    if importlib.util.find_spec("psutil") is None:
        reason = "psutil not installed (pip install -e '.[bench]'): RSS cannot be sampled"
        return Report(skipped=[Skipped("SQLite worker RSS", reason)])
    base = sqlite.QUICK if s.quick else sqlite.Sizes()
    sizes = dataclasses.replace(base, big_run=s.size, big=s.size * PENDING_PER_PROCESSED)
    return sqlite.main(("memory",), sizes, s.repeat)


PENDING_PER_PROCESSED = 20  # memory-growth: pending tasks = 20 x --size


def run_observability(s: Settings) -> Report:
    from benchmarks import observability

    assert s.size is not None
    return observability.main(s.size, s.repeat)


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "memory",
            "Memory backend against asyncio.Queue baselines",
            run_memory,
            (100_000, 10_000),
            (5, 3),
        ),
        Scenario(
            "sqlite",
            "SQLite end to end and push, beside a hand-written aiosqlite loop, huey and "
            "persist-queue",
            run_sqlite,
            (50_000, 3_000),
            (3, 2),
            ("aiosqlite", "huey", "persist-queue"),
        ),
        Scenario(
            "postgres",
            "PostgreSQL end to end, push and claims over many pending, beside a "
            "hand-written asyncpg loop, pgqueuer and procrastinate",
            run_postgres,
            (20_000, 2_000),
            (3, 1),
            ("asyncpg", "pgqueuer", "procrastinate", "psycopg"),
        ),
        Scenario(
            "latency",
            "Push to handler start after the worker idled, SQLite and PostgreSQL",
            run_latency,
            (200, 30),
            (3, 1),
            ("aiosqlite", "asyncpg"),
            "pushes per run",
        ),
        Scenario(
            "idle",
            "CPU of an idle worker, SQLite and PostgreSQL",
            run_idle,
            None,
            (3, 1),
            ("aiosqlite", "asyncpg", "pgqueuer", "procrastinate"),
        ),
        Scenario(
            "memory-growth",
            "Worker RSS over many pending tasks (SQLite)",
            run_memory_growth,
            (50_000, 5_000),
            (3, 1),
            ("aiosqlite", "psutil"),
            f"tasks processed, with {PENDING_PER_PROCESSED} x that pending",
        ),
        Scenario(
            "observability",
            "What metrics and tracing cost: memory backend, no-op handlers",
            run_observability,
            (100_000, 10_000),
            (5, 3),
            ("prometheus-client", "opentelemetry-api", "opentelemetry-sdk"),
        ),
        Scenario(
            "workflows",
            "Workflow steps/s beside plain tasks/s: 10-step chains and a fan-out, SQLite and "
            "PostgreSQL",
            lambda s: importlib.import_module("benchmarks.workflows").run(s),
            (10_000, 2_000),
            (3, 2),
            ("aiosqlite", "asyncpg"),
            "plain tasks; chains: a tenth as many runs of 10 steps; fan-out: as many items",
        ),
    )
}
