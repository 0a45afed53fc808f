"""Rows of SQL stores <-> Tasks: what the SQLite and PostgreSQL backends share.

Both keep a task as one row of the same columns, by name (:data:`COLUMN_NAMES`);
payloads and results stay encoded, metadata is a JSON object. Metadata that is
not one kills its row when claimed (:data:`read_claimed` raises ValueError),
and shows as empty in ``get``/``list`` (:data:`read_shown`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from rxqueue.task import Status, Task, TaskId, task_reader

COLUMN_NAMES: Final = (
    "id", "queue", "args", "status", "attempts", "max_attempts", "priority", "run_at",
    "created_at", "lock_by", "lock_at", "done_at", "last_error", "result", "metadata",
    "unique_key", "unique_until", "progress", "progress_note",
)  # fmt: skip


def payload_bytes(value: Any) -> bytes:
    """The stored payload as bytes, whatever the column holds: a NULL or text written
    by another tool still reaches the worker, whose decoding then kills that task."""
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _metadata(text: Any, *, lenient: bool) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        value = orjson.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"metadata is {type(value).__name__}, not a JSON object")
    except ValueError:
        if lenient:
            return {}
        raise
    return value


def _strict_metadata(text: Any) -> dict[str, Any]:
    return _metadata(text, lenient=False)


def _lenient_metadata(text: Any) -> dict[str, Any]:
    return _metadata(text, lenient=True)


read_claimed = task_reader(
    COLUMN_NAMES, {"args": payload_bytes, "status": Status, "metadata": _strict_metadata}
)
read_shown = task_reader(
    COLUMN_NAMES, {"args": payload_bytes, "status": Status, "metadata": _lenient_metadata}
)


def claim_order(task: Task[Any]) -> tuple[int, float, str]:
    """Higher priority first, then earlier ``run_at``, then id (creation order)."""
    return (-task.priority, task.run_at, task.id)


def metadata_json(task: Task[Any]) -> str | None:
    """The task's metadata as JSON text (checked at push), or None when empty."""
    if not task.metadata:
        return None
    return orjson.dumps(dict(task.metadata)).decode()


def answer_ids(tasks: Sequence[Task[Any]], holders: Mapping[str, TaskId]) -> list[TaskId]:
    """Per task, its own id, or for a task with a unique key the id of the key's holder
    (itself if it was stored, else the task that already held the key)."""
    return [task.id if task.unique_key is None else holders[task.unique_key] for task in tasks]
