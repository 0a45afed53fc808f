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


def table(printed: str) -> dict[str, int]:
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = int(cells[1].replace(",", ""))
    return rows


async def test_demo_retries_then_kills_what_always_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await demo.main(tmp_path / "demo.db", total=200, failure_rate=1.0, seed=3)
    rows = table(capsys.readouterr().out)
    # Every attempt fails: each task is retried twice, then killed on its third attempt.
    assert (rows["done"], rows["killed"], rows["retried (attempts)"]) == (0, 200, 400)


async def test_demo_completes_everything_without_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await demo.main(tmp_path / "demo.db", total=500, failure_rate=0.0, seed=3)
    printed = capsys.readouterr().out
    assert table(printed)["done"] == 500
    assert "push -> start p99" in printed


async def test_postgres_transactional_push_example(capsys: pytest.CaptureFixture[str]) -> None:
    import uuid

    import asyncpg

    from examples import postgres_transactional_push
    from tests.conftest import reachable_postgres

    url = await reachable_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        await postgres_transactional_push.main(url, schema)
    finally:
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    printed = capsys.readouterr().out
    assert "welcome mail to ada@example.com" in printed
    assert "bob@invalid" not in printed.replace("signup failed: bob@invalid", "")
    assert "sent: 1" in printed
