"""``python -m benchmarks [--scenario NAME ...] [--quick] [--repeat R] [--size N] [--out DIR]``

Runs named scenarios (all of them unless named), each measuring rxqueue beside
its baselines and peers in the same invocation, interleaved, medians over
repeats. Per scenario it prints the table and writes ``<out>/<scenario>.json``
(machine, versions, every figure), ``.md`` (the table) and ``.png`` (a chart).
A peer that is not installed or a server that is not reachable is skipped with
a note. ``python -m benchmarks.profiling [memory|sqlite]`` shows where a task's
time goes.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import ROOT, Report, Verdict, code_version, summary_table
from benchmarks.results import document, load, summary, write
from benchmarks.scenarios import SCENARIOS, Scenario

RESULTS = ROOT / "benchmarks" / "results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join(SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.title}" for s in SCENARIOS.values()),
    )
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="NAME",
        help=f"scenarios, as --scenario (also 'all'; the old suite names): {names}",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a scenario to run, repeatable (default: all): {names}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats: all in about a minute"
    )
    parser.add_argument(
        "--repeat",
        type=positive,
        help="runs per figure, the median reported (default: per scenario)",
    )
    parser.add_argument(
        "--size",
        "--n",
        type=positive,
        help="the scenario's main count: tasks per end-to-end run (latency: pushes per run; "
        "memory-growth: tasks processed); default per scenario",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    chosen = [*args.suites, *args.scenario]
    unknown = [name for name in chosen if name != "all" and name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(map(repr, unknown))}; choose from: {names}")
    if not chosen or "all" in chosen:
        chosen = list(SCENARIOS)
    args.chosen = list(dict.fromkeys(chosen))
    return args


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def command(scenario: Scenario, args: argparse.Namespace) -> str:
    """The command that remakes this scenario's results."""
    words = ["--scenario", scenario.name]
    if args.quick:
        words.append("--quick")
    if args.repeat:
        words += ["--repeat", str(args.repeat)]
    if args.size and scenario.size is not None:
        words += ["--size", str(args.size)]
    return "python -m benchmarks " + shlex.join(words)


def run(scenario: Scenario, args: argparse.Namespace) -> Report:
    settings = scenario.settings(args.size, args.repeat, args.quick)
    sized = "" if settings.size is None else f", --size {settings.size:,} ({scenario.size_help})"
    print(f"## {scenario.name}: {scenario.title} (--repeat {settings.repeat}{sized})\n", flush=True)
    started = datetime.now(UTC)
    report = scenario.run(settings)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    params = {"size": settings.size, "repeat": settings.repeat, "quick": settings.quick}
    doc = document(
        scenario.name, scenario.title, command(scenario, args), scenario.packages, params, report
    )
    doc["created"] = started.isoformat(timespec="seconds")
    doc["elapsed_s"] = round(elapsed, 1)
    paths = write(doc, report, args.out)
    print(summary(doc))
    print(f"wrote {', '.join(str(p) for p in paths)} ({elapsed:.0f} s)\n", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM ends the run like Ctrl-C: the finally blocks drop PostgreSQL schemas.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"# rxqueue benchmarks (rxqueue {code_version()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {load()}): {', '.join(args.chosen)}\n",
        flush=True,
    )
    verdicts: list[Verdict] = []
    failed: list[str] = []
    for name in args.chosen:
        try:
            verdicts += run(SCENARIOS[name], args).verdicts
        except Exception:
            traceback.print_exc()
            print(f"scenario {name} failed (above); going on with the others\n", flush=True)
            failed.append(name)
    if verdicts:
        table = summary_table(verdicts)
        table.notes.append(f"at the end: {load()}; other processes on the machine skew figures")
        print(table.render())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
