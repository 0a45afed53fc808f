"""The examples run: the page's custom backend and the demo (smaller)."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples import custom_sqlite_backend, demo


async def test_custom_sqlite_backend_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await custom_sqlite_backend.main(tmp_path / "tasks.db")
    printed = capsys.readouterr().out
    assert "Sending to: user2@example.com ('hi', attempt 1)" in printed
    assert "done: 3, failed: 0" in printed


async def test_demo_shows_retries_kills_and_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await demo.main(tmp_path / "demo.db", total=600, failure_rate=0.4, seed=3)
    printed = capsys.readouterr().out
    rows = dict(
        line.strip("|").split("|")[:2]
        for line in printed.splitlines()
        if line.startswith("| ") and "metric" not in line
    )
    rows = {name.strip(): value.strip() for name, value in rows.items()}
    done, killed = int(rows["done"].replace(",", "")), int(rows["killed"].replace(",", ""))
    assert done + killed == 600 and killed > 0
    assert int(rows["retried (attempts)"].replace(",", "")) > 0
    assert rows["push -> start p99"].endswith("ms")
