"""A scenario's results as files: ``<scenario>.json``, ``.md`` and ``.png``.

The JSON is the record (``notebooks/04-benchmarks.ipynb`` reads it): machine
facts, package versions, the parameters, and per row every run's value with its
median, min and max, and its ratio to the row it is compared with. The Markdown
is its table (and the run's detailed tables below); the PNG its bar chart, one
panel per group of rows, rxqueue beside its baselines and peers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import Report, Row, Table, code_version, summary_table

CORE_PACKAGES = ("rxqueue", "reactivex", "aiostream", "orjson")
COLOURS = {"rxqueue": "#d1495b", "baseline": "#8d99ae", "peer": "#2e86ab"}


def load() -> str:
    """The load average, a hint of how much else ran on the machine meanwhile."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def machine() -> dict[str, Any]:
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError):
        memory = math.nan
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "load": load(),
    }


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names); missing ones left out."""
    found: dict[str, str] = {}
    for name in dict.fromkeys([*CORE_PACKAGES, *packages]):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def finite(value: float) -> float | None:
    """JSON has no NaN: a missing figure is ``null``."""
    return None if math.isnan(value) else value


def row_record(row: Row, rows: Sequence[Row]) -> dict[str, Any]:
    reference = next(
        (r for r in rows if r.name == row.ratio_to and r.group == row.group and row.ratio_to),
        None,
    )
    ratio = row.median / reference.median if reference is not None and reference.median else None
    return {
        "name": row.name,
        "kind": row.kind,
        "group": row.group,
        "unit": row.unit,
        "median": finite(row.median),
        "min": finite(min(row.values, default=math.nan)),
        "max": finite(max(row.values, default=math.nan)),
        "values": [finite(v) for v in row.values],
        "higher_is_better": row.higher_is_better,
        "ratio": None if ratio is None else finite(ratio),
        "ratio_to": row.ratio_to if reference is not None else "",
        "note": row.note,
    }


def document(
    name: str, title: str, command: str, packages: Sequence[str], params: dict[str, Any],
    report: Report,
) -> dict[str, Any]:  # fmt: skip
    """The JSON record of one scenario's run."""
    return {
        "scenario": name,
        "title": title,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "machine": machine(),
        "versions": versions(packages),
        "params": params,
        "rows": [row_record(row, report.rows) for row in report.rows],
        "skipped": [{"name": s.name, "reason": s.reason} for s in report.skipped],
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def groups(doc: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Rows by (group, unit), in the order they were measured."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in doc["rows"]:
        by.setdefault((row["group"], row["unit"]), []).append(row)
    return by


def summary(doc: dict[str, Any]) -> str:
    """The scenario's table in Markdown: one section per group of rows."""
    m = doc["machine"]
    lines = [
        f"## {doc['title']}",
        "",
        f"`{doc['command']}`: rxqueue {doc['code_version']}, {doc['created']}, "
        f"Python {m['python']}, {m['cpus']} CPUs, {m['load']}",
        "",
    ]
    for (group, unit), rows in groups(doc).items():
        better = "higher is better" if rows[0]["higher_is_better"] else "lower is better"
        table = Table(
            f"{group} ({unit}, {better})" if group else f"{unit} ({better})",
            ("run", "kind", f"median ({unit})", "min - max", "runs", "ratio", "note"),
        )
        for row in rows:
            ratio = f"{row['ratio']:.2f}x {row['ratio_to']}" if row["ratio"] is not None else "-"
            table.add(
                row["name"],
                row["kind"],
                fmt(row["median"]),
                f"{fmt(row['min'])} - {fmt(row['max'])}",
                str(len(row["values"])),
                ratio,
                row["note"] or "-",
            )
        lines.append(table.render())
    if doc["skipped"]:
        lines += ["Skipped:", ""]
        lines += [f"- {s['name']}: {s['reason']}" for s in doc["skipped"]]
        lines.append("")
    if not doc["rows"] and not doc["skipped"]:
        lines += ["No figures.", ""]
    return "\n".join(lines).rstrip() + "\n"


def markdown(doc: dict[str, Any], report: Report) -> str:
    """The summary, then the run's detailed tables and the targets it checked."""
    details = [table.render() for table in report.tables]
    if report.verdicts:
        details.append(summary_table(report.verdicts).render())
    if not details:
        return summary(doc)
    return "\n".join([summary(doc), "## Details", "", *details]).rstrip() + "\n"


def chart(doc: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart per group: medians, min-max whiskers, the unit on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    panels = list(groups(doc).items())
    heights = [0.45 * len(rows) + 0.9 for _, rows in panels] or [1.0]
    figure, axes = plt.subplots(
        len(heights), 1, figsize=(10, sum(heights) + 0.8), height_ratios=heights, squeeze=False
    )
    for axis, ((group, unit), rows) in zip(axes[:, 0], panels, strict=False):
        rows = list(reversed(rows))  # the first measured on top
        medians = [row["median"] or 0.0 for row in rows]
        low = [max(0.0, (row["median"] or 0.0) - (row["min"] or 0.0)) for row in rows]
        high = [max(0.0, (row["max"] or 0.0) - (row["median"] or 0.0)) for row in rows]
        labels = [textwrap.fill(row["name"], 48) for row in rows]
        axis.barh(
            labels,
            medians,
            xerr=[low, high],
            color=[COLOURS[row["kind"]] for row in rows],
            error_kw={"elinewidth": 1, "capsize": 3, "ecolor": "#333333"},
        )
        for y, (value, row) in enumerate(zip(medians, rows, strict=True)):
            end = max(value, row["max"] or 0.0)  # right of the whisker
            axis.text(end, y, f"  {fmt(row['median'])}", va="center", fontsize=8)
        axis.xaxis.set_major_formatter(
            FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 100 else f"{x:g}")
        )
        better = "higher is better" if rows[0]["higher_is_better"] else "lower is better"
        axis.set_xlabel(f"{unit} ({better}; median, whiskers min-max)")
        axis.set_title(group, fontsize=10, loc="left")
        axis.tick_params(axis="y", labelsize=8)
        axis.margins(x=0.25)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no figures (see skipped)", ha="center", va="center")
        axes[0, 0].set_axis_off()
    figure.legend(
        handles=[Patch(color=colour, label=kind) for kind, colour in COLOURS.items()],
        loc="upper right",
        ncols=3,
        fontsize=8,
    )
    figure.suptitle(
        f"{doc['title']}\nrxqueue {doc['code_version']}, {doc['created'][:10]}, "
        f"{doc['machine']['cpus']} CPUs",
        fontsize=11,
        x=0.02,
        ha="left",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(doc: dict[str, Any], report: Report, out: Path) -> list[Path]:
    """``<out>/<scenario>.json``, ``.md`` and ``.png``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / doc["scenario"]
    paths = [base.with_suffix(".json"), base.with_suffix(".md"), base.with_suffix(".png")]
    paths[0].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(doc, report))
    chart(doc, paths[2])
    return paths
