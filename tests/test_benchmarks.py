"""``python -m benchmarks`` as a tool: a scenario run end to end writes its files.

The figures themselves are not checked (timed figures belong in benchmarks/);
only that a run at a tiny size produces a complete record, a table and a chart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "scenario", "title", "command", "created", "code_version", "machine", "versions",
    "params", "rows", "skipped",
}  # fmt: skip
ROW_KEYS = {
    "name", "kind", "unit", "median", "min", "max", "values", "higher_is_better",
    "ratio", "ratio_to", "note",
}  # fmt: skip


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )


@pytest.mark.slow
def test_a_scenario_writes_json_markdown_and_a_chart(tmp_path: Path) -> None:
    done = bench("--scenario", "memory", "--size", "200", "--repeat", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr

    doc = json.loads((tmp_path / "memory.json").read_text())
    assert doc.keys() >= KEYS
    assert doc["scenario"] == "memory"
    assert doc["command"] == "python -m benchmarks --scenario memory --repeat 1 --size 200"
    assert doc["params"] == {"size": 200, "repeat": 1, "quick": False}
    assert {"python", "platform", "cpus", "memory_gib", "load"} <= doc["machine"].keys()
    assert "rxqueue" in doc["versions"]
    kinds = {row["kind"] for row in doc["rows"]}
    assert kinds == {"rxqueue", "baseline"}
    for row in doc["rows"]:
        assert row.keys() >= ROW_KEYS
        assert row["median"] > 0, row
        assert len(row["values"]) == 1
        assert row["min"] <= row["median"] <= row["max"]
    compared = [row for row in doc["rows"] if row["ratio_to"]]
    assert compared and all(row["ratio"] > 0 for row in compared)

    table = (tmp_path / "memory.md").read_text()
    assert table.startswith(f"## {doc['title']}")
    assert all(f"| {row['name']}" in table for row in doc["rows"])
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "### 200 no-op tasks" in done.stdout  # the table is printed too


def test_an_unknown_scenario_is_named_with_the_choices() -> None:
    done = bench("--scenario", "nope")
    assert done.returncode == 2
    assert "unknown scenario 'nope'; choose from: memory, sqlite" in done.stderr
