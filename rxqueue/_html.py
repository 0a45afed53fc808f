"""HTML tables for notebooks: what ``_repr_html_`` methods return.

One helper, :func:`table`, makes every table (``Task``, ``backend.stats()``,
``RunSummary``, workflow status): each cell's text is escaped with
:func:`html.escape`, so a payload holding ``<script>`` shows as text. Long
values are cut to ``limit`` characters by :func:`cell`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rxqueue.task import Task

LIMIT: Final = 200  # characters of a payload, result or error shown in a cell

_STYLE: Final = "text-align: left; font-family: monospace"


def cell(value: Any, limit: int = LIMIT) -> str:
    """``value`` as the text of one cell (not yet escaped): strings as they are,
    anything else as its ``repr``; longer than ``limit`` characters, cut with an ellipsis."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def table(
    rows: Iterable[Sequence[Any]],
    *,
    header: Sequence[str] | None = None,
    caption: str | None = None,
    limit: int = LIMIT,
) -> str:
    """An HTML ``<table>`` of ``rows`` (any number of columns); every cell goes through
    :func:`cell` and is escaped, and so are ``header`` and ``caption``."""
    parts = ["<table>"]
    if caption is not None:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    if header is not None:
        heads = "".join(f'<th style="{_STYLE}">{html.escape(name)}</th>' for name in header)
        parts.append(f"<thead><tr>{heads}</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        first, *rest = (html.escape(cell(value, limit)) for value in row)
        tail = "".join(f'<td style="{_STYLE}">{text}</td>' for text in rest)
        parts.append(f'<tr><th style="{_STYLE}">{first}</th>{tail}</tr>')
    parts.append("</tbody></table>")
    return "".join(parts)


def when(timestamp: float | None) -> str | None:
    """An epoch timestamp as ISO 8601 UTC, to the millisecond (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


_TIMES: Final = ("run_at", "created_at", "lock_at", "done_at", "unique_until")
_ALWAYS: Final = frozenset({"id", "queue", "args", "status", "attempts", "max_attempts"})


def task_table(task: Task[Any]) -> str:
    """A task's fields, two columns; fields that are unset (None, empty metadata) are
    left out, times are shown in UTC, the payload and result are cut and escaped."""
    rows: list[tuple[str, Any]] = []
    for name in task.__dataclass_fields__:
        value = getattr(task, name)
        if name in _TIMES:
            value = when(value)
        if name == "status":
            value = str(value)
        if name == "args":
            name = "payload"
        unset = value is None or (isinstance(value, dict | tuple) and not value)
        if unset and name not in _ALWAYS:
            continue
        rows.append((name, value))
    return table(rows, caption="Task")
