"""What ``await backend.stats()`` returns: task counts by status, shown as a table
in notebooks."""

from __future__ import annotations

from collections.abc import Mapping

from rxqueue._html import table
from rxqueue.task import Status


class QueueStats(dict[Status, int]):
    """How many tasks of ``queue`` are in each status: a plain ``dict`` of
    :class:`~rxqueue.task.Status` to count (every status present), which a notebook
    shows as a table. ``total`` is the sum."""

    __slots__ = ("queue",)

    def __init__(self, counts: Mapping[Status, int], *, queue: str) -> None:
        super().__init__(counts)
        self.queue = queue

    @property
    def total(self) -> int:
        return sum(self.values())

    def __repr__(self) -> str:
        return f"QueueStats({dict(self)!r}, queue={self.queue!r})"

    def _repr_html_(self) -> str:
        rows = [(status.value, count) for status, count in self.items()]
        rows.append(("total", self.total))
        return table(rows, header=("status", "tasks"), caption=f"queue {self.queue!r}")
