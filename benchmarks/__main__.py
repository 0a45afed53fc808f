"""``python -m benchmarks [all|memory|sqlite|postgres] [--only ...] [--n N] [--repeat R] [--quick]``

Every figure is printed beside its baseline, measured in the same invocation,
interleaved; the last table sums up the targets. ``python -m benchmarks.profiling
[memory|sqlite]`` shows where a task's time goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from benchmarks import memory, postgres, sqlite
from benchmarks.common import Report, code_version, summary_table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "suite", nargs="?", choices=("all", "memory", "sqlite", "postgres"), default="all"
    )
    parser.add_argument(
        "--only",
        default=",".join(sqlite.PARTS),
        help=f"sqlite parts, comma-separated: {','.join(sqlite.PARTS)} (default: all)",
    )
    parser.add_argument(
        "--n",
        type=int,
        help="tasks per end-to-end run (memory: 100,000; sqlite e2e/peers: 50,000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per measurement, the median is reported (default: memory 5, sqlite 3)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(sqlite.PARTS)
    if unknown:
        parser.error(f"unknown --only parts: {', '.join(sorted(unknown))}")
    return args


def load() -> str:
    """The load average, a hint of how much else ran on the machine meanwhile."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    print(
        f"# rxqueue benchmarks (rxqueue {code_version()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {load()})\n",
        flush=True,
    )
    report = Report()
    if args.suite in ("all", "memory"):
        n = args.n or (10_000 if args.quick else 100_000)
        report.extend(memory.main(n, args.repeat or (3 if args.quick else 5)))
    if args.suite in ("all", "sqlite"):
        sizes = sqlite.QUICK if args.quick else sqlite.Sizes()
        if args.n:
            sizes = dataclasses.replace(sizes, n=args.n)
        report.extend(sqlite.main(args.only, sizes, args.repeat or 3))
    if args.suite in ("all", "postgres"):
        pg_sizes = postgres.QUICK if args.quick else postgres.Sizes()
        if args.n:
            pg_sizes = dataclasses.replace(pg_sizes, n=args.n)
        repeat = args.repeat or (1 if args.quick else 3)
        report.extend(postgres.main(postgres.PARTS, pg_sizes, repeat))
    summary = summary_table(report.verdicts)
    summary.notes.append(f"at the end: {load()}; other processes on the machine skew figures")
    print(summary.render())


if __name__ == "__main__":
    main()
