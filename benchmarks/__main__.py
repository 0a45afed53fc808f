"""``python -m benchmarks [all|memory|sqlite] [--only ...] [--n N] [--repeat R] [--quick]``."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

from benchmarks import memory, sqlite
from benchmarks.common import Report, summary_table


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suite", nargs="?", choices=("all", "memory", "sqlite"), default="all")
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(sqlite.PARTS)
    if unknown:
        parser.error(f"unknown --only parts: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    print(f"# rxqueue benchmarks ({platform.python_version()}, {time.strftime('%Y-%m-%d')})\n")
    report = Report()
    if args.suite in ("all", "memory"):
        n = args.n or (10_000 if args.quick else 100_000)
        report.extend(memory.main(n, args.repeat))
    if args.suite in ("all", "sqlite"):
        sizes = sqlite.QUICK if args.quick else sqlite.Sizes()
        if args.n:
            sizes = dataclasses.replace(sizes, n=args.n)
        report.extend(sqlite.main(args.only, sizes, args.repeat))
    print(summary_table(report.verdicts).render())


if __name__ == "__main__":
    main()
