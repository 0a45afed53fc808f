"""A source process for tests/test_sources.py.

    python tests/sources_proc.py DB PERIOD

Opens the SQLite file, prints ``ready``, waits for a line ``BEGIN END`` (epoch
seconds) on stdin, so that several processes share one window, then runs
``sources.every(PERIOD, name="beat", start=BEGIN, catch_up="all")`` into the
backend's sink until END and prints one JSON line: how many ticks it emitted,
how many its sink stored, found already stored, and the errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from rxqueue import sources
from rxqueue.backends.sqlite import SqliteBackend


async def main(db: str, period: float) -> None:
    async with SqliteBackend(db) as backend:
        print("ready", flush=True)
        begin, end = map(float, (await asyncio.to_thread(sys.stdin.readline)).split())
        sink = backend.sink()
        emitted: list[str] = []
        source = sources.every(period, payload="beat", name="beat", start=begin, catch_up="all")

        def on_next(task: Any) -> None:
            emitted.append(task.id)
            sink.on_next(task)

        subscription = source.subscribe(on_next=on_next, on_error=sink.on_error)
        await asyncio.sleep(max(0.0, end - time.time()))  # this process's run: until END
        subscription.dispose()
        await sink.flush()
        report = {
            "emitted": emitted,
            "stored": sink.stored,
            "existing": sink.existing,
            "errors": [repr(error) for error in sink.errors],
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
