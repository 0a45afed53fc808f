"""Run several workers together; stop them all on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Self

from rxqueue.worker.events import RunSummary
from rxqueue.worker.worker import Worker, stop_on_signals


class Monitor:
    """``await Monitor().register(w1, w2).run()``.

    A worker that crashes (its run raised) is reported through ``on_crash``
    and in the result; the others keep running until stopped.
    """

    def __init__(self, *, on_crash: Callable[[Worker, BaseException], Any] | None = None) -> None:
        self._workers: list[Worker] = []
        self._on_crash = on_crash

    def register(self, *workers: Worker) -> Self:
        names = {worker.name for worker in self._workers}
        for worker in workers:
            if worker.name in names:
                raise ValueError(f"a worker named {worker.name!r} is registered already")
            names.add(worker.name)
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()

    async def run(self) -> dict[str, RunSummary | BaseException]:
        """Run every worker until all have stopped; name -> summary or the crash."""
        if not self._workers:
            raise ValueError("nothing to run: register workers with Monitor().register(worker)")
        undo_signals = stop_on_signals(asyncio.get_running_loop(), self.stop)
        try:
            results = await asyncio.gather(*(self._supervise(worker) for worker in self._workers))
        finally:
            undo_signals()
        return dict(zip((worker.name for worker in self._workers), results, strict=True))

    async def _supervise(self, worker: Worker) -> RunSummary | BaseException:
        try:
            # One bar per worker would fight over the terminal: none here.
            return await worker.run(handle_signals=False, progress=False)
        except Exception as exc:
            if self._on_crash is not None:
                self._on_crash(worker, exc)
            return exc
