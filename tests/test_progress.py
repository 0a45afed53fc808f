"""Progress: ``await ctx.progress(fraction, note)`` is stored (get shows it) and emitted.

Runs on every backend that declares ``Capability.PROGRESS``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from rxqueue import Capability, InvalidOption, Status, TaskContext, WorkerBuilder, events
from rxqueue.acks import AckBatch
from tests.conftest import BackendKit, require

RUN_LIMIT = 20.0


async def test_progress_is_stored_and_shown_while_the_task_runs(kit: BackendKit) -> None:
    backend = await kit.make()
    require(backend, Capability.PROGRESS, Capability.GET)
    task_id = await backend.push({"pages": 10})
    reported, proceed = asyncio.Event(), asyncio.Event()
    written = asyncio.Event()
    report = backend.report

    async def spying_report(batch: AckBatch) -> Any:
        refused = await report(batch)
        if batch.progress:
            written.set()
        return refused

    backend.report = spying_report  # type: ignore[method-assign]

    async def handle(job: dict[str, int], ctx: TaskContext) -> None:
        await ctx.progress(0.2, "resized 2 of 10")
        await ctx.progress(0.4, "resized 4 of 10")  # the latest report wins
        reported.set()
        await proceed.wait()

    worker = WorkerBuilder("w").backend(backend).build(handle)
    seen: list[events.Event] = []
    worker.events.subscribe(on_next=seen.append)
    running = asyncio.create_task(worker.run_until_idle())
    async with asyncio.timeout(RUN_LIMIT):
        await reported.wait()
        await written.wait()  # within progress_interval, with nothing else to flush
        task = await backend.get(task_id)
        assert task is not None and task.status is Status.RUNNING
        assert (task.progress, task.progress_note) == (0.4, "resized 4 of 10")
        proceed.set()
        await running
    progress = [(e.fraction, e.note) for e in seen if isinstance(e, events.Progress)]
    assert progress == [(0.2, "resized 2 of 10"), (0.4, "resized 4 of 10")]
    done = await backend.get(task_id)
    assert done is not None and done.status is Status.DONE


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan, "half", True])
async def test_a_bad_progress_report_fails_only_the_handler_that_made_it(
    kit: BackendKit, fraction: Any
) -> None:
    backend = await kit.make()
    await backend.push({"n": 1}, max_attempts=1)
    errors: list[str] = []

    async def handle(job: Any, ctx: TaskContext) -> None:
        try:
            await ctx.progress(fraction)
        except InvalidOption as error:
            errors.append(str(error))
            raise

    async with asyncio.timeout(RUN_LIMIT):
        summary = await WorkerBuilder("w").backend(backend).build(handle).run_until_idle()
    assert summary.killed == 1 and "progress must be a number from 0 to 1" in errors[0]
