"""Peers over SQLite, used the way their docs show: huey and persist-queue.

* huey ``SqliteHuey`` (defaults: WAL, synchronous=FULL): the loop its thread
  worker runs, ``dequeue() -> execute()``. One thread is its fastest setting
  for no-op tasks here (2-8 consumer threads measured slower: they serialise
  on ``BEGIN EXCLUSIVE``).
* persist-queue ``SQLiteAckQueue`` (``auto_commit=True``, forced for ack queues;
  ``multithreading=True``, as a worker fed by other threads needs):
  ``get -> handler -> ack``.

Both are synchronous; each is timed from its first dequeue to its last ack.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from huey import SqliteHuey  # type: ignore[import-untyped]
from persistqueue import SQLiteAckQueue
from persistqueue.exceptions import Empty


def noop_sync(job: Any) -> None:
    """The peers' handler: a synchronous no-op."""


def open_huey(directory: Path) -> tuple[Any, Any]:
    huey = SqliteHuey("bench", filename=str(directory / "huey.db"))
    task = huey.task()(noop_sync)
    return huey, task


def seed_huey(directory: Path, payloads: list[Any]) -> None:
    """Huey's own task messages, inserted in one transaction (enqueue commits per task)."""
    huey, task = open_huey(directory)
    messages = [(huey.name, huey.serialize_task(task.s(p)), 0) for p in payloads]
    with huey.storage.db(commit=True) as cursor:
        cursor.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", messages)
    huey.storage.close()


def run_huey(directory: Path) -> tuple[int, float]:
    huey, _ = open_huey(directory)
    done = 0
    start = time.perf_counter()
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        done += 1
    elapsed = time.perf_counter() - start
    huey.storage.close()
    return done, elapsed


def open_persist_queue(directory: Path) -> SQLiteAckQueue:
    return SQLiteAckQueue(str(directory / "pq"), auto_commit=True, multithreading=True)


def seed_persist_queue(directory: Path, payloads: list[Any]) -> None:
    queue = open_persist_queue(directory)
    for payload in payloads:
        queue.put(payload)
    queue.close()


def run_persist_queue(directory: Path) -> tuple[int, float]:
    queue = open_persist_queue(directory)
    done = 0
    start = time.perf_counter()
    while True:
        try:
            item = queue.get(block=False)
        except Empty:
            break
        noop_sync(item)
        queue.ack(item)
        done += 1
    elapsed = time.perf_counter() - start
    queue.close()
    return done, elapsed
