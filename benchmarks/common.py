"""Shared plumbing: interleaved repeats, medians, result rows, markdown tables, temp dirs."""

from __future__ import annotations

import gc
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Measure = Callable[[], float]
"""One timed run; returns its figure (tasks/s, seconds, ...)."""

SQLITE_MISSING = "rxqueue sqlite backend not available yet"
ROOT = Path(__file__).resolve().parent.parent  # subprocesses run from here
PROBES = (sys.executable, "-m", "benchmarks.probes")


def code_version() -> str:
    """The rxqueue under test: commit, and whether ``rxqueue/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "rxqueue"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}{'+dirty' if changed else ''}"  # dirty: rxqueue/ has uncommitted changes


def interleave(runs: Mapping[str, Measure], repeat: int) -> dict[str, list[float]]:
    """Run every measure ``repeat`` times, round-robin, so that drift hits all alike."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            gc.collect()
            results[name].append(run())
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def fmt_us(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e6:.2f} µs"


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``min-max`` of ``values`` in ``fmt``, for the summary's spread column."""
    if not values:
        return "n/a"
    return f"{fmt(min(values))} - {fmt(max(values))}"


@dataclass
class Table:
    """A markdown table with a title and footnotes, ready to paste in README."""

    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        widths = [
            max(len(str(row[i])) for row in [self.headers, *self.rows])
            for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            return (
                "| "
                + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
                + " |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [line(self.headers), rule, *(line(row) for row in self.rows)]
        notes = [f"_{note}_" for note in self.notes]
        return "\n".join([f"### {self.title}", "", *body, "", *notes]).rstrip() + "\n"


@dataclass(frozen=True)
class Verdict:
    """One line of the final combined table: a figure and its target, if any."""

    benchmark: str
    figure: str
    target: str = ""
    met: bool | None = None
    spread: str = ""

    @property
    def status(self) -> str:
        return {True: "met", False: "NOT met", None: "-"}[self.met]


Kind = Literal["rxqueue", "baseline", "peer"]


@dataclass
class Row:
    """One figure of a scenario's results: every run's value, in ``unit``.

    ``group`` gathers rows of one unit that belong side by side (one chart panel);
    ``ratio_to`` names the row of the same group this one is compared with
    (``ratio`` = this median / that median).
    """

    name: str
    kind: Kind
    unit: str
    values: list[float]
    higher_is_better: bool = True
    group: str = ""
    ratio_to: str = ""
    note: str = ""

    @property
    def median(self) -> float:
        return median(self.values)


@dataclass(frozen=True)
class Skipped:
    """A peer, a part or a server that could not be measured, and why."""

    name: str
    reason: str


def rows_of(
    results: Mapping[str, Sequence[float]],
    kinds: Mapping[str, Kind],
    unit: str,
    *,
    group: str = "",
    ratio_to: str = "",
    higher_is_better: bool = True,
    notes: Mapping[str, str] | None = None,
) -> list[Row]:
    """One row per measured name; ``kinds`` says which is rxqueue, a baseline or a
    peer (rxqueue unless named); every row but ``ratio_to``'s is compared with it."""
    return [
        Row(
            name,
            kinds.get(name, "rxqueue"),
            unit,
            list(values),
            higher_is_better,
            group,
            ratio_to if name != ratio_to and ratio_to in results else "",
            (notes or {}).get(name, ""),
        )
        for name, values in results.items()
    ]


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.tables.extend(other.tables)
        self.verdicts.extend(other.verdicts)
        self.rows.extend(other.rows)
        self.skipped.extend(other.skipped)

    def publish(self, other: Report) -> None:
        """Print ``other``'s tables now, then add them and its verdicts to this report."""
        for table in other.tables:
            print(table.render(), flush=True)
        self.extend(other)


def rate_table(
    title: str,
    results: Mapping[str, Sequence[float]],
    reference: str,
    label: str = "rxqueue",
    *,
    per_reference: bool = False,
) -> Table:
    """Medians of throughput runs, every run, and ``reference`` / each median
    (``per_reference``: each median / ``reference``, the column "this / label")."""
    column = f"this / {label}" if per_reference else f"{label} / this"
    table = Table(title, ("run", "tasks/s (median)", "all runs", column))
    ref = median(results.get(reference, []))
    for name, runs in results.items():
        value = median(runs)
        if name == reference:
            ratio = "-"
        else:
            ratio = fmt_ratio(value / ref if per_reference else ref / value)
        table.add(name, fmt_rate(value), " / ".join(fmt_rate(r) for r in runs), ratio)
    return table


def ratio(results: Mapping[str, Sequence[float]], top: str, bottom: str) -> float:
    """``median(top) / median(bottom)``; NaN if either is missing."""
    if not results.get(top) or not results.get(bottom):
        return math.nan
    return median(results[top]) / median(results[bottom])


def round_ratios(results: Mapping[str, Sequence[float]], top: str, bottom: str) -> list[float]:
    """``top / bottom`` per interleaved round: the spread of a ratio."""
    return [a / b for a, b in zip(results.get(top, ()), results.get(bottom, ()), strict=False)]


def summary_table(verdicts: Sequence[Verdict]) -> Table:
    table = Table("Summary", ("benchmark", "figure (median)", "spread (runs)", "target", "status"))
    for v in verdicts:
        table.add(v.benchmark, v.figure, v.spread or "-", v.target or "-", v.status)
    return table


@contextmanager
def temp_dir(tag: str) -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"rxqueue-bench-{tag}-", dir="/tmp") as path:
        yield Path(path)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"  # absolute path: four slashes


def sqlite_backend_available() -> bool:
    return importlib.util.find_spec("rxqueue.backends.sqlite") is not None


def payloads(n: int, first: int = 0) -> list[dict[str, int]]:
    """The task payloads every benchmark pushes: ``{"i": i}``."""
    return [{"i": i} for i in range(first, first + n)]


async def noop(job: object) -> None:
    """The handler every throughput benchmark runs."""
