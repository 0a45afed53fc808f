"""Notebooks show tasks, queue counts and run summaries as HTML tables, escaped."""

from __future__ import annotations

import pickle

from rxqueue import MemoryBackend, QueueStats, RunSummary, Status, Task, WorkerBuilder
from rxqueue._html import table

SCRIPT = "<script>alert('x')</script>"


def test_a_table_escapes_every_cell_header_and_caption() -> None:
    html = table([(SCRIPT, SCRIPT)], header=(SCRIPT, "b"), caption=SCRIPT)
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") == 4


def test_a_table_cuts_long_values() -> None:
    html = table([("payload", "x" * 1000)], limit=50)
    assert "x" * 49 + "\u2026" in html and "x" * 50 not in html


def test_a_task_shows_its_fields_with_payload_and_error_escaped() -> None:
    task = Task(
        id="task-1",
        queue="emails",
        args={"body": SCRIPT, "padding": "y" * 500},
        status=Status.FAILED,
        attempts=2,
        last_error="ValueError: <b>bold</b>",
        created_at=0.0,
        run_at=0.0,
    )
    html = task._repr_html_()
    for text in ("task-1", "emails", "Failed", "payload", "1970-01-01T00:00:00.000+00:00"):
        assert text in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "y" * 300 not in html  # the payload is cut
    assert "lock_by" not in html  # unset fields are left out


async def test_stats_are_a_dict_shown_as_a_table() -> None:
    backend = MemoryBackend(queue="<q>")
    await backend.push_many([{"n": n} for n in range(3)])
    stats = await backend.stats()
    assert isinstance(stats, dict) and isinstance(stats, QueueStats)
    assert stats == {**dict.fromkeys(Status, 0), Status.PENDING: 3}  # equal to a plain dict
    assert stats.total == 3 and stats.queue == "<q>"
    html = stats._repr_html_()
    assert "<th" in html and "Pending" in html and ">3<" in html and "total" in html
    assert "'<q>'" not in html and "&#x27;&lt;q&gt;&#x27;" in html
    assert pickle.loads(pickle.dumps(stats)) == stats


async def test_a_run_summary_shows_its_counts() -> None:
    backend = MemoryBackend(queue="q")
    await backend.push_many([{"n": n} for n in range(4)])

    async def handler(job: dict[str, int]) -> None:
        return None

    summary = await WorkerBuilder("w").backend(backend).build(handler).run_until_idle()
    html = summary._repr_html_()
    assert "RunSummary" in html and "<td" in html
    assert ">done</th>" in html and ">4</td>" in html
    assert "tasks/s" in html
    assert "elapsed" in RunSummary(1, 0, 0, 0, 2.0)._repr_html_()
